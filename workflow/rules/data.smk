# data stage: json_feat (synthetic or real) -> manifest -> subset -> vocab -> store.
#
# Parse-time planning: the manifest (splits file + os.stat, or the synthetic generator's
# seed), each split's subset size and the bytes each data job writes. Cheap (no torch, no
# feature data), and known before any job runs, so `snakemake -n` shows every job with a
# numeric disk_mb and no checkpoint is needed.
import math
import shutil

from alfred_edge.data import manifest as data_manifest
from alfred_edge.data import plan as data_plan
from alfred_edge.data.budget import size_text

SYNTHETIC_ROOT = "data/raw/synthetic/json_feat"
SYNTHETIC_SPLITS_FILE = "data/raw/synthetic/splits.json"
DATA = config["data"]
IS_SYNTHETIC = DATA["source"] == "synthetic"
# An ALFRED checkpoint the lstm starts from: its vocabulary becomes the store's.
VOCAB_CHECKPOINT = config["models"].get("lstm", {}).get("init_from")
if not math.isfinite(config["storage"]["budget_gb"]):
    raise WorkflowError(
        f"config: storage.budget_gb is {config['storage']['budget_gb']}: give a finite number of GB (1e9 bytes)"
    )
BUDGET_BYTES = int(config["storage"]["budget_gb"] * 1e9)
try:
    RESERVED_BYTES = data_plan.reserved_bytes(
        config["models"], VARIANTS, len(bench_cells()), DATA["source"]
    )
    DATA_PLAN = data_plan.make_plan(DATA, BUDGET_BYTES, RESERVED_BYTES)
except (ValueError, FileNotFoundError) as err:
    raise WorkflowError(f"config: {err}") from None


def disk_mb(nbytes):
    """resources: disk_mb for a job writing `nbytes` (for any stage's rules)."""
    return data_plan.disk_mb(nbytes)


def get_source_root():
    return SYNTHETIC_ROOT if IS_SYNTHETIC else str(Path(DATA["source"]).resolve())


def get_splits_file():
    return (
        SYNTHETIC_SPLITS_FILE
        if IS_SYNTHETIC
        else str(Path(DATA["splits_file"]).resolve())
    )


def get_source_inputs(wildcards=None):
    """The synthetic tree when it is the source (a job of this workflow writes it)."""
    return [SYNTHETIC_SPLITS_FILE] if IS_SYNTHETIC else []


def get_synthetic_settings():
    syn = DATA["synthetic"]
    return {
        "annotations_per_trajectory": syn["annotations_per_trajectory"],
        "nav_steps": list(syn["nav_steps"]),
        "seed": syn["seed"],
        "trajectories": {s: syn["trajectories"][s] for s in sorted(DATA_SPLITS)},
    }


def get_manifest_rows(split):
    return [r for r in DATA_PLAN["rows"] if r["split"] == split]


def _manifest_stamps():
    """Per split, what its manifest reads (manifest.split_stamp): a trajectory added, removed
    or repaired in a real tree reruns its split's manifest and what follows. The synthetic
    tree is an output of this workflow, tracked by Snakemake itself."""
    if IS_SYNTHETIC:
        return {split: None for split in DATA_SPLITS}
    return {
        split: data_manifest.split_stamp(get_source_root(), get_manifest_rows(split))
        for split in DATA_SPLITS
    }


MANIFEST_STAMPS = _manifest_stamps()


def get_manifest_stamp(wildcards):
    return MANIFEST_STAMPS[wildcards.split]


def get_subset_count(wildcards):
    return DATA_PLAN["counts"][wildcards.split]


def get_store_bytes(wildcards):
    """Planned bytes of data/store/{split} in the configured dtype."""
    return DATA_PLAN["splits"][wildcards.split]["store_bytes"][DATA["store_dtype"]]


def get_storage_plan():
    """Everything reports/storage_plan.md shows, as computed at parse time."""
    return {
        "budget_bytes": BUDGET_BYTES,
        "dtype": DATA["store_dtype"],
        "reserved": dict(sorted(RESERVED_BYTES.items())),
        "source": DATA["source"],
        "splits": DATA_PLAN["splits"],
        "subset_mode": DATA["subset"]["mode"],
    }


