# quantize stage: one job per (model, variant) writes models/{model}/{variant}.pt and its
# evaluation models/{model}/{variant}.eval.parquet; fp32 is the trained file itself
# (written by train), so its job only evaluates it. Settings come per (model, variant)
# from common.smk ("# --- quantize ---"), so adding a variant runs only its jobs.


rule quantize:
    input:
        unpack(get_quantize_inputs),
    output:
        variant="models/{model}/{variant}.pt",
        table="models/{model}/{variant}.eval.parquet",
    log:
        "logs/quantize/{model}.{variant}.log",
    wildcard_constraints:
        variant="|".join(QUANTIZE_BUILT_VARIANTS) or "(?!)",
    threads: 2
    resources:
        disk_mb=get_quantize_disk_mb,
        exclusive=1,  # evaluation saturates the CPU: never beside a benchmark
    params:
        settings=get_quantize_settings,
        store_dir=QUANTIZE_STORE_DIR,
        code=QUANTIZE_CODE,
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
        code=QUANTIZE_CODE,
    script:
        "../scripts/quantize.py"
