"""int8_static on the eager backend: int8_dynamic's layers (Linear, LSTM, LSTMCell: torch.ao
has no static LSTMCell) plus every convolution in torch.ao's static int8 (the visual
encoder's two, with their BatchNorm folded in, and the mask decoder's three transposed
ones), their activations' ranges calibrated on batches of the train store.

torch.ao's int8 transposed convolutions are wrong with oneDNN for each of ours
with more than one output channel, and slower than float32 with fbgemm or qnnpack
(benchmarks/int8_transposed_conv.py); its ordinary int8 convolutions are right and fast. So
each transposed convolution runs as its sub-pixel form: an ordinary convolution that
computes the s x s output phases as channels, then a depth-to-space shuffle of them
(subpixel_conv, shuffle_channels_last). The same function, exactly in float; in int8 the
shuffle moves bytes of one scale, so the int8 tensor flows from the first convolution to the
last and is dequantized once, before the bilinear resize (which stays float: torch's quint8
bilinear is slower than its float one). The convolutions are packed for CONV_ENGINES' engine
(oneDNN on x86), the Linear and LSTM layers for the int8 engine (ENGINES').

    model = quantize_int8_static(float_model, calibration)  # loader batches of the train store
"""
from __future__ import annotations

import copy
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from alfred_edge.models.lstm import MaskDecoder, ResnetVisualEncoder, linear, mask_features
from alfred_edge.quantize.conversions import (
    CONV_ENGINES,
    choose_engine,
    quantize_int8_dynamic,
    quiet_quantization_warnings,
    set_engine,
)


def subpixel_conv(weight, bias, stride: int, padding: int) -> nn.Conv2d:
    """conv_transpose2d(x, weight [in,out,k,k], bias, stride, padding), for k - 2*padding ==
    stride (the output exactly stride x the input), as shuffle_channels_last(conv(x), stride)
    with conv an ordinary convolution of stride*stride*out channels, in the order
    (row phase, column phase, channel). Output pixel s*q + r (phase r) sums input pixels q + d
    with kernel tap t = r + padding - s*d, for the offsets d where that tap exists; the
    convolution's kernel spans those offsets, zero where a phase has no tap."""
    c_in, c_out, k, _ = weight.shape
    if k - 2 * padding != stride:
        raise ValueError(f"a transposed convolution of kernel {k}, stride {stride}, padding {padding} does not "
                         "make exactly stride x its input; its sub-pixel form is not built for that")
    reach = max((stride - 1 + padding) // stride, -(-(k - 1 - padding) // stride))  # the largest |d|
    size = 2 * reach + 1
    phases = weight.new_zeros(stride, stride, c_out, c_in, size, size)
    for ry in range(stride):
        for jy in range(size):
            ty = ry + padding - stride * (jy - reach)
            for rx in range(stride):
                for jx in range(size):
                    tx = rx + padding - stride * (jx - reach)
                    if 0 <= ty < k and 0 <= tx < k:
                        phases[ry, rx, :, :, jy, jx] = weight[:, :, ty, tx].t()
    conv = nn.Conv2d(c_in, stride * stride * c_out, size, padding=reach)
    with torch.no_grad():
        conv.weight.copy_(phases.reshape(-1, c_in, size, size))
        conv.bias.copy_(bias.repeat(stride * stride))
    return conv


def shuffle_channels_last(x, stride: int):
    """[B, s*s*C, H, W] with channels (row phase, column phase, channel) -> [B, C, H*s, W*s]:
    pixel_shuffle for that channel order. On a channels-last tensor (what torch's int8
    convolutions return) one copy of runs of s*C contiguous values, where torch's
    pixel_shuffle copies a quantized tensor value by value."""
    b, channels, h, w = x.shape
    c = channels // (stride * stride)
    rows = x.permute(0, 2, 3, 1).reshape(b, h, w, stride, stride * c).permute(0, 1, 3, 2, 4).contiguous()
    return rows.reshape(b, h * stride, w * stride, c).permute(0, 3, 1, 2)  # channels-last memory


class SubpixelConvs(nn.Module):
    """The mask decoder's convolutions (its inference form: MaskDecoder.inference_form, then
    dconv1) as sub-pixel convolutions, between torch.ao's quantize and dequantize stubs:
    [B,64,7,7] -> [B,1,224,224]. Float until torch.ao converts it."""

    def __init__(self, decoder: MaskDecoder):
        super().__init__()
        stride, padding, last = decoder.FOLDED_STRIDE, decoder.FOLDED_PADDING, decoder.dconv1
        self.strides = (stride, stride, last.stride[0])
        self.quant = torch.ao.quantization.QuantStub()
        self.conv3 = subpixel_conv(decoder.conv3_weight, decoder.conv3_bias, stride, padding)
        self.relu3 = nn.ReLU()
        self.conv2 = subpixel_conv(decoder.conv2_weight, decoder.conv2_bias, stride, padding)
        self.relu2 = nn.ReLU()
        self.conv1 = subpixel_conv(last.weight, last.bias, last.stride[0], last.padding[0])
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):  # x [B,64,7,7]
        s3, s2, s1 = self.strides
        x = shuffle_channels_last(self.relu3(self.conv3(self.quant(x))), s3)  # [B,32,28,28]
        x = shuffle_channels_last(self.relu2(self.conv2(x)), s2)  # [B,16,112,112]
        return self.dequant(shuffle_channels_last(self.conv1(x), s1))  # [B,1,224,224]


