"""Roofline: once per host and device, a short measurement of fp32 matmul throughput and
memory bandwidth; per cell (RooflineTracker), the FLOPs and weight bytes of one decoder
step, the roof they imply and the fraction of it the cell achieved. A step's bytes are the
weights it reads (step_weight_bytes): not the language encoder's, read once per episode, and
the mask decoder's only on the steps that decode a mask."""
from __future__ import annotations

import time

from alfred_edge.bench.harness import LatencyTracker, Tracker


def measure(torch, device: str, matmul_size: int, copy_mb: float, seconds: float) -> dict:
    """Best-of-repeats GFLOP/s of an n x n fp32 matmul and GB/s of a buffer copy
    (copy_bandwidth), each repeated for about `seconds`. GB = 1e9 bytes."""
    dev = torch.device(device)
    start = time.perf_counter()
    a = torch.randn(matmul_size, matmul_size, device=dev)
    b = torch.randn(matmul_size, matmul_size, device=dev)
    flops = 2.0 * matmul_size ** 3
    gflops = _best_rate(lambda: torch.mm(a, b), _sync(torch, dev), flops / 1e9, seconds)
    gbps = copy_bandwidth(torch, device, copy_mb, seconds)
    return {"matmul_size": matmul_size, "matmul_gflops": gflops, "memory_bandwidth_gbps": gbps,
            "copy_mb": _copy_floats(copy_mb) * 4 / 1e6, "measure_s": time.perf_counter() - start}


def copy_bandwidth(torch, device: str, copy_mb: float, seconds: float) -> float:
    """Best-of-repeats GB/s of a copy of a `copy_mb` fp32 buffer (bytes read + written),
    repeated for about `seconds`."""
    dev = torch.device(device)
    n = _copy_floats(copy_mb)
    src, dst = torch.ones(n, device=dev), torch.empty(n, device=dev)
    return _best_rate(lambda: dst.copy_(src), _sync(torch, dev), 2 * n * 4 / 1e9, seconds)


def _copy_floats(copy_mb: float) -> int:
    return int(copy_mb * 1e6 / 4)


def _sync(torch, dev):
    return torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)


def _best_rate(fn, sync, work: float, seconds: float) -> float:
    fn()
    sync()
    best = float("inf")
    deadline = time.perf_counter() + seconds
    repeats = 0
    while repeats < 3 or time.perf_counter() < deadline:
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
        repeats += 1
    return work / best


def episode_flops(torch, model, lang, lang_lengths, frames) -> dict:
    """FLOPs of `model` on the batch's first episode, counted by torch.utils.flop_counter:
    "encode" (the language), "step" (one decoder step after the first, without its mask) and
    "mask" (one mask: the step with a mask minus the same step, on a copy of its state,
    without). Every op of these models works per episode, so a cell scales them by its batch
    (cell_flops). Matmuls and convolutions are counted, elementwise ops are not: a lower
    bound. The counter's first use imports torch._dynamo and sympy, which takes seconds, so
    the pipeline counts once per model (rule bench_flops), not in every cell."""
    import copy

    from torch.utils.flop_counter import FlopCounterMode

    lang, lang_lengths, frames = lang[:1, :int(lang_lengths[0])], lang_lengths[:1], frames[:1]

    def counted(fn):  # -> (fn's result, its FLOPs)
        with FlopCounterMode(display=False) as counter:
            result = fn()
        return result, float(counter.get_total_flops())

    with torch.inference_mode():
        state, encode = counted(lambda: model.encode(lang, lang_lengths))
        logits, _, state = model.step(state, frames[:, 0], None, with_mask=False)
        frame, action = frames[:, min(1, frames.shape[1] - 1)], logits.argmax(1)
        _, with_mask = counted(lambda: model.step(copy.deepcopy(state), frame, action, with_mask=True))
        _, step = counted(lambda: model.step(state, frame, action, with_mask=False))
    return {"encode": encode, "step": step, "mask": with_mask - step}


def cell_flops(counts: dict, batch_size: int, masks_per_step: float) -> dict:
    """A cell's FLOP columns from episode_flops: encode and step for the whole batch, the
    step's masks at the rate the decode chose them (rows with a mask, per step)."""
    return {"encode_flops": counts["encode"] * batch_size, "mask_flops": counts["mask"],
            "flops_per_step": counts["step"] * batch_size + masks_per_step * counts["mask"]}


def cell_columns(flops_per_step: float | None, weight_bytes: float | None, step_latency_ms: float | None,
                 peak_gflops: float | None, bandwidth_gbps: float | None) -> dict:
    """Per-cell roofline columns; None where an input is missing."""
    if None in (flops_per_step, weight_bytes, step_latency_ms, peak_gflops, bandwidth_gbps) or weight_bytes <= 0:
        return {"roofline_peak_gflops": peak_gflops, "roofline_bandwidth_gbps": bandwidth_gbps}
    intensity = flops_per_step / weight_bytes
    memory_roof = intensity * bandwidth_gbps
    attainable = min(peak_gflops, memory_roof)
    achieved = flops_per_step / (step_latency_ms * 1e-3) / 1e9
    return {
        "arithmetic_intensity_flop_per_byte": intensity,
        "roofline_peak_gflops": peak_gflops,
        "roofline_bandwidth_gbps": bandwidth_gbps,
        "roofline_bound": "memory" if memory_roof < peak_gflops else "compute",
        "roofline_attainable_gflops": attainable,
        "achieved_gflops": achieved,
        "roofline_fraction": achieved / attainable if attainable > 0 else None,
    }


