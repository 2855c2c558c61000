# Helpers shared by the rule files: config validation, parse-time planning, and the
# get_* functions that hand each job exactly the settings it uses (through params,
# keyed by its wildcards, so that a change reruns only the jobs it touches).
import hashlib
import math
import shutil
import sys
from pathlib import Path

from snakemake.utils import validate

PACKAGE_ROOT = Path(workflow.basedir) / "workflow"
sys.path.insert(0, str(PACKAGE_ROOT))

validate(config, schema="../schemas/config.schema.yaml")


def get_code_digest(*parts):
    """Digest of the code a rule runs: its script and the package modules it uses, each
    part a file or a folder relative to workflow/ (e.g. "scripts/train.py",
    "alfred_edge/models"). Passed as a param, it reruns the rule when that code changes,
    and only then: a touch or a fresh checkout leaves it equal. (The profile leaves
    Snakemake's own mtime-based script trigger off for that reason.)"""
    digest = hashlib.sha256()
    root = PACKAGE_ROOT
    for part in parts:
        path = root / part
        files = sorted(path.rglob("*.py")) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(root)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


# --- data ---
# Parse-time planning: the manifest (splits file + os.stat, or the synthetic generator's
# seed), each split's subset size and the bytes each data job writes. Cheap (no torch, no
# feature data), and known before any job runs, so `snakemake -n` shows every job with a
# numeric disk_mb and no checkpoint is needed.
from snakemake.exceptions import WorkflowError

from alfred_edge.data import manifest as data_manifest
from alfred_edge.data import plan as data_plan
from alfred_edge.data.budget import size_text

SYNTHETIC_ROOT = "data/raw/synthetic/json_feat"
SYNTHETIC_SPLITS_FILE = "data/raw/synthetic/splits.json"
DATA = config["data"]
DATA_SPLITS = DATA["splits"]
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
        config["models"],
        config["quantize"]["variants"],
        len(config["models"])
        * len(config["quantize"]["variants"])
        * len(config["bench"].get("batches", [1]))
        * len(config["bench"].get("devices", ["cpu"])),
        DATA["source"],
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


def _manifest_stamps():
    """Per split, what its manifest reads (manifest.split_stamp): a trajectory added, removed
    or repaired in a real tree reruns its split's manifest and what follows. The synthetic
    tree is an output of this workflow, tracked by Snakemake itself."""
    if IS_SYNTHETIC:
        return {split: None for split in DATA_SPLITS}
    return {
        split: data_manifest.split_stamp(
            get_source_root(), [r for r in DATA_PLAN["rows"] if r["split"] == split]
        )
        for split in DATA_SPLITS
    }


MANIFEST_STAMPS = _manifest_stamps()


def get_manifest_stamp(wildcards):
    return MANIFEST_STAMPS[wildcards.split]


def get_manifest_rows(split):
    return [r for r in DATA_PLAN["rows"] if r["split"] == split]


def get_subset_count(wildcards):
    return DATA_PLAN["counts"][wildcards.split]


def get_store_bytes(wildcards):
    """Planned bytes of data/store/{split} in the configured dtype."""
    return DATA_PLAN["splits"][wildcards.split]["store_bytes"][DATA["store_dtype"]]


def get_store_frames(split):
    """Frames the split's store will hold (for other stages' size estimates)."""
    return DATA_PLAN["splits"][split]["frames"]


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


# --- report ---
# The aggregation reads this host's benchmark files (outputs of the bench rules:
# get_bench_outputs, "# --- bench ---") and every other host's files present under
# reports/bench/<host>/ when the workflow is parsed, so a file copied in changes the
# aggregate's input set and reruns only aggregate and summary.
from alfred_edge.report import discover as report_discover

REPORT_BENCH_DIR = "reports/bench"


def get_report_bench_files(table):
    """Files of one benchmark table ("cells" or "capacity") for the aggregation."""
    others = [
        str(path)
        for path in report_discover.bench_files(REPORT_BENCH_DIR, table)
        if report_discover.host_of(path, REPORT_BENCH_DIR) != BENCH_HOST
    ]
    return get_bench_outputs(table) + others


def get_report_eval_files():
    return expand(
        "models/{model}/{variant}.eval.parquet",
        model=sorted(config["models"]),
        variant=config["quantize"]["variants"],
    )


def get_report_training_files():
    return expand("models/{model}/train_metrics.parquet", model=TRAINED_MODELS)


def get_report_ram_budgets():
    """RAM budgets for hosts whose files carry no capacity rows: {name: GB or "auto"}."""
    return dict(sorted(config["bench"].get("ram_budgets_gb", {}).items()))


# --- quantize ---
# One quantize job per (model, variant) (fp32: evaluate_fp32). Its settings are keyed by
# those wildcards, so adding a variant runs only its jobs; disk_mb comes from parse-time
# parameter counts (pure Python) and the data plan's size fraction per variant.

