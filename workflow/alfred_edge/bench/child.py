"""The measuring process of one job (`python -m alfred_edge.bench.child KIND SPEC RESULT`),
started by runner.py. It imports torch, measures, and writes its columns as JSON to RESULT;
every exception becomes a status (oom, skipped, error) in that JSON. What it cannot report
itself (a SIGKILL, a timeout, a passed RAM limit) the parent reads from its exit."""
from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path

from alfred_edge import atomic
from alfred_edge.bench import environment, memory, power, roofline
from alfred_edge.bench.harness import LoopSettings, latency_stats, time_call, timed_loop

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
        measure = {"cell": measure_cell, "roofline": measure_roofline, "capacity": measure_capacity,
                   "flops": measure_flops}[kind]
        result = measure(spec, torch)
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


def failure_columns(exc: BaseException, torch) -> dict:
    from alfred_edge.bench.workloads import DeviceAbsent

    unavailable = _variant_unavailable_class()
    if isinstance(exc, DeviceAbsent) or (unavailable and isinstance(exc, unavailable)):
        return {"status": "skipped", "error": str(exc)}
    # torch.cuda's name, there since torch 1.13: torch.OutOfMemoryError came in April 2024
    # (pytorch#121702), so wheels built from an older tree lack it
    if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) or (
            isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()):
        return {"status": "oom", "error": f"{type(exc).__name__}: {exc}"[:ERROR_CHARS]}
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {"status": "error", "error": f"{type(exc).__name__}: {exc}\n{text[-ERROR_CHARS:]}"[:2 * ERROR_CHARS]}


def _variant_unavailable_class():
    try:
        from alfred_edge.quantize import VariantUnavailable
    except ImportError:  # a standalone checkout without the quantize module
        return None
    return VariantUnavailable


# --- workloads from a spec ---------------------------------------------------------------


def make_workload(spec: dict, batch_size: int, max_steps: int):
    from alfred_edge.bench import workloads

    model, device = spec["model"], spec["device"]
    if model == "identity":
        return workloads.IdentityWorkload(batch_size, device)
    if model == "fake":
        fault = spec.get("fault")
        load = lambda dev: workloads.FakeEpisodeModel(fault=fault).to(dev)  # noqa: E731
        make_batches = lambda: workloads.fake_batches(batch_size, max_steps)  # noqa: E731
    else:
        from alfred_edge.models import model_class

        model_class(model)  # its code imported here, not in the timed load (transformers: seconds)
        load = lambda dev: load_model_file(spec["model_path"], dev)  # noqa: E731
        make_batches = lambda: workloads.store_batches(spec["store_dir"], batch_size, max_steps, spec["features"])  # noqa: E731
    return workloads.EpisodeWorkload(batch_size, device, load, make_batches, max_steps)


def load_model_file(path: str, device):
    """fp32.pt and every variant file load through quantize.load_variant, which raises
    VariantUnavailable (→ skipped) when the variant cannot run on the device here."""
    from alfred_edge.quantize import load_variant

    return load_variant(path, device)


# --- FLOPs of a model (the pipeline's bench_flops job) ---------------------------------


def measure_flops(spec: dict, torch) -> dict:
    """roofline.episode_flops of the model on the first episode of every cell's pool,
    counted once per model by the bench_flops job, in a child so that it runs with the
    configured interpreter (bench.python) as the cells do."""
    from alfred_edge.bench import workloads

    model = load_model_file(spec["model_path"], "cpu")
    first = workloads.store_batches(spec["store_dir"], 1, 2, "mmap")[0]
    return {"flops": roofline.episode_flops(torch, model, first["lang"], first["lang_lengths"], first["frames"].float())}


# --- one cell ----------------------------------------------------------------------------