def _warn_if_it_does_not_fit():
    """A parse-time warning when the plan passes the budget, or when what it has yet to write
    passes the free space of the file system holding data/."""
    plan = get_storage_plan()
    total = sum(f["store_bytes"][plan["dtype"]] for f in plan["splits"].values())
    total += sum(RESERVED_BYTES.values())
    written = sum(
        f.stat().st_size
        for folder in ("data/store", "models")
        for f in Path(folder).rglob("*")
        if f.is_file()
    )
    free = shutil.disk_usage("data" if Path("data").is_dir() else ".").free
    if total > BUDGET_BYTES:
        problem = f"over storage.budget_gb = {size_text(BUDGET_BYTES)}"
    elif total - written > free:
        problem = f"{size_text(total - written)} of it not yet written, with {size_text(free)} free"
    else:
        return
    print(
        f"alfred-edge: the plan needs {size_text(total)}, {problem}; preprocess will refuse to "
        "start. See `snakemake --cores 1 reports/storage_plan.md`.",
        file=sys.stderr,
    )


_warn_if_it_does_not_fit()


wildcard_constraints:
    split="|".join(DATA_SPLITS),


# Only a synthetic source is written by this workflow (a real tree is only read).
if IS_SYNTHETIC:

    rule synthesize:
        output:
            root=directory(SYNTHETIC_ROOT),
            splits=SYNTHETIC_SPLITS_FILE,
        log:
            "logs/synthesize/synthesize.log",
        resources:
            disk_mb=disk_mb(
                sum(r["feat_bytes"] + r["json_bytes"] for r in DATA_PLAN["rows"])
            ),
        params:
            synthetic=get_synthetic_settings(),
            code=get_code_digest("scripts/synthesize.py"),
        script:
            "../scripts/synthesize.py"


# One manifest per split: a trajectory added, removed or repaired reruns its split's jobs only
# (params: stamp, see common.smk).
rule manifest:
    input:
        get_source_inputs,
    output:
        "data/manifest/{split}.parquet",
    log:
        "logs/manifest/{split}.log",
    resources:
        disk_mb=lambda wildcards: disk_mb(300 * len(get_manifest_rows(wildcards.split))),
    params:
        root=get_source_root(),
        splits_file=get_splits_file(),
        stamp=get_manifest_stamp,
        code=get_code_digest("scripts/manifest.py"),
    script:
        "../scripts/manifest.py"


rule subset:
    input:
        "data/manifest/{split}.parquet",
    output:
        "data/subset/{split}.json",
    log:
        "logs/subset/{split}.log",
    resources:
        disk_mb=lambda wildcards: disk_mb(300 * get_subset_count(wildcards)),
    params:
        n_trajectories=get_subset_count,
        seed=DATA["subset"].get("seed", 0),
        code=get_code_digest("scripts/subset.py"),
    script:
        "../scripts/subset.py"


# The store's vocabulary: the checkpoint's own when the lstm starts from an ALFRED checkpoint
# (so the store gives it ALFRED's ids), else built from the training subset.
if VOCAB_CHECKPOINT:

    rule vocab_from_checkpoint:
        input:
            VOCAB_CHECKPOINT,
        output:
            "data/store/vocab.json",
        log:
            "logs/vocab/vocab.log",
        resources:
            disk_mb=1,
        params:
            code=get_code_digest("scripts/vocab_from_checkpoint.py"),
        script:
            "../scripts/vocab_from_checkpoint.py"

else:

    rule vocab:
        input:
            get_source_inputs,
            subset="data/subset/train.json",
        output:
            "data/store/vocab.json",
        log:
            "logs/vocab/vocab.log",
        resources:
            disk_mb=1,
        params:
            root=get_source_root(),
            on_bad_input=DATA["on_bad_input"],
            code=get_code_digest("scripts/vocab.py"),
        script:
            "../scripts/vocab.py"


# budget_bytes and planned_bytes take `input`, so Snakemake treats them as derived (no
# rerun trigger): a store reruns when its subset or dtype changes, not when the budget
# changes and its subset stays the same.
rule preprocess:
    input:
        get_source_inputs,
        subset="data/subset/{split}.json",
        vocab="data/store/vocab.json",
    output:
        directory("data/store/{split}"),
    log:
        "logs/preprocess/{split}.log",
    resources:
        disk_mb=lambda wildcards: disk_mb(get_store_bytes(wildcards)),
    params:
        root=get_source_root(),
        dtype=DATA["store_dtype"],
        on_bad_input=DATA["on_bad_input"],
        planned_bytes=lambda wildcards, input: get_store_bytes(wildcards),
        budget_bytes=lambda wildcards, input: BUDGET_BYTES
        - sum(RESERVED_BYTES.values()),
        code=get_code_digest("scripts/preprocess.py"),
    script:
        "../scripts/preprocess.py"


rule storage_plan:
    output:
        "reports/storage_plan.md",
    log:
        "logs/storage_plan/storage_plan.log",
    resources:
        disk_mb=1,
    params:
        plan=get_storage_plan(),
        code=get_code_digest("scripts/storage_plan.py"),
    script:
        "../scripts/storage_plan.py"