class RooflineTracker(Tracker):
    """A cell's FLOPs and weight bytes per step (flop_columns) and, with the host's roofline
    row (spec "roofline_host", the bench_roofline job's), the roof they imply and the
    fraction of it the cell reached at its p50 step latency (`latency`'s columns)."""

    def __init__(self, spec: dict, workload, latency: LatencyTracker, torch_module):
        self.spec, self.workload, self.latency, self._torch = spec, workload, latency, torch_module

    def columns(self) -> dict:
        cols = flop_columns(self.spec, self.workload, self._torch)
        host = self.spec.get("roofline_host")
        if host:
            cols.update(cell_columns(cols.get("flops_per_step"), cols.get("weight_bytes_per_step"),
                                     self.latency.columns()["step_latency_p50_ms"], host.get("matmul_gflops"),
                                     host.get("memory_bandwidth_gbps")))
        return cols


def tensor_bytes(value) -> int:
    """Bytes of the tensors in `value` (a tensor, quantized ones included, or nested tuples,
    lists and dicts of them)."""
    if hasattr(value, "element_size") and hasattr(value, "numel"):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        value = value.values()
    return sum(tensor_bytes(v) for v in value) if isinstance(value, (tuple, list, type({}.values()))) else 0


def module_bytes(module) -> int:
    """Bytes of the weights a module holds itself (not its children's): its parameters and
    buffers, and a dynamically quantized module's packed weights (_weight_bias), counted by
    the module that packs them (a quantized Linear's come from its _packed_params child)."""
    own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
    packs = hasattr(module, "_weight_bias") and not any(hasattr(c, "_weight_bias") for c in module.children())
    return tensor_bytes(own) + (tensor_bytes(module._weight_bias()) if packs else 0)


def step_weight_bytes(model) -> tuple[float, float]:
    """(bytes a decoder step reads without a mask, bytes of the mask decoder): every weight of
    the model at its stored precision, less the modules only encode reads (the model's
    ENCODE_ONLY) and the mask decoder (MASK_DECODER), which a step reads only when one of its
    rows decodes a mask. A module shared by two names (the tied action embedding) counts once."""
    skipped = {name: [m for m in model.get_submodule(name).modules()]
               for name in (*model.ENCODE_ONLY, model.MASK_DECODER)}
    left_out = {id(m) for modules in skipped.values() for m in modules}
    step = sum(module_bytes(m) for m in model.modules() if id(m) not in left_out)
    return float(step), float(sum(module_bytes(m) for m in skipped[model.MASK_DECODER]))


def flop_columns(spec: dict, workload, torch) -> dict:
    """FLOPs of one step (see episode_flops): the spec's counts ("flops", from the
    pipeline's bench_flops job) or, without them, counted here on the fp32 architecture on
    the CPU (quantized kernels are invisible to the FLOP counter; the arithmetic is the
    same). It loads another copy of the model: the cell's memory figures are taken before."""
    if spec["model"] == "identity":
        return {}
    counts = spec.get("flops")
    if counts is None:
        from alfred_edge.bench.workloads import load_model_file

        model = workload.model.float().cpu() if spec["model"] == "fake" else load_model_file(spec["fp32_path"], "cpu")
        lang, lang_lengths, frames = workload.inputs[0][:3]
        counts = episode_flops(torch, model, lang.cpu(), lang_lengths.cpu(), frames[:, :2].float().cpu())
    masks_per_step = workload.mask_rows * workload.batch_size / workload.step_rows  # rows with a mask, per step
    return {**cell_flops(counts, spec["batch_size"], masks_per_step), **byte_columns(workload)}


def byte_columns(workload) -> dict:
    """The weight bytes of one step: those every step reads, plus the mask decoder's at the rate
    of the steps that decoded a mask (whatever their number of rows). A model without the
    split (the harness's fake) counts all its weights."""
    model = workload.model
    if hasattr(model, "graph_weight_bytes"):  # a backend that runs graphs, not modules
        step, mask = model.graph_weight_bytes()
    elif not hasattr(model, "MASK_DECODER"):
        return {"weight_bytes_per_step": float(tensor_bytes(list(model.state_dict().values())))}
    else:
        step, mask = step_weight_bytes(model)
    rate = workload.mask_steps / workload.steps if workload.steps else 0.0
    return {"weight_bytes_per_step": step + rate * mask, "step_weight_bytes": step, "mask_decoder_weight_bytes": mask,
            "mask_step_fraction": rate}