class Int8MaskDecoder(nn.Module):
    """MaskDecoder's function with its convolutions in static int8: d1 (as int8_dynamic
    left it), then SubpixelConvs converted by torch.ao, then the bilinear resize."""

    def __init__(self, decoder: MaskDecoder, convs: nn.Module):
        super().__init__()
        self.d1, self.convs, self.pframe = decoder.d1, convs, decoder.pframe
        self.channels = decoder.dconv3.in_channels

    def forward(self, x):  # x [B,d_in]
        x = mask_features(self.d1, x, self.channels)  # [B,64,7,7]
        x = self.convs(x.contiguous(memory_format=torch.channels_last))  # [B,1,224,224]
        return F.interpolate(x, size=(self.pframe, self.pframe), mode="bilinear")  # [B,1,P,P]


class VisualConvs(nn.Module):
    """The visual encoder's convolutions, each with its BatchNorm and ReLU (which torch.ao
    fuses into it), between the quantize and dequantize stubs: [B,512,7,7] -> [B,64,7,7]."""

    def __init__(self, encoder: ResnetVisualEncoder):
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv1, self.bn1, self.relu1 = encoder.conv1, encoder.bn1, nn.ReLU()
        self.conv2, self.bn2, self.relu2 = encoder.conv2, encoder.bn2, nn.ReLU()
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x):  # x [B,512,7,7]
        x = self.relu1(self.bn1(self.conv1(self.quant(x))))  # [B,256,7,7]
        return self.dequant(self.relu2(self.bn2(self.conv2(x))))  # [B,64,7,7]


class Int8VisualEncoder(nn.Module):
    """ResnetVisualEncoder's function with its convolutions in static int8, then its Linear
    (as int8_dynamic left it)."""

    def __init__(self, encoder: ResnetVisualEncoder, convs: nn.Module):
        super().__init__()
        self.convs, self.fc = convs, encoder.fc

    def forward(self, x):  # x [B,512,7,7]
        x = self.convs(x.contiguous(memory_format=torch.channels_last))  # [B,64,7,7]
        return linear(self.fc, x.reshape(x.shape[0], -1))  # [B,dframe]


@dataclass(frozen=True)
class StaticForm:
    """How a float module gets its convolutions in static int8: conv_input(module, its
    input) is what its convolutions receive; float_convs(module) are those convolutions
    between the stubs, with `fuse`, the groups torch.ao fuses; int8_module(module, convs)
    the module's replacement around the converted convolutions."""

    conv_input: Callable
    float_convs: Callable
    fuse: tuple
    int8_module: Callable


FORMS = {
    MaskDecoder: StaticForm(lambda decoder, x: mask_features(decoder.d1, x, decoder.dconv3.in_channels),
                            SubpixelConvs, (("conv3", "relu3"), ("conv2", "relu2")), Int8MaskDecoder),
    ResnetVisualEncoder: StaticForm(lambda encoder, x: x, VisualConvs,
                                    (("conv1", "bn1", "relu1"), ("conv2", "bn2", "relu2")), Int8VisualEncoder),
}  # fmt: skip


