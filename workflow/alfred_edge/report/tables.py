"""The report's tables, computed from the results table (one row per cell): the headline
per host/device, RAM fits and capacity, power, leaks, failures and each host's environment.
Each returns plain Python rows (lists of dicts), so the template escapes every value."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from alfred_edge.variants import COST_ONLY

ENVIRONMENT_COLUMNS = [
    "device_name", "platform", "os", "python_version", "cpu_model", "cpu_cores_logical", "cpu_cores_physical",
    "cpu_governor", "ram_total_mb", "torch_version", "cuda_version", "cudnn_version", "num_threads",
    "num_interop_threads", "quantized_engine", "jetson_model", "jetson_l4t", "jetson_power_mode", "jetson_clocks",
    "roofline_peak_gflops", "roofline_bandwidth_gbps", "git_commit", "settings_digest",
]


def fmt(value, digits: int = 3) -> str:
    """A number with `digits` significant digits, or "–" for a missing value."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:,.0f}" if abs(value) >= 10 ** digits else f"{value:.{digits}g}"
    return str(value)


def cell_name(row) -> str:
    return f"{row['model']} {row['variant']} @ batch {int(row['batch_size'])}"


def ok(cells: pd.DataFrame) -> pd.DataFrame:
    return cells[cells["status"] == "ok"]


def budgets_per_host(cells: pd.DataFrame, capacity: pd.DataFrame, budgets_gb: dict) -> pd.DataFrame:
    """One row per (host, budget). A host's capacity rows name its budgets; a host without
    them (e.g. a board that ran only the standalone runner) gets the configured ones
    ({name: GB}, "auto" = the host's own RAM as its rows recorded it)."""
    rows = [
        {"host": row.host, "budget": row.budget_name, "budget_mb": float(row.budget_mb)}
        for row in capacity[["host", "budget_name", "budget_mb"]].dropna().drop_duplicates().itertuples()
    ]
    ram = cells.groupby("host")["ram_total_mb"].max()
    for host in sorted(set(cells["host"].dropna()) - {row["host"] for row in rows}):
        for name, value in sorted(budgets_gb.items()):
            budget_mb = ram.get(host) if value == "auto" else float(value) * 1e3
            if pd.notna(budget_mb):
                rows.append({"host": host, "budget": name, "budget_mb": float(budget_mb)})
    return pd.DataFrame(rows, columns=["host", "budget", "budget_mb"]).sort_values(["host", "budget_mb"])


def fits_budgets(row, host_budgets: list[tuple[str, float]]) -> str:
    """The budgets (name, MB) of the row's host that its peak memory fits in."""
    if pd.isna(row["peak_memory_mb"]):
        return "RAM not measured"
    return ", ".join(name for name, budget_mb in host_budgets if budget_mb >= row["peak_memory_mb"])


def pareto_front(rows: pd.DataFrame, cost: str = "sample_latency_p50_ms") -> pd.DataFrame:
    """Rows no other row beats on both `cost` (lower: latency, file size) and accuracy (higher)."""
    rows = rows.sort_values([cost, "accuracy_valid_seen"], ascending=[True, False])
    best, front = -np.inf, []
    for index, accuracy in zip(rows.index, rows["accuracy_valid_seen"]):
        if accuracy > best:
            front.append(index)
            best = accuracy
    return rows.loc[front]


# The runtime of a row whose file has no backend column (written before backends were
# recorded): eager PyTorch, the only one there was.
BACKEND, DEFAULT_BACKEND = "backend", "eager"
PROVIDER = "provider"  # the backend's execution provider: part of a runtime's name, like the backend


