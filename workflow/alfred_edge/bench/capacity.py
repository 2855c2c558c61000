"""RAM capacity of (model, variant, device): the largest batch that fits each RAM budget,
predicted from the sweep (a least-squares line of peak memory against batch size over the ok
cells) and, for one budget, measured: one child (measure_search, the measuring half) raises
the batch while the harness holds its memory under the budget and ends it cleanly when it
passes. Memory is the resident memory plus, on cuda, the GPU-side memory
(memory.DeviceMemory): on a Jetson both come out of the same RAM."""
from __future__ import annotations

import gc
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.parquet as pq

from alfred_edge.bench import memory, runner


def budgets_mb(budgets_gb: dict) -> dict:
    """Config budgets (GB = 1e9 bytes, or "auto" = this host's RAM) → MB (1e6 bytes)."""
    total_mb = psutil.virtual_memory().total / 1e6
    return {name: total_mb if gb == "auto" else float(gb) * 1000.0 for name, gb in budgets_gb.items()}


def fit_peak_ram(rows: list[dict]) -> dict:
    """Line peak_memory_mb = intercept + slope * batch over the ok rows (one point per batch)."""
    points = sorted((r["batch_size"], r["peak_memory_mb"]) for r in rows
                    if r.get("status") == "ok" and r.get("peak_memory_mb") is not None)
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
    peaks = {p["batch"]: p["peak_memory_mb"] for p in child.progress}
    fitting = [b for b in batches if b in peaks and peaks[b] <= limit_mb]
    largest = max(fitting, default=0)
    over = [b for b in batches if b in peaks and peaks[b] > limit_mb]
    # Ended while a batch ran (the limit, a crash): that batch failed. Stopped by itself
    # (time box, max_batch): no batch failed.
    ended_during = child.ended_by is not None or child.exit_code != 0
    untried = [b for b in batches if b not in peaks]
    first_failing = over[0] if over else (untried[0] if ended_during and untried else None)
    best_peak = peaks.get(largest)
    return {
        "measured": True,
        "measured_max_batch": largest,
        "measured_first_failing_batch": first_failing,
        "measured_peak_memory_mb": best_peak,
        "measured_batches": [p["batch"] for p in child.progress],
        "measured_peaks_mb": [p["peak_memory_mb"] for p in child.progress],
        "measured_memory_method": child.progress[0]["memory_method"] if child.progress else None,
    }


def run_capacity(spec: dict, cell_files: list[str], out_path: str | os.PathLike) -> list[dict]:
    """One row per budget. spec: the cell spec keys plus capacity = {budgets_gb: {name: GB |
    "auto"}, measure: name | null, max_batch, factor, steps, max_seconds}. The measured
    budget's row carries the search's status; the others are ok when the fit exists."""
    cap = spec["capacity"]
    rows = [r for f in cell_files for r in pq.read_table(f).to_pylist()]
    fit = fit_peak_ram(rows)
    budgets = budgets_mb(cap["budgets_gb"])
    if cap.get("measure") and cap["measure"] not in budgets:
        raise ValueError(f"capacity.measure {cap['measure']!r} is not a budget in ram_budgets_gb ({', '.join(budgets)})")
    base = {**runner.base_columns(spec), **{k: spec[k] for k in ("model", "variant", "features")}, **fit}
    table_rows = []
    for name, budget in budgets.items():
        row = {**base, "budget_name": name, "budget_mb": budget, "measured": name == cap.get("measure"),
               "predicted_max_batch": predict_max_batch(fit, budget)}
        if fit["fit_slope_mb_per_sample"] is None:
            row.update(status="skipped", error=f"no fit: {fit['fit_points']} ok cell(s) at "
                                               f"{len(set(fit['fit_batches']))} batch size(s); the fit needs two")
        else:
            row.update(status="ok", error=None)
        if row["measured"]:
            row.update(measure(spec, budget))
        table_rows.append(row)
    return runner.finish_rows("capacity", table_rows, out_path)


def measure(spec: dict, limit_mb: float) -> dict:
    """The measured columns (and status) of the capacity search under `limit_mb`."""
    cap = spec["capacity"]
    reason = runner.cuda_absent_reason(spec["device"])
    if reason:
        return {"status": "skipped", "error": reason}
    batches = search_batches(cap["max_batch"], cap["factor"])
    child = runner.run_child("capacity", dict(spec, capacity=dict(cap, batches=batches, limit_mb=limit_mb)),
                             spec["timeout_s"], limit_mb)
    exit_cols = runner.exit_columns(child, spec["timeout_s"], limit_mb)
    cols = {**{k: v for k, v in exit_cols.items() if k not in ("status", "error", "measured_stop_reason")},
            **measured_columns(child, batches, limit_mb), "wall_time_s": child.wall_s}
    # Passing the limit is how the search is meant to end, not a failure of the job.
    if child.ended_by == "ram_limit" or (child.progress and child.progress[-1]["peak_memory_mb"] > limit_mb):
        cols.update(status="ok", error=None, measured_stop_reason="ram_limit")
    elif exit_cols["status"] == "ok":
        cols.update(status="ok", error=None, measured_stop_reason=exit_cols.get("measured_stop_reason"))
    else:
        cols.update(status=exit_cols["status"], error=exit_cols.get("error"), measured_stop_reason="failed")
    return cols


def measure_search(spec: dict, torch) -> dict:
    """The measuring child's half: raise the batch (spec batches, in order) in this one
    process: for each, build the batch, encode and run `steps` decoder steps, and append
    {"batch", "peak_memory_mb", "memory_method"} to the progress file (peak RSS plus the
    GPU-side memory, see memory.DeviceMemory). The parent ends this process when its RSS
    passes the limit; the search itself stops after a batch whose peak passed it (GPU
    memory, which the parent does not see), and before a batch that would end after
    capacity.max_seconds (its time is guessed as the last batch's times the growth factor)."""
    from alfred_edge.bench.workloads import check_device, make_workload

    check_device(spec["device"])
    cap = spec["capacity"]
    device_memory = memory.DeviceMemory(torch, spec["device"])
    first = make_workload(spec, cap["batches"][0], cap["steps"])
    first.load()
    progress = Path(spec["progress_path"])
    start = time.perf_counter()
    for batch_size in cap["batches"]:
        batch_start = time.perf_counter()
        workload = make_workload(spec, batch_size, cap["steps"])
        workload.model = first.model
        memory.reset_hwm()
        device_memory.reset_peak()
        workload.prepare()
        workload.run_batch()
        peak = (memory.hwm_mb() or memory.rss_mb()) + (device_memory.peak_mb() or 0.0)
        with progress.open("a") as stream:
            stream.write(json.dumps({"batch": batch_size, "peak_memory_mb": peak,
                                     "memory_method": device_memory.method}) + "\n")
        del workload
        gc.collect()
        if peak > cap["limit_mb"]:
            return {"measured_stop_reason": "ram_limit"}
        now = time.perf_counter()
        if now - start + (now - batch_start) * cap["factor"] > cap["max_seconds"] and batch_size != cap["batches"][-1]:
            return {"measured_stop_reason": "time_box"}
    return {"measured_stop_reason": "max_batch"}
