"""The measuring process of one job (`python -m alfred_edge.bench.child KIND SPEC RESULT`),
started by runner.py. It imports torch, measures, and writes its columns as JSON to RESULT;
every exception becomes a status (oom, skipped, error) in that JSON. What it cannot report
itself (a SIGKILL, a timeout, a passed RAM limit) the parent reads from its exit."""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

from alfred_edge import atomic
from alfred_edge.bench import environment, memory, roofline
from alfred_edge.bench.harness import HostLoadTracker, LatencyTracker, LoopSettings, time_call, tracked_loop
from alfred_edge.bench.memory import MemoryTracker
from alfred_edge.bench.power import PowerTracker
from alfred_edge.bench.roofline import RooflineTracker
from alfred_edge.variants import VariantUnavailable

ERROR_CHARS = 2000


def main(argv: list[str]) -> int:
    kind, spec_path, result_path = argv
    spec = json.loads(Path(spec_path).read_text())
    import torch

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)  # decoding is sequential: one inter-op thread
    precision = ieee_fp32(torch, spec["device"])
    result = {}
    try:
        result = measure_function(kind)(spec, torch)
        result.setdefault("status", "ok")
    except BaseException as exc:  # every outcome becomes a row
        result = {**result, **failure_columns(exc, torch)}
    result.update(precision)
    result.update(environment.host_profile(spec["host"], torch))
    result["device_name"] = environment.device_name(spec["device"], torch)
    atomic.write_text(result_path, json.dumps(result, default=float))
    return 0


def ieee_fp32(torch, device: str) -> dict:
    """On cuda, float32 arithmetic in IEEE float32: TF32 off for matmuls and for cuDNN, whose
    convolutions use TF32 by default on Ampere and later (Orin included), so that an fp32
    cell and the roofline's fp32 matmul measure float32. Returns the flags as set, for the
    row; null on cpu, where they change nothing."""
    if device != "cuda":
        return {"cuda_matmul_allow_tf32": None, "cudnn_allow_tf32": None}
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return {"cuda_matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
            "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32}


def measure_function(kind: str):
    if kind == "capacity":
        from alfred_edge.bench.capacity import measure_search  # with the parent's half: only for this job

        return measure_search
    return {"cell": measure_cell, "roofline": measure_roofline, "flops": measure_flops}[kind]


def failure_columns(exc: BaseException, torch) -> dict:
    from alfred_edge.bench.workloads import DeviceAbsent

    if isinstance(exc, (DeviceAbsent, VariantUnavailable)):
        return {"status": "skipped", "error": str(exc)}
    # torch.cuda's name, there since torch 1.13: torch.OutOfMemoryError came in April 2024
    # (pytorch#121702), so wheels built from an older tree lack it
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return {"status": "oom", "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": "error", "error": f"{type(exc).__name__}: {exc}\n{text[-ERROR_CHARS:]}"[:2 * ERROR_CHARS]}


# --- FLOPs of a model (the pipeline's bench_flops job) ---------------------------------


def measure_flops(spec: dict, torch) -> dict:
    """roofline.episode_flops of the model on the first episode of every cell's pool,
    counted once per model by the bench_flops job, in a child so that it runs with the
    configured interpreter (bench.python) as the cells do."""
    from alfred_edge.bench import workloads

    model = workloads.load_model_file(spec["model_path"], "cpu")
    first = workloads.store_batches(spec["store_dir"], 1, 2, "mmap")[0]
    return {"flops": roofline.episode_flops(torch, model, first["lang"], first["lang_lengths"], first["frames"].float())}


# --- one cell ----------------------------------------------------------------------------


def measure_cell(spec: dict, torch) -> dict:
    """The scenario (harness.py) of one cell: load, cold batch, warm-up, then the timed loop
    with the trackers around it; the row is the columns of each."""
    from alfred_edge.bench.workloads import check_device, make_workload

    check_device(spec["device"])
    row: dict = {"rss_baseline_mb": memory.rss_mb()}
    workload = make_workload(spec, spec["batch_size"], spec["max_steps"])
    row["load_time_ms"] = time_call(workload.load, workload.sync) * 1e3
    workload.prepare()
    row["rss_after_load_mb"] = memory.rss_mb()
    row["steps_per_episode"] = workload.steps_per_episode
    row["cold_batch_ms"] = time_call(workload.run_batch, workload.sync) * 1e3
    loop = LoopSettings(**spec["loop"])
    for _ in range(loop.warmup_iterations):
        workload.run_batch()
    row["warmup_iterations"] = loop.warmup_iterations

    latency = LatencyTracker(workload, spec["batch_size"], loop.ci_half_width)
    # Started in this order, stopped in the reverse: the power window closes right after the
    # loop; the roofline's FLOP count, which may load another model copy, comes after the
    # memory figures.
    trackers = [MemoryTracker(torch, spec["device"]), PowerTracker(spec["device"], spec["power"], spec["batch_size"]),
                HostLoadTracker(spec["threads"]), latency, RooflineTracker(spec, workload, latency, torch)]
    tracked_loop(workload, loop, trackers)
    for tracker in trackers:
        row.update(tracker.columns())
    return row


# --- roofline ----------------------------------------------------------------------------


def measure_roofline(spec: dict, torch) -> dict:
    from alfred_edge.bench.workloads import check_device

    check_device(spec["device"])
    r = spec["roofline"]
    return roofline.measure(torch, spec["device"], r["matmul_size"], r["copy_mb"], r["seconds"])


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is written: skip the interpreter's teardown, which after torch is slow, comes
    # once per cell and measures nothing.
    os._exit(exit_code)
