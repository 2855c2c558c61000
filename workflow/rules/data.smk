# data stage: json_feat (synthetic or real) -> manifest -> subset -> vocab -> store.
# Sizes (disk_mb) and subset counts come from the parse-time plan in common.smk ("# --- data ---").


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
            code=get_code_digest(
                "scripts/synthesize.py",
                "alfred_edge/data/synthetic.py",
                "alfred_edge/atomic.py",
            ),
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
        code=get_code_digest(
            "scripts/manifest.py",
            "alfred_edge/data/manifest.py",
            "alfred_edge/data/synthetic.py",
            "alfred_edge/atomic.py",
        ),
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
        code=get_code_digest("scripts/subset.py", "alfred_edge/data/subset.py"),
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
            code=get_code_digest(
                "scripts/vocab_from_checkpoint.py",
                "alfred_edge/models/alfred_checkpoint.py",
                "alfred_edge/data/vocab.py",
                "alfred_edge/atomic.py",
            ),
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
            code=get_code_digest(
                "scripts/vocab.py",
                "alfred_edge/data/vocab.py",
                "alfred_edge/data/tokenize.py",
                "alfred_edge/data/preprocess.py",
                "alfred_edge/atomic.py",
            ),
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
        code=get_code_digest(
            "scripts/preprocess.py",
            "alfred_edge/data/preprocess.py",
            "alfred_edge/data/store.py",
            "alfred_edge/data/tokenize.py",
            "alfred_edge/data/vocab.py",
            "alfred_edge/atomic.py",
        ),
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
        code=get_code_digest("scripts/storage_plan.py", "alfred_edge/data/plan.py"),
    script:
        "../scripts/storage_plan.py"