def static_targets(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of the modules int8_static gives static int8 convolutions."""
    return {name: module for name, module in model.named_modules() if type(module) in FORMS}


@torch.no_grad()
def conv_inputs(model: nn.Module, calibration) -> dict[str, list]:
    """{target's name: [what its convolutions received]} while the float model decodes the
    loader batches `calibration` (teacher forcing, masks at the expert's interaction steps)."""
    targets = static_targets(model)
    inputs = {name: [] for name in targets}
    hooks = [module.register_forward_pre_hook(
        lambda module, args, name=name: inputs[name].append(FORMS[type(module)].conv_input(module, args[0])))
        for name, module in targets.items()]  # fmt: skip
    try:
        for batch in calibration:
            model(batch, teacher_forcing=True)
    finally:
        for hook in hooks:
            hook.remove()
    return inputs


def int8_convs(module: nn.Module, engine: str, inputs=()) -> nn.Module:
    """The float convolutions of `module` in torch.ao's static int8 for `engine` (its default
    qconfig), the activations' ranges observed on `inputs` (none: torch.ao's default ranges,
    for a skeleton whose calibrated state is loaded next)."""
    from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

    form = FORMS[type(module)]
    convs = form.float_convs(module).eval()
    fuse_modules(convs, [list(group) for group in form.fuse], inplace=True)
    convs.qconfig = get_default_qconfig(engine)
    prepare(convs, inplace=True)
    with torch.no_grad():
        for x in inputs:
            convs(x)
    return convert(convs, inplace=True)


def quantize_int8_static(model: nn.Module, calibration=None) -> nn.Module:
    """The int8_static copy of the float `model` on the CPU, calibrated on the loader batches
    `calibration` (a list; empty or None: uncalibrated, for a skeleton)."""
    model = copy.deepcopy(model).to("cpu").eval()
    inputs = conv_inputs(model, calibration) if calibration else {}
    for name, received in inputs.items():
        if not sum(len(x) for x in received):  # torch.ao would fall back to scale 1: outputs all wrong
            raise ValueError(f"int8_static's calibration never ran {name}: its {len(calibration)} batches hold "
                             "no step that needs it (quantize.int8_static: raise batches)")
    engine = set_engine()
    with quiet_quantization_warnings():
        convs = {name: int8_convs(module, engine, inputs.get(name, ())) for name, module in static_targets(model).items()}
        quantize_int8_dynamic(model, inplace=True)
    for name, module in static_targets(model).items():
        owner, _, attribute = name.rpartition(".")
        setattr(model.get_submodule(owner), attribute, FORMS[type(module)].int8_module(module, convs[name]))
    pack_convs(model)
    return model


@contextmanager
def quantized_engine(engine: str):
    previous = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine
    try:
        yield
    finally:
        torch.backends.quantized.engine = previous


def pack_convs(model: nn.Module) -> None:
    """Pack the weights of every static int8 convolution in `model` for CONV_ENGINES' engine.
    torch.ao packs them for the engine set when they are converted or loaded, the one the
    Linear and LSTM layers need."""
    from torch.ao.nn.quantized import Conv2d

    with quantized_engine(choose_engine(engines=CONV_ENGINES)):
        for module in model.modules():
            if isinstance(module, Conv2d):  # and its fused ConvReLU2d
                module.set_weight_bias(module.weight(), module.bias())


def load_int8_static(skeleton: Callable[[str], nn.Module], state: dict, device: torch.device, path: Path) -> nn.Module:
    """As load_int8: the float model built on the CPU, converted uncalibrated, and the file's
    int8 state (weights, scales and zero points) loaded over it."""
    with warnings.catch_warnings():  # uncalibrated on purpose: the file's scales come next
        warnings.filterwarnings("ignore", message="must run observer before calling calculate_qparams")
        model = quantize_int8_static(skeleton("cpu"))
    with quiet_quantization_warnings():
        model.load_state_dict(state)
    pack_convs(model)
    return model.eval()