QUANTIZE = config["quantize"]
QUANTIZE_BUILT_VARIANTS = [v for v in QUANTIZE["variants"] if v != "fp32"]
QUANTIZE_EVAL_SPLITS = [s for s in ("valid_seen", "valid_unseen") if s in DATA_SPLITS]
QUANTIZE_STORE_DIR = "data/store"
QUANTIZE_CODE = get_code_digest(
    "scripts/quantize.py",
    "alfred_edge/quantize.py",
    "alfred_edge/evaluate.py",
    "alfred_edge/models",
    "alfred_edge/data/loader.py",
    "alfred_edge/data/store.py",
    "alfred_edge/atomic.py",
)


def get_quantize_inputs(wildcards):
    return {
        "model": f"models/{wildcards.model}/fp32.pt",
        "vocab": f"{QUANTIZE_STORE_DIR}/vocab.json",
        "stores": [f"{QUANTIZE_STORE_DIR}/{split}" for split in QUANTIZE_EVAL_SPLITS],
    }


def get_quantize_settings(wildcards):
    return {
        "eval_batch": QUANTIZE["eval_batch"],
        "splits": QUANTIZE_EVAL_SPLITS,
        "variant": wildcards.get("variant", "fp32"),
    }


def get_quantize_disk_mb(wildcards):
    fp32 = get_fp32_file_bytes(wildcards.model)
    return disk_mb(fp32 * data_plan.VARIANT_FRACTION[wildcards.variant])


# --- bench ---
# The benchmark cells from config (cheap: no torch, no pyarrow, no file reads). Every
# (model, variant, device, batch) of the sweep, plus fp32 at the smallest batch with the
# frames read into RAM (compare_features_in_ram). The host is fixed per run, so this host's
# outputs never claim another host's files under reports/bench/.
from alfred_edge.bench.environment import bench_devices as _bench_devices
from alfred_edge.bench.environment import host_name as _bench_host_name

BENCH = config["bench"]
BENCH_HOST = _bench_host_name(BENCH["host"])
BENCH_DEVICES = _bench_devices(BENCH["devices"])
BENCH_DIR = f"reports/bench/{BENCH_HOST}"
BENCH_MODELS = sorted(config["models"])
BENCH_VARIANTS = list(config["quantize"]["variants"])
BENCH_BATCHES = sorted(BENCH["batches"])
BENCH_CELL = BENCH_DIR + "/cells/{model}/{variant}/{device}/{features}/b{batch}.parquet"
BENCH_ROOFLINE = BENCH_DIR + "/roofline/{device}.parquet"
BENCH_FLOPS = BENCH_DIR + "/flops/{model}.json"
BENCH_CAPACITY = BENCH_DIR + "/capacity/{model}/{variant}/{device}.parquet"
BENCH_CODE = (
    "alfred_edge/bench",
    "schemas/results.schema.yaml",
    "alfred_edge/atomic.py",
)
BENCH_WORKLOAD_CODE = (
    "alfred_edge/quantize.py",
    "alfred_edge/models",
    "alfred_edge/data/loader.py",
    "alfred_edge/data/store.py",
)
if BENCH["split"] not in DATA_SPLITS:
    raise WorkflowError(
        f"config: bench.split {BENCH['split']!r} is not in data.splits {DATA_SPLITS}"
    )
if BENCH["python"] is not None and shutil.which(BENCH["python"]) is None:
    raise WorkflowError(
        f"config: bench.python {BENCH['python']!r} is not an executable (a path, or a name on PATH)"
    )
if (
    BENCH["capacity"]["measure"] is not None
    and BENCH["capacity"]["measure"] not in BENCH["ram_budgets_gb"]
):
    raise WorkflowError(
        f"config: bench.capacity.measure {BENCH['capacity']['measure']!r} is not a name in "
        f"bench.ram_budgets_gb ({', '.join(BENCH['ram_budgets_gb'])})"
    )


