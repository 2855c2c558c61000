"""The quantize job (rules quantize and evaluate_fp32): build one variant of a trained model,
write its file, evaluate the file's model on the validation splits and write the one-row
table models/<model>/<variant>.eval.parquet."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from alfred_edge import variants
from alfred_edge.models import load_model
from alfred_edge.models.file_format import header
from alfred_edge.quantize.conversions import make_variant, quiet_quantization_warnings
from alfred_edge.quantize.files import engine_of, load_variant, read_variant_file, save_unavailable, save_variant
from alfred_edge.variants import COST_ONLY, VariantUnavailable

log = logging.getLogger(__name__)

EVAL_METRICS = ("action_acc", "action_f1", "action_em", "mask_iou", "loss", "n_annotations")


def eval_device(variant: str) -> str:
    """Where a variant is evaluated: on the GPU when there is one and the variant runs there
    (the float variants), else on the CPU."""
    return "cuda" if "cuda" in variants.get(variant).devices and torch.cuda.is_available() else "cpu"


def quantize_job(fp32_path, variant: str, store_dir, splits, variant_path, table_path,
                 batch_size: int = 8) -> dict:
    """Build `variant` of the model in `fp32_path`, write it to `variant_path` (fp32: none,
    the trained file is the variant), evaluate the file's model on `splits` of the store
    and write the one-row table `table_path` (columns: see eval_table). A variant that cannot
    be built or evaluated here gets a row with status "unavailable" or "failed" and the
    reason, and its file records the reason; the job itself succeeds. A cost-only model
    (random weights) is not evaluated: its row's reason says so. Returns the row."""
    fp32_path = Path(fp32_path)
    record = read_variant_file(fp32_path)
    row = {"model": record["model"], "variant": variant, "status": "ok", "reason": "",
           "fp32_file_size_bytes": fp32_path.stat().st_size, "torch_version": str(torch.__version__)}
    if variant == "fp32":
        variant_path = fp32_path
    else:
        row.update(_build(fp32_path, record, variant, Path(variant_path)))
    if row["status"] == "ok" and record.get("cost_only"):
        row.update(file_size_bytes=Path(variant_path).stat().st_size, reason=COST_ONLY)
    elif row["status"] == "ok":
        row.update(_evaluate(variant, Path(variant_path), store_dir, splits, batch_size))
    table = eval_table(row, splits)
    from alfred_edge.atomic import write_parquet

    write_parquet(table, table_path)
    return table.iloc[0].to_dict()


def _build(fp32_path: Path, record: dict, variant: str, variant_path: Path) -> dict:
    """Make and save the variant; on failure save its reason instead. -> row columns."""
    source = header(record)
    try:
        model = make_variant(load_model(fp32_path, "cpu"), variant)
        save_variant(model, variant, source, variant_path)
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        save_unavailable(variant, exc.reason, source, variant_path)
        return {"status": "unavailable", "reason": exc.reason}
    except Exception as exc:  # a variant that breaks must not stop the other variants
        log.exception("building %s failed", variant)
        reason = f"building failed: {type(exc).__name__}: {exc}"
        save_unavailable(variant, reason, source, variant_path)
        return {"status": "failed", "reason": reason}
    return {"engine": engine_of(variant) or "", "file_size_bytes": variant_path.stat().st_size}


def _evaluate(variant: str, path: Path, store_dir, splits, batch_size: int) -> dict:
    """Load the variant file as the benchmark will, and evaluate it. -> row columns."""
    from alfred_edge.evaluate import evaluate

    device = eval_device(variant)
    columns = {"eval_device": device, "file_size_bytes": path.stat().st_size}
    try:
        model = load_variant(path, device)
        with quiet_quantization_warnings():
            metrics = evaluate(model, store_dir, device, splits=tuple(splits), batch_size=batch_size)
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        return {**columns, "status": "unavailable", "reason": exc.reason}
    except Exception as exc:
        if variant == "fp32":  # the baseline must work; its failure is a bug to see
            raise
        log.exception("evaluating %s failed", variant)
        return {**columns, "status": "failed", "reason": f"evaluation failed: {type(exc).__name__}: {exc}"}
    for split in splits:
        for metric in EVAL_METRICS:
            columns[f"{metric}_{split}"] = metrics[f"{split}/{metric}"]
    return columns


def eval_table(row: dict, splits) -> "pd.DataFrame":
    """The one-row table of models/<model>/<variant>.eval.parquet:
    model, variant, status (ok | unavailable | failed), reason, file_size_bytes,
    file_size_mb (1e6 bytes), fp32_file_size_bytes, size_ratio (file / fp32 file), engine
    (int8), eval_device, torch_version, and per split: accuracy_<split> (teacher-forced
    action accuracy, 0..1), action_f1_<split>, action_em_<split>, mask_iou_<split>,
    loss_<split> (teacher-forced), n_annotations_<split>; NaN where the variant was not evaluated."""
    import pandas as pd

    row = {"engine": "", "eval_device": "", "file_size_bytes": float("nan"), **row}
    row["file_size_mb"] = row["file_size_bytes"] / 1e6
    row["size_ratio"] = row["file_size_bytes"] / row["fp32_file_size_bytes"]
    for split in splits:
        for metric in EVAL_METRICS:
            row.setdefault(f"{metric}_{split}", float("nan"))
        row[f"accuracy_{split}"] = row.pop(f"action_acc_{split}")
    return pd.DataFrame([row])
