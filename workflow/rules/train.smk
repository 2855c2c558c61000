# train stage: one job per model -> models/{model}/fp32.pt + models/{model}/train_metrics.parquet,
# or, for a model with epochs: 0, the init_from checkpoint as it is -> models/{model}/fp32.pt.
# Settings per model from common.smk ("# --- models ---").
import os


rule train:
    input:
        get_model_init_inputs,
        vocab="data/store/vocab.json",
        train="data/store/train",
        valid_seen="data/store/valid_seen",
        valid_unseen="data/store/valid_unseen",
    output:
        model="models/{model}/fp32.pt",
        metrics="models/{model}/train_metrics.parquet",
    log:
        "logs/train/{model}.log",
    wildcard_constraints:
        model="|".join(TRAINED_MODELS) or "(?!)",
    # Every core Snakemake gives it: it lowers a job's threads to --cores. (workflow.cores
    # would make --cores compulsory on every command, --unlock and --report included.)
    threads: os.cpu_count()
    resources:
        disk_mb=get_train_disk_mb,
        exclusive=1,  # training saturates the CPU: never beside a benchmark
    params:
        settings=get_model_settings,
        code=get_code_digest(
            "scripts/train.py",
            "alfred_edge/train.py",
            "alfred_edge/evaluate.py",
            "alfred_edge/models",
            "alfred_edge/data/loader.py",
            "alfred_edge/data/store.py",
            "alfred_edge/data/vocab.py",
            "alfred_edge/atomic.py",
        ),
    script:
        "../scripts/train.py"


rule import_checkpoint:
    input:
        checkpoint=get_model_init_inputs,
        vocab="data/store/vocab.json",
    output:
        model="models/{model}/fp32.pt",
    log:
        "logs/import_checkpoint/{model}.log",
    wildcard_constraints:
        model="|".join(IMPORTED_MODELS) or "(?!)",
    resources:
        disk_mb=get_train_disk_mb,
    params:
        settings=get_model_settings,
        code=get_code_digest(
            "scripts/import_checkpoint.py",
            "alfred_edge/train.py",
            "alfred_edge/models",
            "alfred_edge/data/vocab.py",
            "alfred_edge/atomic.py",
        ),
    script:
        "../scripts/import_checkpoint.py"