def _canonical(value):
    """Dicts with sorted keys, all the way down: params compare equal when settings do."""
    if isinstance(value, dict):
        return {key: _canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def get_bench_cells():
    """Every cell as a dict of its wildcards."""
    cells = [
        dict(model=m, variant=v, device=d, features="mmap", batch=b)
        for m in BENCH_MODELS
        for v in BENCH_VARIANTS
        for d in BENCH_DEVICES
        for b in BENCH_BATCHES
    ]
    if BENCH["compare_features_in_ram"] and "fp32" in BENCH_VARIANTS:
        cells += [
            dict(
                model=m,
                variant="fp32",
                device=d,
                features="ram",
                batch=BENCH_BATCHES[0],
            )
            for m in BENCH_MODELS
            for d in BENCH_DEVICES
        ]
    return cells


def get_bench_outputs(table):
    """This host's files of one benchmark table ("cells", "roofline" or "capacity")."""
    if table == "cells":
        return [BENCH_CELL.format(**cell) for cell in get_bench_cells()]
    if table == "roofline":
        return [BENCH_ROOFLINE.format(device=d) for d in BENCH_DEVICES]
    if table == "capacity":
        return [
            BENCH_CAPACITY.format(model=m, variant=v, device=d)
            for m in BENCH_MODELS
            for v in BENCH_VARIANTS
            for d in BENCH_DEVICES
        ]
    raise ValueError(f"unknown benchmark table {table!r}")


def _smaller_batch_cell(wildcards):
    """The cell at the next smaller batch of the sweep (its row decides a skip after OOM)."""
    batch = int(wildcards.batch)
    smaller = [b for b in BENCH_BATCHES if b < batch]
    if wildcards.features != "mmap" or not smaller:
        return []
    return [BENCH_CELL.format(**dict(wildcards, batch=smaller[-1]))]


def get_bench_cell_inputs(wildcards):
    return {
        "model": f"models/{wildcards.model}/{wildcards.variant}.pt",
        "store": f"data/store/{BENCH['split']}",
        "roofline": BENCH_ROOFLINE.format(device=wildcards.device),
        "flops": BENCH_FLOPS.format(model=wildcards.model),
        "smaller_batch": _smaller_batch_cell(wildcards),
    }


def _bench_job_settings(device):
    return {
        "host": BENCH_HOST,
        "device": device,
        "python": BENCH["python"],
        "threads": BENCH["threads"],
        "timeout_s": BENCH["timeout_s"],
    }


def get_bench_flops_spec(wildcards):
    """The FLOP count runs on the CPU (quantized kernels are invisible to the counter)."""
    return _canonical(_bench_job_settings("cpu"))


def get_bench_cell_spec(wildcards):
    """Everything a cell's measurement depends on (paths are added by the script)."""
    ram_limit = BENCH["ram_limit_gb"]
    return _canonical(
        {
            **_bench_job_settings(wildcards.device),
            "model": wildcards.model,
            "variant": wildcards.variant,
            "features": wildcards.features,
            "batch_size": int(wildcards.batch),
            "max_steps": BENCH["max_steps"],
            "loop": {
                key: BENCH[key]
                for key in (
                    "min_iterations",
                    "min_duration_s",
                    "max_duration_s",
                    "warmup_iterations",
                )
            },
            "power": BENCH["power"],
            "ram_limit_mb": None if ram_limit is None else ram_limit * 1000.0,
        }
    )


def get_bench_roofline_spec(wildcards):
    return _canonical(
        {**_bench_job_settings(wildcards.device), "roofline": BENCH["roofline"]}
    )


def get_bench_capacity_inputs(wildcards):
    inputs = {
        "cells": [
            BENCH_CELL.format(**dict(wildcards, features="mmap", batch=b))
            for b in BENCH_BATCHES
        ],
    }
    if _capacity_measured(wildcards):
        inputs.update(
            model=f"models/{wildcards.model}/{wildcards.variant}.pt",
            store=f"data/store/{BENCH['split']}",
        )
    return inputs


def _capacity_measured(wildcards):
    cap = BENCH["capacity"]
    return cap["measure"] is not None and wildcards.variant in cap["variants"]


def get_bench_capacity_spec(wildcards):
    cap = BENCH["capacity"]
    capacity = {
        key: cap[key] for key in ("max_batch", "factor", "steps", "max_seconds")
    }
    return _canonical(
        {
            **_bench_job_settings(wildcards.device),
            "model": wildcards.model,
            "variant": wildcards.variant,
            "features": "mmap",
            "capacity": {
                **capacity,
                "budgets_gb": BENCH["ram_budgets_gb"],
                "measure": cap["measure"] if _capacity_measured(wildcards) else None,
            },
        }
    )


# --- models ---
# Each train job gets its model's whole config section (architecture, init_from, train)
# through params, in canonical form (keys sorted), so editing the transformer's settings
# reruns only the transformer's jobs. Sizes come from a pure-Python parameter count.
from alfred_edge.models.sizes import fp32_file_bytes

MODEL_NAMES = sorted(config["models"])
# epochs: 0 measures the init_from checkpoint as it is (rule import_checkpoint, no training).
IMPORTED_MODELS = [
    m for m in MODEL_NAMES if config["models"][m]["train"]["epochs"] == 0
]
TRAINED_MODELS = [m for m in MODEL_NAMES if m not in IMPORTED_MODELS]
for _model in IMPORTED_MODELS:
    if not config["models"][_model].get("init_from"):
        raise WorkflowError(
            f"config: models.{_model}.train.epochs is 0 (no training), but "
            f"models.{_model}.init_from names no checkpoint to measure"
        )


def get_model_settings(wildcards):
    """The model's config section, keys sorted (architecture + init_from + train)."""
    return _canonical(config["models"][wildcards.model])


def get_model_init_inputs(wildcards):
    """An ALFRED checkpoint the lstm starts from (models.lstm.init_from), as an input."""
    init_from = config["models"][wildcards.model].get("init_from")
    return [init_from] if init_from else []


def get_fp32_file_bytes(model):
    """fp32.pt from the parameter count (vocabulary sizes estimated before the vocab exists)."""
    vocab = data_plan.ESTIMATED_VOCAB["synthetic" if IS_SYNTHETIC else "alfred"]
    return fp32_file_bytes(model, config["models"][model], vocab)


def get_train_disk_mb(wildcards):
    return disk_mb(get_fp32_file_bytes(wildcards.model) + 1e6)
