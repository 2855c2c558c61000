# quantize stage: one job per (model, variant) writes models/{model}/{variant}.pt and its
# evaluation models/{model}/{variant}.eval.parquet; fp32 is the trained file itself
# (written by train), so its job only evaluates it. Settings are keyed by (model, variant),
# so adding a variant runs only its jobs; disk_mb comes from parse-time parameter counts
# (pure Python) and the data plan's size fraction per variant.
QUANTIZE = config["quantize"]
QUANTIZE_STORE_DIR = "data/store"


def get_quantize_inputs(wildcards):
    return {
        "model": f"models/{wildcards.model}/fp32.pt",
        "vocab": f"{QUANTIZE_STORE_DIR}/vocab.json",
        "stores": [f"{QUANTIZE_STORE_DIR}/{split}" for split in VALID_SPLITS],
    }


def get_quantize_settings(wildcards):
    return {
        "eval_batch": QUANTIZE["eval_batch"],
        "splits": VALID_SPLITS,
        "variant": wildcards.get("variant", "fp32"),
    }


def get_quantize_disk_mb(wildcards):
    fp32 = get_fp32_file_bytes(wildcards.model)
    return disk_mb(fp32 * variants.get(wildcards.variant).size_fraction)


rule quantize:
    input:
        unpack(get_quantize_inputs),
    output:
        variant="models/{model}/{variant}.pt",
        table="models/{model}/{variant}.eval.parquet",
    log:
        "logs/quantize/{model}.{variant}.log",
    wildcard_constraints:
        variant="|".join(v for v in VARIANTS if v != "fp32") or "(?!)",
    threads: 2
    resources:
        disk_mb=get_quantize_disk_mb,
        exclusive=1,  # evaluation saturates the CPU: never beside a benchmark
    params:
        settings=get_quantize_settings,
        store_dir=QUANTIZE_STORE_DIR,
        code=get_code_digest("scripts/quantize.py"),
    script:
        "../scripts/quantize.py"


rule evaluate_fp32:
    input:
        unpack(get_quantize_inputs),
    output:
        table="models/{model}/fp32.eval.parquet",
    log:
        "logs/quantize/{model}.fp32.log",
    threads: 2
    resources:
        disk_mb=1,
        exclusive=1,
    params:
        settings=get_quantize_settings,
        store_dir=QUANTIZE_STORE_DIR,
        code=get_code_digest("scripts/quantize.py"),
    script:
        "../scripts/quantize.py"
