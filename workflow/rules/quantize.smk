# quantize stage: one job per (model, variant, backend). Eager: models/{model}/{variant}.pt and
# its evaluation models/{model}/{variant}.eval.parquet; fp32 is the trained file itself
# (written by train), so its job only evaluates it. onnxruntime: the folder
# models/{model}/{variant}.onnx/ (encode, step and mask graphs) and
# models/{model}/{variant}.onnxruntime.eval.parquet. A composite variant (lowrank+int8_dynamic)
# is built from its parent's file (lowrank.pt), which its own job builds, configured or not;
# the onnxruntime backend exports the variant's float part (lowrank.pt) and quantizes the
# graphs. Settings are keyed by (model, variant, backend) and a job reads only its own step's
# settings, so adding a variant or editing one step's settings runs only those jobs; disk_mb
# comes from parse-time parameter counts (pure Python) and the registry's size fraction.
import re

QUANTIZE = config["quantize"]
QUANTIZE_STORE_DIR = "data/store"
TRAIN_STORE = f"{QUANTIZE_STORE_DIR}/train"
ONNX_BACKEND = "onnxruntime"
# What each backend loads: the eager variant file, the onnxruntime variant folder.
VARIANT_FILES = {
    "eager": "models/{model}/{variant}.pt",
    ONNX_BACKEND: "models/{model}/{variant}.onnx",
}


def _ancestors(variant):
    """The variant's parents, nearest first (fp32 last but left out)."""
    out = []
    while variant != "fp32":
        variant = variants.parent(variant)
        if variant != "fp32":
            out.append(variant)
    return out


ONNX_VARIANTS = backend_variants(ONNX_BACKEND)
# Eager files to build: the variants the eager backend runs, the parents composites are built
# from, and the float models the onnxruntime backend exports.
EAGER_VARIANTS = sorted(
    (
        set(backend_variants("eager"))
        | {a for v in VARIANTS for a in _ancestors(v)}
        | {variants.float_part(v) for v in ONNX_VARIANTS}
    )
    - {"fp32"}
)


def _one_of(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


def variant_eval_table(model, variant, backend):
    """The eval table of one (model, variant, backend)."""
    suffix = "" if backend == "eager" else f".{backend}"
    return f"models/{model}/{variant}{suffix}.eval.parquet"


def get_quantize_eval_tables():
    """Every configured (model, variant, backend)'s eval table."""
    return [
        variant_eval_table(m, v, b)
        for b in BACKENDS
        for m in MODEL_NAMES
        for v in model_variants(m, b)
    ]


def _step_settings(step):
    return {step: QUANTIZE[step]} if step in QUANTIZE else {}


def _reads_train_store(model, step):
    """Whether building `step` reads the train store: a structural step's fine-tune, or
    int8_static's calibration (not for a cost-only model, which is not fine-tuned)."""
    settings = QUANTIZE.get(step, {})
    if "finetune" in settings:
        return settings["finetune"]["steps"] > 0 and model not in COST_ONLY_MODELS
    return step == "int8_static"


def get_quantize_inputs(wildcards):
    variant = wildcards.get("variant", "fp32")
    last = variants.steps(variant)[-1]
    inputs = {
        "model": f"models/{wildcards.model}/fp32.pt",
        "parent": f"models/{wildcards.model}/{variants.parent(variant)}.pt",
        "vocab": f"{QUANTIZE_STORE_DIR}/vocab.json",
        "stores": [f"{QUANTIZE_STORE_DIR}/{split}" for split in VALID_SPLITS],
    }
    if _reads_train_store(wildcards.model, last):
        inputs["train"] = TRAIN_STORE
    return inputs


def get_export_onnx_inputs(wildcards):
    float_part = variants.float_part(wildcards.variant)
    inputs = {
        **get_quantize_inputs(wildcards),
        "parent": f"models/{wildcards.model}/{float_part}.pt",
    }
    inputs.pop("train", None)
    if _reads_train_store(wildcards.model, variants.precision_step(wildcards.variant)):
        inputs["train"] = TRAIN_STORE
    return inputs


def get_quantize_settings(wildcards):
    variant = wildcards.get("variant", "fp32")
    return canonical(
        {
            "eval_batch": QUANTIZE["eval_batch"],
            "splits": VALID_SPLITS,
            "variant": variant,
            "steps": _step_settings(variants.steps(variant)[-1]),
        }
    )


def get_export_onnx_settings(wildcards):
    variant = wildcards.variant
    return canonical(
        {
            "eval_batch": QUANTIZE["eval_batch"],
            "splits": VALID_SPLITS,
            "variant": variant,
            "steps": _step_settings(variants.precision_step(variant)),
        }
    )


def get_quantize_disk_mb(wildcards):
    fp32 = get_fp32_file_bytes(wildcards.model)
    return disk_mb(fp32 * variants.get(wildcards.variant).size_fraction)


rule quantize:
    input:
        unpack(get_quantize_inputs),
    output:
        variant=VARIANT_FILES["eager"],
        table="models/{model}/{variant}.eval.parquet",
    log:
        "logs/quantize/{model}.{variant}.log",
    wildcard_constraints:
        variant=_one_of(EAGER_VARIANTS),
    threads: 2
    resources:
        disk_mb=get_quantize_disk_mb,
        exclusive=1,  # evaluation saturates the CPU: never beside a benchmark
    params:
        settings=get_quantize_settings,
        backend="eager",
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
        backend="eager",
        store_dir=QUANTIZE_STORE_DIR,
        code=get_code_digest("scripts/quantize.py"),
    script:
        "../scripts/quantize.py"


rule export_onnx:
    input:
        unpack(get_export_onnx_inputs),
    output:
        variant=directory(VARIANT_FILES[ONNX_BACKEND]),
        table="models/{model}/{variant}.onnxruntime.eval.parquet",
    log:
        "logs/quantize/{model}.{variant}.onnxruntime.log",
    wildcard_constraints:
        variant=_one_of(ONNX_VARIANTS),
    threads: 2
    resources:
        disk_mb=get_quantize_disk_mb,
        exclusive=1,
    params:
        settings=get_export_onnx_settings,
        backend=ONNX_BACKEND,
        store_dir=QUANTIZE_STORE_DIR,
        code=get_code_digest("scripts/quantize.py"),
    script:
        "../scripts/quantize.py"
