"""Issue 22's third item, "int8 for the mask decoder's transposed convolutions": are torch.ao's
static int8 transposed convolutions right and faster than float32 here? Each of the mask
decoder's transposed convolutions at ALFRED's size (its inference form's three, and ALFRED's
form's first two, which upsample before them), by each quantized engine this torch has,
against float32 (oneDNN, channels-last, as the model runs them); and, per engine, the form
int8_static runs instead (alfred_edge.quantize.static_int8): the sub-pixel convolution, an
ordinary int8 convolution, then its channels-last depth-to-space shuffle. Printed, not
asserted.

- error: max |int8 - float32| / max |float32|, the float32 convolution run on the same
  quantized input (7-bit, as int8_static's) with the same int8 weights dequantized, the
  output's range its min-max (no clipping): what is left is the kernel's own error, a few
  hundredths at most when it is right;
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
from alfred_edge.quantize.static_int8 import shuffle_channels_last, subpixel_conv
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
    # 7-bit input, as torch.ao's x86 qconfig quantizes activations (reduce_range): without
    # VNNI, x86 kernels add pairs of uint8 x int8 products in int16, which 8 bits saturate
    qx = torch.quantize_per_tensor(x, float(x.max()) / 127, 0, torch.quint8)
    reference = F.conv_transpose2d(qx.dequantize(), qweight.dequantize(), bias, stride=stride, padding=padding)
    conv = nnq.ConvTranspose2d(weight.shape[0], weight.shape[1], weight.shape[-1], stride=stride, padding=padding)
    conv.set_weight_bias(qweight, bias)
    low, high = float(reference.min()), float(reference.max())
    conv.scale = (high - min(low, 0.0)) / 255
    conv.zero_point = round(-min(low, 0.0) / conv.scale)
    return conv, qx, reference


def subpixel_int8(engine: str, transposed, stride: int, padding: int):
    """The sub-pixel form of the int8 transposed convolution `transposed`: the same int8
    weights (the sub-pixel kernel adds zeros only, so its scale is the same) and output scale."""
    import torch.ao.nn.quantized as nnq

    torch.backends.quantized.engine = engine
    qweight = transposed.weight()
    float_conv = subpixel_conv(qweight.dequantize(), transposed.bias(), stride, padding)
    conv = nnq.Conv2d(float_conv.in_channels, float_conv.out_channels, float_conv.kernel_size,
                      padding=float_conv.padding)
    conv.set_weight_bias(torch.quantize_per_tensor(float_conv.weight, qweight.q_scale(), 0, torch.qint8),
                         float_conv.bias)
    conv.scale, conv.zero_point = transposed.scale, transposed.zero_point
    return conv


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
                subpixel = subpixel_int8(engine, conv, stride, padding)
                forms = {f"int8 {engine}": lambda conv=conv, qx=qx, e=engine: on_engine(e, conv, qx),
                         f"sub-pixel {engine}": lambda conv=subpixel, qx=qx, e=engine, s=stride:
                         shuffle_channels_last(on_engine(e, conv, qx), s)}  # fmt: skip
                for label, form in forms.items():
                    error = float((form().dequantize() - reference).abs().max() / reference.abs().max())
                    errors[(name, label)] = max(error, errors.get((name, label), 0.0))
                    kinds[(name, batch, label)] = form
    times = {key: [] for key in kinds}
    for _ in range(args.rounds + 1):  # the first round warms up
        for key, fn in kinds.items():
            times[key].append(median_call_ms(fn, args.repeats))
    medians = {key: statistics.median(values[1:]) for key, values in times.items()}
    print(f"\nms a call, median of {args.rounds} rounds (x float32); error: max |int8 - float32| / max |float32|")
    for name in layers:
        print(f"  {name}")
        for batch in BATCHES:
            base = medians[(name, batch, "float32")]
            print(f"    batch {batch}: float32 {base:.2f}")
            for form in ("int8", "sub-pixel"):
                cells = [f"{e} {medians[(name, batch, f'{form} {e}')]:.2f} "
                         f"({medians[(name, batch, f'{form} {e}')] / base:.2f}x)" for e in engines]  # fmt: skip
                print(f"      {form:9s} " + ", ".join(cells))
        for form in ("int8", "sub-pixel"):
            print(f"    error {form:9s} " + ", ".join(f"{e} {errors[(name, f'{form} {e}')]:.3f}" for e in engines))
    print(f"after: {host_load()}")


if __name__ == "__main__":
    main()
