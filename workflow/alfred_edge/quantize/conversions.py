"""How each variant of alfred_edge.variants is made from the float model and read back from
its file on the eager backend: one Conversion per precision step (CONVERSIONS; fp32 is the
float model as it is), with the checks that say whether it can run on a device here, and the
int8 engine for this CPU. A variant's structural steps (alfred_edge.quantize.structure) come
before its precision step."""
from __future__ import annotations

import copy
import platform
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from alfred_edge import variants
from alfred_edge.models import load_weights
from alfred_edge.variants import VariantUnavailable

LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}
BF16_CAPABILITY = (8, 0)  # the first CUDA compute capability with bfloat16 arithmetic (Ampere)
# Module types int8_dynamic quantizes (exact types: MultiheadAttention's out_proj, a Linear
# subclass, is read as a tensor by its owner and must stay float).
DYNAMIC_INT8_TYPES = (nn.Linear, nn.LSTM, nn.LSTMCell)
# quantize_dynamic exists in eager torch.ao from 1.x; checked working up to 2.15.
INT8_TORCH_RANGE = "torch 2.4 to 2.15 (eager torch.ao.quantization.quantize_dynamic)"
# Engines per CPU family, most preferred first (x86 = fbgemm + oneDNN heuristics).
ENGINES = {"x86": ("x86", "fbgemm"), "arm": ("qnnpack",)}
# int8_static's convolutions on x86 are packed for oneDNN: the x86 engine packs them for
# fbgemm on CPUs without AVX512-VNNI, whose int8 convolutions with few output channels (the
# mask decoder's) are several times slower than oneDNN's (benchmarks/int8_transposed_conv.py).
CONV_ENGINES = {**ENGINES, "x86": ("onednn", *ENGINES["x86"])}
DEVICE_NAMES = {"cpu": "the CPU", "cuda": "CUDA"}


@dataclass(frozen=True)
class Conversion:
    """A precision step's code. check(device): raise VariantUnavailable where it cannot run
    on `device` here. build(model, calibration): the step applied to a float model, in eval
    mode (a converted copy; the model is left as it was); `calibration`: loader batches of
    the train store for a step that calibrates (calibrates), else None. load(skeleton,
    state, device, path): the variant's model on `device` from `skeleton(device)`, its float
    model with random or meta weights, and the file's weights `state` (`path` names the file
    in errors). engine(): the quantized engines its weights are packed for, which its file
    records (None: not an int8 step)."""

    check: Callable[[torch.device], None]
    build: Callable[[nn.Module, list | None], nn.Module]
    load: Callable[[Callable[[str], nn.Module], dict, torch.device, Path], nn.Module]
    engine: Callable[[], str] | None = None
    calibrates: bool = False