def with_backend(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with its backend column filled: DEFAULT_BACKEND where it is absent or null."""
    if frame.empty and not len(frame.columns):
        return frame
    backend = frame[BACKEND].astype(object) if BACKEND in frame else pd.Series(None, index=frame.index, dtype=object)
    return frame.assign(**{BACKEND: backend.fillna(DEFAULT_BACKEND).astype(str)})


def variant_names(rows: pd.DataFrame) -> pd.Series:
    """Each row's variant, followed by its backend and provider where the backend is not the
    default one ("int8_dynamic · onnxruntime · cpu"; ONNX Runtime has several providers on a
    GPU): what tells its cells apart in a sentence or a card."""
    runtime = " · " + rows[BACKEND].astype(str)
    if PROVIDER in rows:
        runtime = runtime + (" · " + rows[PROVIDER].astype(str)).where(rows[PROVIDER].notna(), "")
    variant = rows["variant"].astype(str)
    return variant.where(rows[BACKEND] == DEFAULT_BACKEND, variant + runtime)


def cost_only_models(cells: pd.DataFrame) -> list[str]:
    """The models whose rows say cost_only (random weights: their cost is real, they have no accuracy)."""
    if "cost_only" not in cells:
        return []
    return sorted(cells.loc[cells["cost_only"].fillna(False).astype(bool), "model"].dropna().unique())


def headline(cells: pd.DataFrame, budgets: pd.DataFrame) -> list[dict]:
    """Per host/device: fastest at batch 1, highest throughput, the accuracy/latency front,
    and each cost-only model's fastest variant at batch 1 (its cost, without an accuracy)."""
    result = []
    columns = ["host", "device", "device_name", "model", "variant", BACKEND, "batch_size", "sample_latency_p50_ms",
               "throughput_samples_per_s", "accuracy_valid_seen", "peak_memory_mb"]
    budgets_of = {host: list(zip(rows["budget"], rows["budget_mb"])) for host, rows in budgets.groupby("host")}
    rows = ok(cells)
    rows = rows[columns].assign(name=variant_names(rows), cost_only=rows["model"].isin(cost_only_models(cells)))
    for (host, device), panel in rows.groupby(["host", "device"], sort=True):
        host_budgets = budgets_of.get(host, [])

        def card_row(row, value: str) -> dict:
            name = f"{row['model']} {row['name']}"
            return {"cell": f"{name} ({COST_ONLY})" if row["cost_only"] else name, "value": value,
                    "budgets": fits_budgets(row, host_budgets)}

        entry = {"host": host, "device": device, "fastest": None, "throughput": None,
                 "device_name": fmt(panel["device_name"].dropna().iloc[0]) if panel["device_name"].notna().any() else "–"}
        batch1 = panel[(panel["batch_size"] == 1) & panel["sample_latency_p50_ms"].notna()]
        if not batch1.empty:
            row = batch1.loc[batch1["sample_latency_p50_ms"].idxmin()]
            entry["fastest"] = card_row(row, f"{fmt(row['sample_latency_p50_ms'])} ms per sample")
        with_throughput = panel[panel["throughput_samples_per_s"].notna()]
        if not with_throughput.empty:
            row = with_throughput.loc[with_throughput["throughput_samples_per_s"].idxmax()]
            entry["throughput"] = card_row(row, f"{fmt(row['throughput_samples_per_s'])} samples/s at batch "
                                                f"{int(row['batch_size'])}")
        scored = batch1[batch1["accuracy_valid_seen"].notna()]
        entry["front"] = [card_row(row, f"{fmt(row['accuracy_valid_seen'] * 100)} % at "
                                        f"{fmt(row['sample_latency_p50_ms'])} ms per sample")
                          for row in pareto_front(scored).to_dict("records")]
        costs = batch1[batch1["cost_only"]]
        entry["cost_only"] = [card_row(row, f"{fmt(row['sample_latency_p50_ms'])} ms per sample, "
                                            f"{fmt(row['peak_memory_mb'])} MB peak; no accuracy ({COST_ONLY})")
                              for row in costs.loc[costs.groupby("model")["sample_latency_p50_ms"].idxmin()]
                              .to_dict("records")]
        result.append(entry)
    return result


SERIES = ["host", "device", "model", "variant", "features"]  # a capacity row's series


def ram_fits(capacity: pd.DataFrame) -> pd.DataFrame:
    """The fitted line of peak memory against batch per series (the benchmark's capacity rows
    repeat it for each budget)."""
    fitted = capacity[capacity["fit_slope_mb_per_sample"].notna()]
    return fitted[SERIES + ["fit_slope_mb_per_sample", "fit_intercept_mb"]].drop_duplicates(SERIES)


def capacity_rows(capacity: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """One row per series, one column per budget name: the largest batch the fit predicts,
    and the one measured where the harness measured that budget."""
    records = sorted(capacity.to_dict("records"), key=lambda r: tuple(str(r[c]) for c in SERIES) + (r["budget_mb"],))
    budgets = list(dict.fromkeys(r["budget_name"] for r in sorted(records, key=lambda r: r["budget_mb"])))
    rows = {}
    for entry in records:
        series = " · ".join(fmt(entry[c]) for c in SERIES)
        row = rows.setdefault(series, {
            "series": series, "points": fmt(entry["fit_points"]), "slope": fmt(entry["fit_slope_mb_per_sample"]),
            "intercept": fmt(entry["fit_intercept_mb"]), "errors": "", "budgets": {}})
        text = f"{fmt(entry['predicted_max_batch'])} ({fmt(entry['budget_mb'] / 1e3)} GB)"
        if entry["measured"] is True:
            text += f", measured {fmt(entry['measured_max_batch'])}"
        row["budgets"][entry["budget_name"]] = text
        if pd.notna(entry["error"]) and entry["error"] not in row["errors"]:
            row["errors"] = "; ".join(filter(None, [row["errors"], entry["error"]]))
    return budgets, list(rows.values())


def power_by_host(cells: pd.DataFrame) -> list[dict]:
    """Per host: the power method and what it covers, or why power was not measured."""
    result = []
    for host, rows in cells.groupby("host", sort=True):
        methods = [m for m in rows["power_method"].dropna().unique() if m != "none"]
        reasons = rows["power_unavailable_reason"].dropna().unique()
        result.append({
            "host": host,
            "method": ", ".join(methods) or "none",
            "scope": ", ".join(rows["power_scope"].dropna().unique()) or "–",
            "reason": "; ".join(reasons) or ("–" if methods else "not recorded"),
        })
    return result


def power_reasons(cells: pd.DataFrame) -> dict[str, str]:
    return {entry["host"]: entry["reason"] for entry in power_by_host(cells)}


def power_cells(cells: pd.DataFrame) -> list[dict]:
    rows = ok(cells)[["host", "device", "model", "variant", "batch_size", "idle_power_w", "mean_power_w",
                      "energy_per_sample_j", "energy_per_sample_above_idle_j", "power_method"]]
    measured = rows[rows["mean_power_w"].notna() | rows["energy_per_sample_j"].notna()]
    return [
        {"host": row["host"], "device": row["device"], "cell": cell_name(row), "idle": fmt(row["idle_power_w"]),
         "mean": fmt(row["mean_power_w"]), "energy": fmt(row["energy_per_sample_j"]),
         "above_idle": fmt(row["energy_per_sample_above_idle_j"]), "method": fmt(row["power_method"])}
        for row in measured.to_dict("records")
    ]


def leaks(cells: pd.DataFrame) -> tuple[int, list[dict]]:
    """How many cells had a leak check, and the ones flagged."""
    checked = ok(cells)[ok(cells)["leak_flag"].notna()]
    flagged = checked[checked["leak_flag"].astype(bool)]
    return len(checked), [
        {"host": row["host"], "device": row["device"], "cell": cell_name(row),
         "slope": fmt(row["leak_rss_slope_mb_per_iter"]), "iterations": fmt(row["iterations"])}
        for row in flagged.to_dict("records")
    ]


def roofline(cells: pd.DataFrame) -> list[dict]:
    rows = ok(cells)[ok(cells)["roofline_fraction"].notna()]
    return [
        {"host": host, "device": device, "cells": len(group),
         "median": fmt(group["roofline_fraction"].median()), "best": fmt(group["roofline_fraction"].max()),
         "best_cell": cell_name(group.loc[group["roofline_fraction"].idxmax()])}
        for (host, device), group in rows.groupby(["host", "device"], sort=True)
    ]


def failures(cells: pd.DataFrame) -> list[dict]:
    """Failed and skipped cells grouped by host, device, status and reason."""
    columns = ["host", "device", "status", "error", "model", "variant", "batch_size", "source_file"]
    bad = cells.loc[cells["status"] != "ok", columns].fillna({"error": "(no reason recorded)", "device": "–"})
    result = []
    for (host, device, status, reason), group in bad.groupby(["host", "device", "status", "error"], sort=True):
        names = [cell_name(row) if pd.notna(row["batch_size"]) else str(row["source_file"]) for row in group.to_dict("records")]
        result.append({"host": host, "device": device, "status": status, "reason": reason,
                       "count": len(names), "cells": ", ".join(names[:12]) + (" …" if len(names) > 12 else "")})
    return result


def environments(cells: pd.DataFrame) -> tuple[list[str], list[dict]]:
    """Hosts as columns, one row per environment field: several values are joined."""
    hosts = sorted(cells["host"].dropna().unique())
    # A host's cells mostly share one environment: its distinct ones are a few rows, not thousands.
    by_host = {host: [] for host in hosts}
    for record in cells[["host", *ENVIRONMENT_COLUMNS]].dropna(subset=["host"]).drop_duplicates().to_dict("records"):
        by_host[record["host"]].append(record)
    rows = []
    for column in ENVIRONMENT_COLUMNS:
        seen = [sorted({r[column] for r in by_host[host] if pd.notna(r[column])}, key=str) for host in hosts]
        rows.append({"field": column, "values": [", ".join(map(fmt, values)) or "–" for values in seen]})
    times = cells.groupby("host")["ts_utc"].agg(["min", "max"])
    rows.append({"field": "ts_utc", "values": [f"{times.at[host, 'min']} … {times.at[host, 'max']}"
                                               if pd.notna(times.at[host, "min"]) else "–" for host in hosts]})
    return hosts, rows


# The eval table's columns in the page's table, with their headers (the rest are behind
# "every column"); accuracies are shown in %.
QUANTIZATION_COLUMNS = {"model": "model", "variant": "variant", BACKEND: "backend", "status": "status",
                        "file_size_mb": "file MB", "size_ratio": "file / fp32", "accuracy_valid_seen": "accuracy valid_seen %",
                        "accuracy_valid_unseen": "accuracy valid_unseen %", "reason": "reason"}


def quantization(evals: pd.DataFrame, baseline: str) -> tuple[list[str], list[list[str]]]:
    """One row per (model, variant, backend): file size, accuracy on each split and its change
    on valid_seen against the model's `baseline` variant on the default backend (points),
    status and reason; a cost-only model's accuracies say so."""
    if evals.empty:
        return [], []
    shown = [c for c in QUANTIZATION_COLUMNS if c in evals]
    seen = evals.get("accuracy_valid_seen", pd.Series(np.nan, index=evals.index))
    is_base = (evals["variant"] == baseline) & (evals[BACKEND] == DEFAULT_BACKEND)
    base = dict(zip(evals["model"][is_base], seen[is_base]))
    header = [QUANTIZATION_COLUMNS[c] for c in shown] + [f"Δ valid_seen vs {baseline} (points)"]
    rows = []
    for index, record in zip(evals.index, evals[shown].to_dict("records")):
        cost_only = record.get("reason") == COST_ONLY
        values = [COST_ONLY if cost_only and column.startswith("accuracy_")
                  else fmt(value * 100 if column.startswith("accuracy_") and value is not None else value)
                  for column, value in record.items()]
        change = (seen[index] - base.get(record["model"], np.nan)) * 100
        rows.append(values + ["–" if pd.isna(change) else f"{change:+.2f}"])
    return header, rows


def by_metric(frame: pd.DataFrame, key: str) -> tuple[list[str], list[list[str]]]:
    """A table with one column per value of `key` and one row per other column: narrow
    where the frame has many columns and few rows (the last epoch of each model)."""
    if frame.empty:
        return [], []
    keys = list(frame[key])
    return ["", *map(str, keys)], [[column, *map(fmt, frame[column])] for column in frame.columns if column != key]
