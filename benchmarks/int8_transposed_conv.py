"""Issue 22's third item, "int8 for the mask decoder's transposed convolutions": are torch.ao's
static int8 transposed convolutions right and faster than float32 here? Each of the mask
decoder's transposed convolutions at ALFRED's size (its inference form's three, and ALFRED's
form's first two, which upsample before them), by each quantized engine this torch has,
against float32 (oneDNN, channels-last, as the model runs them). Printed, not asserted.

- error: max |int8 - float32| / max |float32|, the float32 convolution run on the same
  quantized input with the same int8 weights dequantized, the output's range its min-max (no
  clipping): what is left is the kernel's own error, a few hundredths at most when it is right;
- speed: the median over rounds of each round's median call, the kinds taking turns round by
  round, at batch 1 and 8.

    python benchmarks/int8_transposed_conv.py [--rounds 5] [--repeats 20]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch
from torch.nn import functional as F

from alfred_edge.models.lstm import MaskDecoder
from host_load import host_load

BATCHES = (1, 8)


def convolutions() -> dict:
    """{name: (weight [in,out,k,k], bias, stride, padding, input size)} at ALFRED's size."""
    torch.manual_seed(0)
    decoder = MaskDecoder(4648).eval()
    return {
        "conv3 folded 64>32 k6 s4, 7x7": (decoder.conv3_weight, decoder.conv3_bias, 4, 1, 7),
        "conv2 folded 32>16 k6 s4, 28x28": (decoder.conv2_weight, decoder.conv2_bias, 4, 1, 28),
        "dconv1 16>1 k4 s2, 112x112": (decoder.dconv1.weight, decoder.dconv1.bias, 2, 1, 112),
        "dconv3 64>32 k4 s2, 14x14": (decoder.dconv3.weight, decoder.dconv3.bias, 2, 1, 14),
        "dconv2 32>16 k4 s2, 56x56": (decoder.dconv2.weight, decoder.dconv2.bias, 2, 1, 56),
    }


def int8_convolution(engine: str, weight, bias, stride: int, padding: int, x):
    """(int8 module, its quantized input, its float32 reference output), packed for `engine`."""
    import torch.ao.nn.quantized as nnq

    torch.backends.quantized.engine = engine
    qweight = torch.quantize_per_tensor(weight, float(weight.abs().max()) / 127, 0, torch.qint8)
    qx = torch.quantize_per_tensor(x, float(x.max()) / 255, 0, torch.quint8)
    reference = F.conv_transpose2d(qx.dequantize(), qweight.dequantize(), bias, stride=stride, padding=padding)
    conv = nnq.ConvTranspose2d(weight.shape[0], weight.shape[1], weight.shape[-1], stride=stride, padding=padding)
    conv.set_weight_bias(qweight, bias)
    low, high = float(reference.min()), float(reference.max())
    conv.scale = (high - min(low, 0.0)) / 255
    conv.zero_point = round(-min(low, 0.0) / conv.scale)
    return conv, qx, reference


def on_engine(engine: str, conv, qx):
    torch.backends.quantized.engine = engine
    return conv(qx)


def median_call_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


@torch.inference_mode()
def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message=r".*(deprecated|quantized tensor creation).*")
    torch.set_num_threads(args.threads)
    engines = [e for e in ("x86", "onednn", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines]
    print(f"before: {host_load()}; torch {torch.__version__}, {args.threads} threads, engines {', '.join(engines)}")
    layers = convolutions()
    kinds, errors = {}, {}  # (conv, batch, kind): call; (conv, engine): relative error, the worse batch's
    for name, (weight, bias, stride, padding, size) in layers.items():
        for batch in BATCHES:
            x = torch.rand(batch, weight.shape[0], size, size).contiguous(memory_format=torch.channels_last)
            kinds[(name, batch, "float32")] = (lambda x=x, w=weight, b=bias, s=stride, p=padding:
                                               F.conv_transpose2d(x, w, b, stride=s, padding=p))  # fmt: skip
            for engine in engines:
                conv, qx, reference = int8_convolution(engine, weight, bias, stride, padding, x)
                out = on_engine(engine, conv, qx).dequantize()
                error = float((out - reference).abs().max() / reference.abs().max())
                errors[(name, engine)] = max(error, errors.get((name, engine), 0.0))
                kinds[(name, batch, f"int8 {engine}")] = lambda conv=conv, qx=qx, e=engine: on_engine(e, conv, qx)
    times = {key: [] for key in kinds}
    for _ in range(args.rounds + 1):  # the first round warms up
        for key, fn in kinds.items():
            times[key].append(median_call_ms(fn, args.repeats))
    medians = {key: statistics.median(values[1:]) for key, values in times.items()}
    labels = ["float32"] + [f"int8 {e}" for e in engines]
    print(f"\nms a call, median of {args.rounds} rounds (x float32); error: max |int8 - float32| / max |float32|")
    for name in layers:
        print(f"  {name}")
        for batch in BATCHES:
            base = medians[(name, batch, "float32")]
            cells = [f"{label} {medians[(name, batch, label)]:.2f} ({medians[(name, batch, label)] / base:.2f}x)"
                     for label in labels]  # fmt: skip
            print(f"    batch {batch}: " + ", ".join(cells))
        print("    error: " + ", ".join(f"{e} {errors[(name, e)]:.3f}" for e in engines))
    print(f"after: {host_load()}")


if __name__ == "__main__":
    main()
