"""Where issue 22's fp32 bound is lost: the rate at which each runtime streams the weights of
one batch-1 product alone (the step's largest, the lstm's LSTMCell input weights at ALFRED's
size, 4096 x 3624, 59 MB), beside the copy bandwidth the bound divides by and a plain read of
the same bytes (torch's sum), with 1 and 2 threads. Set against backend_step_speed.py's whole
step (five products and about 35 small operators, 114 MB), it says how much of the gap is the
product's kernel and how much the rest of the step. GB/s = weight bytes / median time; the
copy counts bytes read + written, as bench/roofline.py does. A matrix read over and over may
keep part of itself in the L3 cache (32 MB on one VM here, 105 MB on another: lscpu), so these
rates are upper figures. Printed, not asserted.

The kinds take turns round by round (this VM's memory bandwidth moves from minute to minute);
each round times `--repeats` calls of each; the figure is the median over rounds.

    python benchmarks/gemv_rate.py [--rounds 9] [--repeats 30]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
import yaml

from alfred_edge.backends.onnx_export import OPSET
from alfred_edge.bench import roofline
from host_load import host_load, last_level_cache
from untrained_models import REPO

IN, OUT = 3624, 4096  # ALFRED's LSTMCell: input dframe + 2 * dhid + demb, gates 4 * 2 * dhid


def onnxruntime_matmul(weight_in_out: np.ndarray, threads: int):
    """An ONNX Runtime session of MatMul(x, W) with W a constant [in,out], the layout the
    export writes."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "gemv",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, IN])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, OUT])],
                              [numpy_helper.from_array(weight_in_out, "W")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def with_threads(threads: int, fn):
    def run():
        torch.set_num_threads(threads)
        fn()
    return run


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    print(f"before: {host_load()}; {last_level_cache()}; torch {torch.__version__}")
    copy_mb = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["bench"]["roofline"]["copy_mb"]
    linear = torch.nn.Linear(IN, OUT)
    weight, x = linear.weight.detach(), torch.randn(1, IN)
    feeds = {"x": x.numpy()}
    sessions = {threads: onnxruntime_matmul(weight.t().contiguous().numpy(), threads) for threads in (1, 2)}
    n = int(copy_mb * 1e6 / 4)
    src, dst = torch.ones(n), torch.empty(n)
    kinds = {}  # name: (function, bytes it moves)
    for threads in (1, 2):
        kinds[f"copy, {threads} thread(s) (read + written)"] = (with_threads(threads, lambda: dst.copy_(src)), 2 * n * 4)
        kinds[f"read (torch sum), {threads} thread(s)"] = (with_threads(threads, weight.sum), weight.nbytes)
        kinds[f"onnxruntime MatMul, {threads} thread(s)"] = (lambda s=sessions[threads]: s.run(None, feeds), weight.nbytes)
        kinds[f"eager F.linear, {threads} thread(s)"] = (with_threads(threads, lambda: linear(x)), weight.nbytes)
    rates = {name: [] for name in kinds}
    for _ in range(args.rounds):
        for name, (fn, nbytes) in kinds.items():
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            rates[name].append(nbytes / statistics.median(times) / 1e9)
    print(f"\nGB/s, median over {args.rounds} rounds (range); weights {weight.nbytes / 1e6:.1f} MB, copy {copy_mb} MB:")
    for name, values in rates.items():
        print(f"  {name:40s} {statistics.median(values):6.1f} ({min(values):.1f}-{max(values):.1f})")
    torch.set_num_threads(2)  # as the benchmark's default bench.threads
    best = roofline.copy_bandwidth(torch, "cpu", copy_mb, 0.5)
    print(f"  the roofline's copy bandwidth now (best of 0.5 s, 2 threads): {best:.1f}")
    print(f"after: {host_load()}")


if __name__ == "__main__":
    main()
