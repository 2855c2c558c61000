# train stage: one job per model -> models/{model}/fp32.pt + train_metrics.parquet + train_steps.parquet,
# or, for a model with epochs: 0, the init_from checkpoint as it is -> models/{model}/fp32.pt.
#
# Each job gets its model's whole config section (architecture, init_from, train) through
# params, in canonical form (keys sorted), so editing the transformer's settings reruns only
# the transformer's jobs. Sizes come from a pure-Python parameter count.
import os

from alfred_edge.models.sizes import fp32_file_bytes

# epochs: 0 measures the init_from checkpoint as it is (rule import_checkpoint, no training);
# a cost-only model gets random weights (rule untrained_model).
IMPORTED_MODELS = [
    m
    for m in MODEL_NAMES
    if m not in COST_ONLY_MODELS and config["models"][m]["train"]["epochs"] == 0
]
TRAINED_MODELS = [
    m for m in MODEL_NAMES if m not in IMPORTED_MODELS and m not in COST_ONLY_MODELS
]
for _model in IMPORTED_MODELS:
    if not config["models"][_model].get("init_from"):
        raise WorkflowError(
            f"config: models.{_model}.train.epochs is 0 (no training), but "
            f"models.{_model}.init_from names no checkpoint to measure"
        )


def get_model_settings(wildcards):
    """The model's config section, keys sorted (architecture + init_from + train; not its
    variants, which do not change the fp32 model)."""
    entry = config["models"][wildcards.model]
    return canonical({key: value for key, value in entry.items() if key != "variants"})


def get_model_architecture(wildcards):
    return MODEL_ARCHITECTURES[wildcards.model]


def get_model_init_inputs(wildcards):
    """An ALFRED checkpoint the lstm starts from (models.lstm.init_from), as an input."""
    init_from = config["models"][wildcards.model].get("init_from")
    return [init_from] if init_from else []


def get_fp32_file_bytes(model):
    """fp32.pt from the parameter count (vocabulary sizes estimated before the vocab exists)."""
    vocab = data_plan.ESTIMATED_VOCAB["synthetic" if IS_SYNTHETIC else "alfred"]
    return fp32_file_bytes(MODEL_ARCHITECTURES[model], config["models"][model], vocab)


def get_train_disk_mb(wildcards):
    return disk_mb(get_fp32_file_bytes(wildcards.model) + 1e6)


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
        steps="models/{model}/train_steps.parquet",
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
        architecture=get_model_architecture,
        settings=get_model_settings,
        code=get_code_digest("scripts/train.py"),
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
        code=get_code_digest("scripts/import_checkpoint.py"),
    script:
        "../scripts/import_checkpoint.py"


rule untrained_model:
    input:
        vocab="data/store/vocab.json",
    output:
        model="models/{model}/fp32.pt",
    log:
        "logs/untrained_model/{model}.log",
    wildcard_constraints:
        model="|".join(COST_ONLY_MODELS) or "(?!)",
    resources:
        disk_mb=get_train_disk_mb,
    params:
        architecture=get_model_architecture,
        settings=get_model_settings,
        code=get_code_digest("scripts/untrained_model.py"),
    script:
        "../scripts/untrained_model.py"