@contextmanager
def quiet_quantization_warnings():
    """torch.ao.quantization and the quantized dtypes warn on every call that they are
    deprecated (pytorch/pytorch#153892, #184982); they still work, and the warnings drown
    the job logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated")
        warnings.filterwarnings("ignore", message=r"Please use quant_min and quant_max")  # torch.ao's own qconfigs
        yield


def conversion(variant: str) -> Conversion:
    """The eager conversion of a variant's precision step; VariantUnavailable for a name that
    is not a variant or a variant not built for the eager backend."""
    error = variants.backend_error(variant, "eager")
    if error:
        raise VariantUnavailable(variant, error)
    return CONVERSIONS[variants.precision_step(variant)]


def make_variant(model: nn.Module, variant: str, settings: dict | None = None, train_store=None) -> nn.Module:
    """The variant of the float `model` for the eager backend, in eval mode (fp32: the model
    itself; the others a converted copy, the model left as it was): its structural steps with
    their settings (settings[step]; a fine-tune reads `train_store`), then its precision
    step (settings[step] and `train_store` for a step that calibrates). Raises
    VariantUnavailable if this host cannot build it."""
    conversion(variant)  # VariantUnavailable where the eager backend has no conversion
    for step in variants.steps(variant):
        if variants.get(step).kind == variants.STRUCTURE:
            from alfred_edge.quantize.structure import build_structure

            model = build_structure(model, step, (settings or {})[step], train_store)
    return build_precision(model, variants.precision_step(variant), settings, train_store)


def build_precision(model: nn.Module, step: str, settings: dict | None, train_store) -> nn.Module:
    """Precision step `step` applied to the float `model` (its calibration, if it calibrates:
    settings[step]'s batches of `train_store`)."""
    step_conversion = CONVERSIONS[step]
    calibration = calibration_batches(train_store, (settings or {}).get(step)) if step_conversion.calibrates else None
    return step_conversion.build(model, calibration)


def calibration_batches(train_store, settings: dict | None) -> list:
    """The first settings["batches"] batches of settings["batch"] annotations of the train store."""
    from itertools import islice

    from alfred_edge.evaluate import split_loader

    if train_store is None or settings is None:
        raise ValueError("a calibrated step needs the train store and its settings (quantize.<step>): "
                         f"given {train_store!r}, {settings!r}")
    return list(islice(split_loader(Path(train_store), settings["batch"]), settings["batches"]))


def check_available(variant: str, device: str | torch.device) -> None:
    """Raise VariantUnavailable if `variant` cannot run on `device` here (eager backend)."""
    spec, device = variants.get(variant), torch.device(device)
    conversion(variant)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VariantUnavailable(variant, f"device {device} requested but CUDA is not available "
                                 f"(torch {torch.__version__})")
    if device.type not in spec.devices:
        elsewhere = [v.name for v in variants.VARIANTS.values() if device.type in v.devices]
        where = " and ".join(DEVICE_NAMES.get(d, d) for d in spec.devices)
        raise VariantUnavailable(variant, f"its kernels run on {where} only, not on {device.type} "
                                 f"(variants that run there: {', '.join(elsewhere)})")
    CONVERSIONS[variants.precision_step(variant)].check(device)


# --- int8_dynamic ------------------------------------------------------------------------


def cpu_family(machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("aarch64", "arm")):
        return "arm"
    return machine


def choose_engine(machine: str | None = None, supported: list[str] | None = None, engines: dict = ENGINES) -> str:
    """The quantized engine for this CPU, the first of engines[its family] this torch has:
    by default x86 (or fbgemm) on x86, qnnpack on ARM (torch 2.11 made x86 the default engine
    on ARM too, where every quantized op then fails with "unknown architecure":
    pytorch/pytorch#177254)."""
    supported = list(torch.backends.quantized.supported_engines if supported is None else supported)
    family = cpu_family(machine)
    wanted = engines.get(family, ())
    for engine in wanted:
        if engine in supported:
            return engine
    raise VariantUnavailable(
        "int8_dynamic",
        f"no int8 engine for CPU family {family!r}: this PyTorch supports {supported}, "
        f"int8 needs one of {list(wanted) or 'x86/fbgemm or qnnpack'}",
    )


def set_engine(machine: str | None = None) -> str:
    engine = choose_engine(machine)
    torch.backends.quantized.engine = engine
    return engine


def current_engine() -> str:
    return torch.backends.quantized.engine


def quantize_dynamic_function():
    """torch.ao's eager quantize_dynamic, or VariantUnavailable naming the versions that have it."""
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise VariantUnavailable(
            "int8_dynamic",
            f"torch {torch.__version__} has no torch.ao.quantization.quantize_dynamic ({exc}); "
            f"install {INT8_TORCH_RANGE}",
        ) from exc
    return quantize_dynamic


def check_int8(device: torch.device) -> None:
    quantize_dynamic_function()
    choose_engine()


def int8_targets(model: nn.Module) -> set[str]:
    """Names of the modules int8_dynamic quantizes: every Linear / LSTM / LSTMCell, except
    a Linear whose weight is an embedding's (a tied head: quantizing it would cut the tie)
    and recurrent layers without bias (their dynamic int8 versions need one)."""
    embedding_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    names = set()
    for name, module in model.named_modules():
        if type(module) not in DYNAMIC_INT8_TYPES:
            continue
        if isinstance(module, nn.Linear) and id(module.weight) in embedding_weights:
            continue
        if isinstance(module, (nn.LSTM, nn.LSTMCell)) and not module.bias:
            continue
        names.add(name)
    return names


def quantize_int8_dynamic(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A dynamic-int8 version of a float model (a copy unless `inplace`) on the CPU,
    packed for the engine set for this CPU."""
    quantize_dynamic = quantize_dynamic_function()
    set_engine()
    from torch.ao.quantization import default_dynamic_qconfig

    if not inplace:
        model = copy.deepcopy(model)
    targets = int8_targets(model)
    with quiet_quantization_warnings():
        quantized = quantize_dynamic(model.to("cpu").eval(), dict.fromkeys(targets, default_dynamic_qconfig),
                                     dtype=torch.qint8, inplace=True)
    keep_off_the_encoder_fast_path(quantized, targets)
    return quantized


def keep_off_the_encoder_fast_path(model: nn.Module, quantized: set[str]) -> None:
    """torch's nn.TransformerEncoderLayer and nn.TransformerEncoder take a fused path in eval
    mode that reads linear1.weight as a tensor, which a quantized Linear has as a method
    ("'function' object has no attribute 'device'"). The layers whose feed-forward was
    quantized, and the encoders they start, are kept off that path by the attribute each
    one's own check reads; torch.backends.mha's switch, global, is left as it is."""
    for name, module in model.named_modules():
        if isinstance(module, nn.TransformerEncoderLayer) and _feed_forward_quantized(name, quantized):
            module.activation_relu_or_gelu = 0
        elif isinstance(module, nn.TransformerEncoder) and _feed_forward_quantized(_child(name, "layers.0"), quantized):
            module.use_nested_tensor = False


def _feed_forward_quantized(layer: str, quantized: set[str]) -> bool:
    return bool({_child(layer, "linear1"), _child(layer, "linear2")} & quantized)


def _child(name: str, child: str) -> str:
    return f"{name}.{child}" if name else child


def build_int8_dynamic(model: nn.Module, calibration=None) -> nn.Module:
    return quantize_int8_dynamic(model)


def load_int8(skeleton: Callable[[str], nn.Module], state: dict, device: torch.device, path: Path) -> nn.Module:
    """quantize_dynamic needs real float weights on the CPU: the float model is built there,
    quantized in place with the same spec as at build time, and the int8 state loaded over it."""
    model = quantize_int8_dynamic(skeleton("cpu"), inplace=True)
    with quiet_quantization_warnings():
        model.load_state_dict(state)
    return model.eval()


# --- float variants ----------------------------------------------------------------------


def no_check(device: torch.device) -> None:
    """fp32 runs wherever torch does."""


def as_is(model: nn.Module, calibration=None) -> nn.Module:
    return model.eval()


def probe_low_precision(variant: str, device: torch.device) -> None:
    """Run the kinds of op the models use (convolution, LSTM cell, bilinear resize) in the
    variant's dtype on `device`; some builds lack half kernels on the CPU."""
    dtype = LOW_PRECISION[variant]
    try:
        with torch.no_grad():
            x = torch.ones(1, 4, 2, 2, dtype=dtype, device=device)
            nn.Conv2d(4, 4, 1).to(device, dtype)(x)
            nn.functional.interpolate(x, size=(3, 3), mode="bilinear")
            cell = nn.LSTMCell(4, 4).to(device, dtype)
            cell(x.flatten(1)[:, :4])
    except (RuntimeError, NotImplementedError) as exc:
        raise VariantUnavailable(variant, f"{dtype} kernels missing on {device} in torch "
                                 f"{torch.__version__}: {exc}") from exc


def check_fp16(device: torch.device) -> None:
    probe_low_precision("fp16", device)


def check_bf16(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.get_device_capability(device) < BF16_CAPABILITY:
        # is_bf16_supported() says yes there too: the ops run, emulated, and would measure the emulation
        major, minor = torch.cuda.get_device_capability(device)
        raise VariantUnavailable("bf16", f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                                 "has no bfloat16 arithmetic; it needs 8.0 (Ampere, Orin) or later")
    probe_low_precision("bf16", device)


def build_cast(variant: str) -> Callable[[nn.Module, list | None], nn.Module]:
    def build(model: nn.Module, calibration=None) -> nn.Module:
        probe_low_precision(variant, next(model.parameters()).device)
        return cast_model(copy.deepcopy(model), LOW_PRECISION[variant]).eval()

    return build


def load_cast(dtype: torch.dtype | None) -> Callable[[Callable[[str], nn.Module], dict, torch.device, Path], nn.Module]:
    """Loading a float variant in `dtype` (None: float32, as trained): the model is built on
    the meta device and the file's tensors assigned, so its weights reach `device` without a
    float32 copy or a second copy in host memory."""

    def load(skeleton: Callable[[str], nn.Module], state: dict, device: torch.device, path: Path) -> nn.Module:
        model = skeleton("meta")
        if dtype is not None:
            model = cast_model(model, dtype)
        load_weights(model, {k: v.to(device) for k, v in state.items()}, path)
        return model.eval()

    return load


def cast_model(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """`model` with its floating weights and buffers in `dtype`, and a pre-hook on each
    module that owns floating weights casting its floating tensor inputs to them, so that
    callers may pass float32 frames as they do to the fp32 model (alfred_edge.evaluate
    casts them itself; then the hooks find nothing to do and return at once)."""
    model.to(dtype)

    def cast_inputs(module, args):  # runs on every call: returns None unless a cast is due
        if any(_needs_cast(a, dtype) for a in args):
            return tuple(_cast(a, dtype) for a in args)
        return None

    for module in model.modules():
        if any(p.is_floating_point() for p in module.parameters(recurse=False)):
            module.register_forward_pre_hook(cast_inputs)
    return model


def _needs_cast(value, dtype: torch.dtype) -> bool:
    """A floating tensor in another dtype, or an (h, c)-style tuple holding one."""
    if isinstance(value, torch.Tensor):
        return value.dtype is not dtype and value.is_floating_point()
    return type(value) is tuple and any(_needs_cast(v, dtype) for v in value)


def _cast(value, dtype: torch.dtype):
    if type(value) is tuple:
        return tuple(_cast(v, dtype) for v in value)
    return value.to(dtype) if _needs_cast(value, dtype) else value


# --- int8_static: int8_dynamic plus every convolution in static int8 (static_int8.py, -----
# imported when used: it builds on this module)


def build_int8_static(model: nn.Module, calibration: list) -> nn.Module:
    from alfred_edge.quantize.static_int8 import quantize_int8_static

    return quantize_int8_static(model, calibration)


def load_int8_static(skeleton: Callable[[str], nn.Module], state: dict, device: torch.device, path: Path) -> nn.Module:
    from alfred_edge.quantize.static_int8 import load_int8_static as load

    return load(skeleton, state, device, path)


def int8_static_engines() -> str:
    convs = choose_engine(engines=CONV_ENGINES)
    return current_engine() if convs == current_engine() else f"{current_engine()}, convolutions {convs}"


CONVERSIONS = {
    "fp32": Conversion(check=no_check, build=as_is, load=load_cast(None)),
    "int8_dynamic": Conversion(check=check_int8, build=build_int8_dynamic, load=load_int8, engine=current_engine),
    "int8_static": Conversion(check=check_int8, build=build_int8_static, load=load_int8_static,
                              engine=int8_static_engines, calibrates=True),
    "fp16": Conversion(check=check_fp16, build=build_cast("fp16"), load=load_cast(torch.float16)),
    "bf16": Conversion(check=check_bf16, build=build_cast("bf16"), load=load_cast(torch.bfloat16)),
}
