"""RAM capacity of (model, variant, device): the largest batch that fits each RAM budget,
predicted from the sweep (a least-squares line of peak RSS against batch size over the ok
cells) and, for one budget, measured: one child raises the batch while the harness holds
its RSS under the budget and ends it cleanly when it passes."""
from __future__ import annotations

import math
import os

import numpy as np
import psutil
import pyarrow.parquet as pq

from alfred_edge.bench import runner


def budgets_mb(budgets_gb: dict) -> dict:
    """Config budgets (GB = 1e9 bytes, or "auto" = this host's RAM) → MB (1e6 bytes)."""
    total_mb = psutil.virtual_memory().total / 1e6
    return {name: total_mb if gb == "auto" else float(gb) * 1000.0 for name, gb in budgets_gb.items()}


def fit_peak_ram(rows: list[dict]) -> dict:
    """Line peak_rss_mb = intercept + slope * batch over the ok rows (one point per batch)."""
    points = sorted((r["batch_size"], r["peak_rss_mb"]) for r in rows
                    if r.get("status") == "ok" and r.get("peak_rss_mb") is not None)
    batches = [b for b, _ in points]
    if len(set(batches)) < 2:
        return {"fit_points": len(points), "fit_batches": batches, "fit_slope_mb_per_sample": None,
                "fit_intercept_mb": None}
    slope, intercept = np.polyfit([b for b, _ in points], [p for _, p in points], 1)
    return {"fit_points": len(points), "fit_batches": batches, "fit_slope_mb_per_sample": float(slope),
            "fit_intercept_mb": float(intercept)}


def predict_max_batch(fit: dict, budget_mb: float) -> int | None:
    """Largest batch whose fitted peak fits the budget: None without a usable fit (fewer than
    two batch sizes, or RAM that does not grow with the batch), 0 when batch 1 does not fit."""
    slope, intercept = fit["fit_slope_mb_per_sample"], fit["fit_intercept_mb"]
    if slope is None or slope <= 0:
        return None
    return max(0, math.floor((budget_mb - intercept) / slope))


def search_batches(max_batch: int, factor: float) -> list[int]:
    batches, b = [], 1
    while b <= max_batch:
        batches.append(b)
        b = max(b + 1, int(round(b * factor)))
    return batches


def measured_columns(child: runner.ChildExit, batches: list[int], limit_mb: float) -> dict:
    """The largest batch that completed under the limit, and the first that did not."""
    peaks = {p["batch"]: p["peak_rss_mb"] for p in child.progress}
    fitting = [b for b in batches if b in peaks and peaks[b] <= limit_mb]
    largest = max(fitting, default=0)
    first_failing = next((b for b in batches if b not in fitting), None)
    best_peak = peaks.get(largest)
    return {
        "measured": True,
        "measured_max_batch": largest,
        "measured_first_failing_batch": first_failing,
        "measured_peak_rss_mb": best_peak,
        "measured_batches": [p["batch"] for p in child.progress],
        "measured_peaks_mb": [p["peak_rss_mb"] for p in child.progress],
    }


def run_capacity(spec: dict, cell_files: list[str], out_path: str | os.PathLike) -> list[dict]:
    """One row per budget. spec: the cell spec keys plus
    capacity = {budgets_gb: {name: GB | "auto"}, measure: name | null, max_batch, factor, steps}."""
    cap = spec["capacity"]
    rows = [r for f in cell_files for r in pq.read_table(f).to_pylist()]
    fit = fit_peak_ram(rows)
    budgets = budgets_mb(cap["budgets_gb"])
    measured = {}
    status, error, exit_info = "ok", None, {}
    if cap.get("measure"):
        limit = budgets[cap["measure"]]
        reason = runner.cuda_absent_reason(spec["device"])
        batches = search_batches(cap["max_batch"], cap["factor"])
        if reason:
            status, error = "skipped", reason
        else:
            child = runner.run_child("capacity", dict(spec, capacity=dict(cap, batches=batches)), spec["timeout_s"], limit)
            exit_info = runner.exit_columns(child, spec["timeout_s"], limit)
            measured = measured_columns(child, batches, limit)
            # Passing the limit is the expected end of the search, not a failure of the job.
            status = "ok" if child.ended_by == "ram_limit" or exit_info["status"] == "ok" else exit_info["status"]
            error = None if status == "ok" else exit_info.get("error")
            exit_info["wall_time_s"] = child.wall_s
    base = runner.base_columns(spec)
    env = {k: v for k, v in exit_info.items() if k not in ("status", "error")}
    keys = {k: spec[k] for k in ("model", "variant", "features")}
    table_rows = []
    for name, budget in budgets.items():
        row = {**base, **env, **keys, **fit, "budget_name": name, "budget_mb": budget,
               "predicted_max_batch": predict_max_batch(fit, budget), "measured": name == cap.get("measure"),
               "status": status, "error": error}
        if name == cap.get("measure"):
            row.update(measured)
        table_rows.append(row)
    return runner.finish_rows("capacity", table_rows, out_path)
