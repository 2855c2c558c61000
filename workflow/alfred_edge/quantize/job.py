"""The quantize job (rules quantize, evaluate_fp32 and export_onnx): build one variant of a
trained model for one backend, write its file (eager: models/<model>/<variant>.pt;
onnxruntime: the folder models/<model>/<variant>.onnx/), evaluate it on the validation
splits and write the one-row table (models/<model>/<variant>.eval.parquet, and
<variant>.onnxruntime.eval.parquet for the onnxruntime backend)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from alfred_edge import variants
from alfred_edge.models.file_format import header
from alfred_edge.quantize.conversions import build_precision, conversion, quiet_quantization_warnings
from alfred_edge.quantize.files import engine_of, load_variant, read_variant_file, save_unavailable, save_variant
from alfred_edge.variants import COST_ONLY, VariantUnavailable

log = logging.getLogger(__name__)

EVAL_METRICS = ("action_acc", "action_f1", "action_em", "mask_iou", "loss", "n_annotations")


def eval_device(variant: str, backend: str = "eager") -> str:
    """Where a variant is evaluated: on the GPU when there is one and the variant runs there
    (the eager float variants), else on the CPU (ONNX Runtime's CPU provider)."""
    on_gpu = backend == "eager" and "cuda" in variants.get(variant).devices and torch.cuda.is_available()
    return "cuda" if on_gpu else "cpu"


def quantize_job(fp32_path, variant: str, store_dir, splits, variant_path, table_path, batch_size: int = 8,
                 backend: str = "eager", parent_path=None, settings: dict | None = None, train_store=None) -> dict:
    """Build `variant` for `backend` from `parent_path` (the file of variants.parent(variant)
    for the eager backend, of variants.float_part(variant) for onnxruntime; default: the fp32
    model file `fp32_path`), write it to `variant_path` (eager fp32: none, the trained file is
    the variant), evaluate it on `splits` of the store and write the one-row table
    `table_path` (columns: see eval_table). `settings`: the structural and int8_static steps'
    settings by step name; `train_store`: the train split's store, which fine-tunes and
    calibration read. A variant that cannot be built or evaluated here gets a row with status
    "unavailable" or "failed" and the reason, and its file records the reason; the job itself
    succeeds. A cost-only model (random weights) is neither fine-tuned nor evaluated: its row's
    reason says so. Returns the row."""
    fp32_path = Path(fp32_path)
    record = read_variant_file(fp32_path)
    # the model's name is its folder's (models/<model>/fp32.pt); the file records the architecture
    row = {"model": fp32_path.parent.name, "variant": variant, "backend": backend, "status": "ok", "reason": "",
           "fp32_file_size_bytes": fp32_path.stat().st_size, "torch_version": str(torch.__version__)}
    if record.get("cost_only"):  # random weights: fine-tuning them would measure nothing
        settings = without_finetune(settings or {})
    if variant == "fp32" and backend == "eager":
        variant_path = fp32_path
    else:
        build = BUILDS[backend]
        row.update(build(Path(parent_path or fp32_path), header(record), variant, Path(variant_path), settings or {},
                         train_store))
    if row["status"] == "ok" and record.get("cost_only"):
        row.update(file_size_bytes=variants.stored_bytes(variant_path), reason=COST_ONLY)
    elif row["status"] == "ok":
        row.update(_evaluate(variant, backend, Path(variant_path), store_dir, splits, batch_size))
    table = eval_table(row, splits)
    from alfred_edge.atomic import write_parquet

    write_parquet(table, table_path)
    return table.iloc[0].to_dict()


def without_finetune(settings: dict) -> dict:
    return {step: {**values, "finetune": {**values["finetune"], "steps": 0}} if "finetune" in values else values
            for step, values in settings.items()}  # fmt: skip


def _build_eager(parent_path: Path, source: dict, variant: str, variant_path: Path, settings: dict,
                 train_store) -> dict:
    """Apply the variant's last step to its parent's model and save it; on failure save the
    reason instead. -> row columns."""

    def build():
        conversion(variant)  # VariantUnavailable where the eager backend has no conversion
        last = variants.steps(variant)[-1]
        parent = load_variant(parent_path, "cpu")
        if variants.get(last).kind == variants.STRUCTURE:
            from alfred_edge.quantize.structure import build_structure

            return build_structure(parent, last, settings[last], train_store)
        return build_precision(parent, last, settings, train_store)

    failure = _saved(lambda: save_variant(build(), variant, source, variant_path), variant, source, variant_path,
                     save_unavailable)
    return failure or {"engine": engine_of(variant) or "", "file_size_bytes": variant_path.stat().st_size}


def _build_onnx(parent_path: Path, source: dict, variant: str, folder: Path, settings: dict, train_store) -> dict:
    """Export the variant's float model and apply ONNX Runtime's precision step; on failure
    save the reason instead. -> row columns."""
    from alfred_edge.quantize.onnx_variants import save_onnx_unavailable, save_onnx_variant

    def build():
        error = variants.backend_error(variant, "onnxruntime")
        if error:
            raise VariantUnavailable(variant, error)
        save_onnx_variant(load_variant(parent_path, "cpu"), variant, source, folder, settings, train_store)

    failure = _saved(build, variant, source, folder, save_onnx_unavailable)
    return failure or {"file_size_bytes": variants.stored_bytes(folder)}


def _saved(build, variant: str, source: dict, path: Path, save_unavailable_file) -> dict | None:
    """Run `build` (which saves the variant); None, or the row columns of its failure, whose
    reason is then saved in the variant's file."""
    try:
        with quiet_quantization_warnings():
            build()
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        save_unavailable_file(variant, exc.reason, source, path)
        return {"status": "unavailable", "reason": exc.reason}
    except Exception as exc:  # a variant that breaks must not stop the other variants
        log.exception("building %s failed", variant)
        reason = f"building failed: {type(exc).__name__}: {exc}"
        save_unavailable_file(variant, reason, source, path)
        return {"status": "failed", "reason": reason}
    return None


BUILDS = {"eager": _build_eager, "onnxruntime": _build_onnx}


def load_for_backend(backend: str, path: Path, device: str):
    """The variant at `path` as the benchmark loads it: an eager model, or an OnnxRuntimeModel
    on the provider of `device` (cpu: ONNX Runtime's CPU provider)."""
    if backend == "onnxruntime":
        from alfred_edge.quantize.onnx_variants import load_onnx_variant

        return load_onnx_variant(path, device)
    return load_variant(path, device)


def _evaluate(variant: str, backend: str, path: Path, store_dir, splits, batch_size: int) -> dict:
    """Load the variant as the benchmark will, and evaluate it. -> row columns."""
    from alfred_edge.evaluate import evaluate

    device = eval_device(variant, backend)
    columns = {"eval_device": device, "file_size_bytes": variants.stored_bytes(path)}
    try:
        model = load_for_backend(backend, path, device)
        with quiet_quantization_warnings():
            metrics = evaluate(model, store_dir, device, splits=tuple(splits), batch_size=batch_size)
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        return {**columns, "status": "unavailable", "reason": exc.reason}
    except Exception as exc:
        if variant == "fp32" and backend == "eager":  # the baseline must work; its failure is a bug to see
            raise
        log.exception("evaluating %s on %s failed", variant, backend)
        return {**columns, "status": "failed", "reason": f"evaluation failed: {type(exc).__name__}: {exc}"}
    for split in splits:
        for metric in EVAL_METRICS:
            columns[f"{metric}_{split}"] = metrics[f"{split}/{metric}"]
    return columns


def eval_table(row: dict, splits) -> "pd.DataFrame":
    """The one-row table of models/<model>/<variant>.eval.parquet (and of
    <variant>.onnxruntime.eval.parquet): model, variant, backend (eager | onnxruntime),
    status (ok | unavailable | failed), reason, file_size_bytes (the onnxruntime folder's
    graphs), file_size_mb (1e6 bytes), fp32_file_size_bytes (the eager fp32 file), size_ratio
    (file / fp32 file), engine (eager int8: the quantized engines its weights are packed
    for), eval_device (onnxruntime: the CPU provider's "cpu"), torch_version, and per split:
    accuracy_<split> (teacher-forced action accuracy, 0..1), action_f1_<split>,
    action_em_<split>, mask_iou_<split>, loss_<split> (teacher-forced), n_annotations_<split>;
    NaN where the variant was not evaluated."""
    import pandas as pd

    row = {"engine": "", "eval_device": "", "file_size_bytes": float("nan"), **row}
    row["file_size_mb"] = row["file_size_bytes"] / 1e6
    row["size_ratio"] = row["file_size_bytes"] / row["fp32_file_size_bytes"]
    for split in splits:
        for metric in EVAL_METRICS:
            row.setdefault(f"{metric}_{split}", float("nan"))
        row[f"accuracy_{split}"] = row.pop(f"action_acc_{split}")
    return pd.DataFrame([row])