def measure_cell(spec: dict, torch) -> dict:
    from alfred_edge.bench.workloads import check_device

    check_device(spec["device"])
    row: dict = {"rss_baseline_mb": memory.rss_mb()}
    device_memory = memory.DeviceMemory(torch, spec["device"])
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

    sampler = power.choose_sampler(spec["device"], spec["power"]["interval_s"])
    idle = None
    if not isinstance(sampler, power.NoSampler) and spec["power"]["idle_s"] > 0:
        _, idle = sampler.measure(lambda: time.sleep(spec["power"]["idle_s"]))

    cuda = workload.device.type == "cuda"
    rss_trace, cuda_trace = [], []

    def trace():
        rss_trace.append(memory.rss_mb())
        if cuda:
            cuda_trace.append(torch.cuda.memory_allocated() / memory.MB)

    hwm_before = memory.hwm_mb()
    device_before = device_memory.peak_mb()  # load, cold batch and warm-up
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    workload.start_timing()
    with memory.InferencePeak() as peak:
        result, window = sampler.measure(
            lambda: timed_loop(workload.run_batch, workload.sync, loop, trace, workload.batches_per_pass))
    sampler.close()

    stats = latency_stats(result.latencies_s, result.loop_wall_s, spec["batch_size"], workload.steps_per_episode,
                          result.cpu_s, workload.batches_per_pass)
    row.update(stats)
    row.update(workload.info())
    encode_s = workload.encode_times_s
    if encode_s:
        row["encode_latency_p50_ms"] = float(sorted(encode_s)[len(encode_s) // 2] * 1e3)
    row.update(memory_columns(peak, hwm_before, rss_trace, cuda_trace, torch if cuda else None))
    row.update(total_memory_columns(row["peak_rss_mb"], device_memory, device_before))
    row.update(power.power_columns(sampler, idle, window, stats["iterations"], spec["batch_size"]))
    row.update(flop_columns(spec, workload, torch))
    return row


def memory_columns(peak: memory.InferencePeak, hwm_before, rss_trace, cuda_trace, torch_cuda) -> dict:
    """peak_rss_mb: the whole-life high-water mark (VmHWM before the reset, max the window's)."""
    whole = memory.hwm_mb() if peak.method == "sampled" else max(hwm_before or 0.0, peak.peak_mb or 0.0)
    rss_leak = memory.leak_fit(rss_trace)
    cols = {
        "peak_rss_mb": whole or None,
        "peak_rss_inference_mb": peak.peak_mb,
        "peak_rss_inference_method": peak.method,
        "rss_trace_mb": rss_trace,
        "cuda_trace_mb": cuda_trace,
        "leak_rss_slope_mb_per_iter": rss_leak["slope_mb_per_iter"],
        "leak_rho": rss_leak["rho"],
        "leak_flag": rss_leak["flag"],
    }
    if torch_cuda is not None:
        cuda_leak = memory.leak_fit(cuda_trace, strict=True)
        cols.update({
            "cuda_peak_allocated_mb": torch_cuda.cuda.max_memory_allocated() / memory.MB,
            "cuda_peak_reserved_mb": torch_cuda.cuda.max_memory_reserved() / memory.MB,
            "leak_cuda_slope_mb_per_iter": cuda_leak["slope_mb_per_iter"],
        })
        if cuda_leak["flag"] is not None and rss_leak["flag"] is not None:
            cols["leak_flag"] = rss_leak["flag"] or cuda_leak["flag"]
    return cols


def total_memory_columns(peak_rss_mb: float | None, device_memory: memory.DeviceMemory,
                         device_before_mb: float | None) -> dict:
    """The whole-life peak of the process's GPU-side memory (before and during the timed
    loop) and peak_memory_mb, the RSS and GPU peaks added: what a board's RAM must hold.
    The two peaks may fall at different moments, so their sum bounds the need from above."""
    device_peaks = [mb for mb in (device_before_mb, device_memory.peak_mb()) if mb is not None]
    device_peak = max(device_peaks) if device_peaks else None
    total = None if peak_rss_mb is None else peak_rss_mb + (device_peak or 0.0)
    return {"peak_device_memory_mb": device_peak, "peak_memory_mb": total, "memory_method": device_memory.method}


def flop_columns(spec: dict, workload, torch) -> dict:
    """FLOPs of one step (see roofline.episode_flops): the spec's counts ("flops", from the
    pipeline's bench_flops job) or, without them, counted here on the fp32 architecture on
    the CPU (quantized kernels are invisible to the FLOP counter; the arithmetic is the
    same), after every memory figure was taken, so the extra model copy does not count in
    the peaks."""
    if spec["model"] == "identity":
        return {}
    counts = spec.get("flops")
    if counts is None:
        model = workload.model.float().cpu() if spec["model"] == "fake" else load_model_file(spec["fp32_path"], "cpu")
        lang, lang_lengths, frames = workload.inputs[0]
        counts = roofline.episode_flops(torch, model, lang.cpu(), lang_lengths.cpu(), frames[:, :2].float().cpu())
    masks_per_step = workload.mask_rows * workload.batch_size / workload.step_rows  # rows with a mask, per step
    weight_bytes = float(Path(spec["model_path"]).stat().st_size) if spec.get("model_path") else \
        float(sum(t.numel() * t.element_size() for t in workload.model.state_dict().values()))
    return {**roofline.cell_flops(counts, spec["batch_size"], masks_per_step), "weight_bytes_per_step": weight_bytes}


# --- roofline ----------------------------------------------------------------------------


def measure_roofline(spec: dict, torch) -> dict:
    from alfred_edge.bench.workloads import check_device

    check_device(spec["device"])
    r = spec["roofline"]
    return roofline.measure(torch, spec["device"], r["matmul_size"], r["copy_mb"], r["seconds"])


# --- capacity search ---------------------------------------------------------------------


def measure_capacity(spec: dict, torch) -> dict:
    """Raise the batch (spec batches, in order) in this one process: for each, build the
    batch, encode and run `steps` decoder steps, and append {"batch", "peak_memory_mb",
    "memory_method"} to the progress file (peak RSS plus the GPU-side memory, see
    memory.DeviceMemory). The parent ends this process when its RSS passes the limit; the
    search itself stops after a batch whose peak passed it (GPU memory, which the parent
    does not see), and before a batch that would end after capacity.max_seconds (its time
    is guessed as the last batch's times the growth factor)."""
    from alfred_edge.bench.workloads import check_device

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


if __name__ == "__main__":
    exit_code = main(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    # The result is written: skip the interpreter's teardown, which after torch is slow, comes
    # once per cell and measures nothing.
    os._exit(exit_code)
