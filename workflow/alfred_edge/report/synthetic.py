"""Synthetic inputs for the report, as data/synthetic.py is for the data stage: benchmark
files of several hosts (following results.schema.yaml, with failed and skipped cells, one
single-row file per cell as the bench rules write them), capacity and roofline rows, eval
tables, training metrics and a storage plan. A host name and error messages hold HTML and
script, which the page must show as text. Used by the report's tests and by
benchmarks/report_time.py, which needs thousands of cells without running a benchmark."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alfred_edge.bench import schema as bench_schema
from alfred_edge.variants import NAMES as VARIANT_NAMES

EVIL = "<b>evil</b><script>document.title='pwned'</script>"
EVIL_ERROR = "CUDA out of memory <img src=x onerror=\"document.title='pwned'\"> <script>alert(1)</script> $x$ & more"


@dataclass
class Host:
    folder: str                      # reports/bench/<folder>/
    name: str                        # the host column (may hold HTML, to test escaping)
    devices: tuple = ("cpu",)
    power: str | None = None         # None: no sampler worked
    cpu_model: str = "Intel(R) Xeon(R) CPU @ 2.20GHz"
    ram_total_mb: float = 24_000.0
    speed: float = 1.0               # latency multiplier
    jetson_model: str | None = None
    batches: tuple = (1, 2, 4, 8)
    models: tuple = ("lstm", "transformer")
    variants: tuple = VARIANT_NAMES
    extra: dict = field(default_factory=dict)


LAPTOP = Host("laptop", "laptop")
JETSON = Host(
    "orin", f"orin-{EVIL}", devices=("cpu", "cuda"), power="jtop", cpu_model="ARMv8 Processor rev 1 (v8l)",
    ram_total_mb=7_600.0, speed=2.5, jetson_model="NVIDIA Jetson Orin Nano Developer Kit",
)


COST_ONLY_MODEL = "lstm_alfred_size"  # random weights at ALFRED's sizes: slower, no accuracy

# Per variant, on CPU: latency and file size against fp32's, and the accuracy change in points
# (the runtimes issue's variants too, which the registry may not have yet).
VARIANT_COSTS = {"fp32": (1.0, 1.0, 0.0), "int8_dynamic": (0.45, 0.27, -0.4), "fp16": (1.6, 0.5, 0.0),
                 "bf16": (1.3, 0.5, -0.1), "int8_static": (0.35, 0.26, -0.9), "lowrank": (0.7, 0.55, -0.6),
                 "pruned": (0.6, 0.5, -1.2), "lowrank+int8_dynamic": (0.3, 0.15, -1.0)}


def latency_ms(host: Host, device: str, model: str, variant: str, batch: int) -> float:
    """Episode-batch latency: grows sublinearly with the batch, faster for int8 on CPU and on CUDA."""
    base = {"lstm": 420.0, "transformer": 260.0, COST_ONLY_MODEL: 1300.0}.get(model, 300.0) * host.speed
    factor = VARIANT_COSTS.get(variant, (1.0,))[0]
    if device == "cuda":
        factor = {"fp16": 0.05, "bf16": 0.06}.get(variant, 0.08)
    return base * factor * (1 + 0.28 * (batch - 1))


def cell_row(host: Host, device: str, model: str, variant: str, batch: int, rng, when: dt.datetime) -> dict:
    p50 = latency_ms(host, device, model, variant, batch) * rng.uniform(0.97, 1.03)
    steps = 64
    iterations = int(max(5, 2000 / p50))
    peak = (520 if model == "lstm" else 380) * (0.45 if variant == "int8_dynamic" else 1.0) + 38 * batch
    row = {
        "schema_version": 1, "run_id": f"{rng.integers(1 << 62):016x}", "ts_utc": when.isoformat(),
        "host": host.name, "device": device, "status": "ok",
        "device_name": host.cpu_model if device == "cpu" else "Orin (nvgpu)",
        "platform": "aarch64" if host.jetson_model else "x86_64", "os": "Linux-6.1", "python_version": "3.10.12",
        "cpu_model": host.cpu_model, "cpu_cores_logical": 6 if host.jetson_model else 2, "cpu_cores_physical": 6,
        "ram_total_mb": host.ram_total_mb, "torch_version": "2.13.0+cpu", "num_threads": 2, "num_interop_threads": 2,
        "quantized_engine": "qnnpack" if host.jetson_model else "x86", "jetson_model": host.jetson_model,
        "jetson_power_mode": "15W" if host.jetson_model else None, "git_commit": "e6818fb",
        "settings_digest": "3f2a9c0d1b2e4f56", "settings_json": "{}", "wall_time_s": 12.0,
        "model": model, "variant": variant, "features": "mmap", "batch_size": batch, "observed_batch_size": batch,
        "steps_per_episode": steps, "model_file_mb": (184.0 if model == "lstm" else 12.0)
        * VARIANT_COSTS.get(variant, (1.0, 1.0))[1],
        "load_time_ms": 900.0, "cold_batch_ms": p50 * 1.8, "iterations": iterations, "loop_wall_s": iterations * p50 / 1e3,
        "latency_mean_ms": p50 * 1.02, "latency_std_ms": p50 * 0.04, "latency_min_ms": p50 * 0.95,
        "latency_p50_ms": p50, "latency_p50_ci_low_ms": p50 * 0.97, "latency_p50_ci_high_ms": p50 * 1.04,
        "latency_p50_ci_half_width": 0.035, "flag_ci_wide": False, "load_avg_before": 0.4, "load_avg_after": 1.2,
        "host_other_cpu_cores": 0.05,
        "flag_busy_host": False, "workload": "expert", "architecture": model, "cost_only": False,
        "latency_p90_ms": p50 * 1.08, "latency_p95_ms": p50 * 1.12, "latency_p99_ms": p50 * 1.2,
        "latency_max_ms": p50 * 1.3, "latency_iqr_ms": p50 * 0.05, "step_latency_p50_ms": p50 / steps,
        "sample_latency_p50_ms": p50 / batch, "throughput_samples_per_s": batch * 1e3 / p50,
        "throughput_steps_per_s": batch * steps * 1e3 / p50, "flag_low_n_p90": iterations < 64,
        "flag_low_n_p99": True, "flag_wide_spread": False, "latencies_ms": list(rng.normal(p50, p50 * 0.03, 8)),
        "peak_rss_mb": peak, "peak_memory_mb": peak, "peak_rss_inference_mb": peak * 0.9, "rss_trace_mb": [peak] * 8,
        "leak_rss_slope_mb_per_iter": float(rng.normal(0, 0.01)), "leak_flag": False,
        "power_method": host.power or "none", "flops_per_step": 9.2e7 * batch, "weight_bytes_per_step": 1.8e8,
        "roofline_peak_gflops": 90.0 / host.speed, "roofline_bandwidth_gbps": 12.0 / host.speed,
        "roofline_fraction": min(1.0, 0.02 * batch ** 0.7),
    }
    if host.power:
        mean_power = 7.5 if device == "cuda" else 5.2
        row.update(power_scope="jetson_vdd_in", idle_power_w=3.1, mean_power_w=mean_power,
                   energy_per_sample_j=mean_power * p50 / 1e3 / batch,
                   energy_per_sample_above_idle_j=(mean_power - 3.1) * p50 / 1e3 / batch)
    else:
        row["power_unavailable_reason"] = ("jtop: not a Jetson; nvml: no NVIDIA driver; "
                                           "rapl: /sys/class/powercap/intel-rapl:0/energy_uj permission denied")
    return row | host.extra


def failure(row: dict, status: str, error: str) -> dict:
    keep = {k: row[k] for k in ("schema_version", "run_id", "ts_utc", "host", "device", "model", "variant",
                                "features", "batch_size", "cpu_model", "torch_version", "git_commit")}
    return keep | {"status": status, "error": error}


def write(table: str, row_or_rows, path: Path) -> None:
    rows = row_or_rows if isinstance(row_or_rows, list) else [row_or_rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(bench_schema.to_arrow(table, rows), path, **bench_schema.PARQUET_OPTIONS)


def write_host(bench_dir: Path, host: Host, seed: int = 0) -> int:
    """Write every cell of a host (the last batch of fp16 on cuda as an OOM, bf16 on cuda
    skipped, one CPU cell with an error message holding HTML, lstm fp16's last batch on CPU
    measured on a busy host without reaching its interval's target), its capacity and
    roofline rows. Returns the number of cell files."""
    rng = np.random.default_rng(seed)
    when = dt.datetime(2026, 11, 28, 9, 0, tzinfo=dt.timezone.utc)
    paths, rows = [], []
    for device in host.devices:
        write("roofline", {"host": host.name, "device": device, "status": "ok", "matmul_gflops": 90.0,
                           "memory_bandwidth_gbps": 12.0}, bench_dir / host.folder / "roofline" / f"{device}.parquet")
        for model in host.models:
            for variant in host.variants:
                for batch in host.batches:
                    row = cell_row(host, device, model, variant, batch, rng, when)
                    if device == "cuda" and variant == "bf16":
                        row = failure(row, "skipped", "bf16 is not supported on this GPU (compute capability 8.7 lacks it in this torch build)")
                    elif device == "cuda" and variant == "fp16" and batch == max(host.batches):
                        row = failure(row, "oom", EVIL_ERROR)
                    elif device == "cpu" and model == "transformer" and variant == "bf16" and batch == 8:
                        row = failure(row, "error", "RuntimeError: <bf16> kernel missing for 'aten::_lstm' & co")
                    elif device == "cpu" and model == "lstm" and variant == "fp16" and batch == max(host.batches):
                        row.update(flag_busy_host=True, load_avg_before=3.1, host_other_cpu_cores=1.4, flag_ci_wide=True,
                                   latency_p50_ci_half_width=0.09)
                    paths.append(bench_dir / host.folder / "cells" / model / variant / device / "mmap" / f"b{batch}.parquet")
                    rows.append(row)
                write_capacity(bench_dir, host, device, model, variant)
    table = bench_schema.to_arrow("cells", rows)  # one conversion, then one single-row file per cell
    for index, path in enumerate(paths):
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(index, 1), path, **bench_schema.PARQUET_OPTIONS)  # as the bench rule writes them
    return len(paths)


def write_capacity(bench_dir: Path, host: Host, device: str, model: str, variant: str) -> None:
    slope, intercept = 38.0, (520 if model == "lstm" else 380) * (0.45 if variant == "int8_dynamic" else 1.0)
    rows = []
    for name, budget_mb in (("jetson-4gb", 4000.0), ("jetson-8gb", 8000.0), ("host", host.ram_total_mb)):
        rows.append({
            "host": host.name, "device": device, "status": "ok", "model": model, "variant": variant,
            "features": "mmap", "budget_name": name, "budget_mb": budget_mb, "fit_points": 4,
            "fit_batches": [1, 2, 4, 8], "fit_slope_mb_per_sample": slope, "fit_intercept_mb": intercept,
            "predicted_max_batch": int((budget_mb - intercept) // slope), "measured": name == "jetson-4gb",
            "measured_max_batch": int((budget_mb - intercept) // slope) - 2 if name == "jetson-4gb" else None,
        })
    write("capacity", rows, bench_dir / host.folder / "capacity" / model / variant / f"{device}.parquet")


def write_model_tables(models_dir: Path, models=("lstm", "transformer"),
                       variants=VARIANT_NAMES) -> tuple[list[Path], list[Path], list[Path]]:
    """Eval tables (one row, as alfred_edge.quantize.eval_table writes it; bf16 of the
    transformer unavailable) and training logs (one row per epoch, and one per logged step of
    30 an epoch, as alfred_edge.train writes them). -> (eval, epoch, step tables)."""
    evals, epoch_logs, step_logs = [], [], []
    for model in models:
        fp32_mb = 184.0 if model == "lstm" else 12.0
        for index, variant in enumerate(variants):
            path = models_dir / model / f"{variant}.eval.parquet"
            path.parent.mkdir(parents=True, exist_ok=True)
            ratio = VARIANT_COSTS.get(variant, (1.0, 1.0))[1]
            accuracy = 0.93 - 0.004 * index
            row = {"model": model, "variant": variant, "status": "ok", "reason": "",
                   "file_size_bytes": fp32_mb * ratio * 1e6, "file_size_mb": fp32_mb * ratio, "size_ratio": ratio,
                   "engine": "x86" if variant == "int8_dynamic" else "", "eval_device": "cpu",
                   "accuracy_valid_seen": accuracy, "accuracy_valid_unseen": accuracy - 0.05,
                   "action_f1_valid_seen": 0.8, "action_f1_valid_unseen": 0.74, "mask_iou_valid_seen": 0.55}
            if model == "transformer" and variant == "bf16":
                row.update(status="unavailable", reason="bf16 <LSTMCell> not supported & emulated",
                           accuracy_valid_seen=float("nan"), accuracy_valid_unseen=float("nan"))
            pq.write_table(pa.Table.from_pylist([row]), path)
            evals.append(path)
        epochs = np.arange(1, 4)
        path = models_dir / model / "train_metrics.parquet"
        pq.write_table(pa.table({
            "epoch": epochs, "train/loss": 2.0 / epochs, "train_seconds": 30.0 * epochs,
            "valid_seen/loss": 2.2 / epochs, "valid_unseen/loss": 2.4 / epochs,
            "valid_seen/action_acc": 0.6 + 0.1 * epochs, "valid_unseen/action_acc": 0.55 + 0.1 * epochs,
            "eval_seconds": 5.0 * epochs,
        }), path)
        epoch_logs.append(path)
        step = np.tile(np.arange(1, 31), 3)
        epoch = np.repeat(epochs, 30)
        progress = epoch - 1 + step / 30
        path = models_dir / model / "train_steps.parquet"
        pq.write_table(pa.table({
            "epoch": epoch, "step": step, "steps_in_epoch": np.full(90, 30), "samples": 8 * np.arange(1, 91),
            "train/loss": 2.0 / (0.5 + progress) + np.random.default_rng(len(model)).normal(0, 0.05, 90),
            "seconds": progress * 30.0,
        }), path)
        step_logs.append(path)
    return evals, epoch_logs, step_logs


STORAGE_PLAN = """# Storage plan (budget 16 GB)

| stage | size GB |
|---|---|
| raw | 1.20 |
| subset | 1.20 |
| store | 0.31 |
| models | 0.40 |
| results | 0.01 |
"""


# Latency per backend against eager PyTorch's, and the file each runs (ONNX beside the .pt).
BACKENDS = {"eager": (1.0, "torch", 1.0), "onnxruntime": (0.55, "cpu", 1.02)}


def runtime_results(host: Host, variants=("fp32", "int8_dynamic", "int8_static", "lowrank", "pruned",
                                          "lowrank+int8_dynamic"), backends=tuple(BACKENDS), seed: int = 0):
    """A results table of lstm, transformer and the cost-only COST_ONLY_MODEL with the runtimes
    issue's variants on two backends, host.batches on CPU, and the eval rows beside it (with
    backend; the cost-only model's without accuracy). -> (cells, evals) as DataFrames."""
    from alfred_edge.report import aggregate
    from alfred_edge.variants import COST_ONLY

    rng, when = np.random.default_rng(seed), dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc)
    cells, evals = [], []
    for model in ("lstm", "transformer", COST_ONLY_MODEL):
        cost_only = model == COST_ONLY_MODEL
        for variant in variants:
            speed, size, change = VARIANT_COSTS[variant]
            for backend, (backend_speed, provider, backend_size) in BACKENDS.items():
                if backend not in backends:
                    continue
                accuracy = None if cost_only else {"lstm": 0.93, "transformer": 0.88}[model] + change / 100
                file_mb = {"lstm": 18.4, "transformer": 12.0}.get(model, 460.0) * size * backend_size
                for batch in host.batches:
                    row = cell_row(host, "cpu", model, variant, batch, rng, when)
                    for column in ("latency_p50_ms", "latency_p50_ci_low_ms", "latency_p50_ci_high_ms",
                                   "sample_latency_p50_ms"):
                        row[column] *= backend_speed
                    row.update(throughput_samples_per_s=batch * 1e3 / row["latency_p50_ms"], backend=backend,
                               provider=provider, cost_only=cost_only, model_file_mb=file_mb,
                               accuracy_valid_seen=accuracy, accuracy_valid_unseen=accuracy and accuracy - 0.05)
                    cells.append(row)
                evals.append({"model": model, "variant": variant, "backend": backend, "status": "ok",
                              "reason": COST_ONLY if cost_only else "", "file_size_mb": file_mb, "size_ratio": size,
                              "accuracy_valid_seen": accuracy, "accuracy_valid_unseen": accuracy and accuracy - 0.05})
    table = pa.Table.from_pylist(cells, schema=aggregate.results_schema())
    return table.to_pandas(types_mapper=aggregate.nullable_type), pa.Table.from_pylist(evals).to_pandas()
