"""The compression variants of a model: the one list of their names and of what is known of
each before anything is built. Pure Python, so that the workflow (when it parses), the
storage plan and the report read it without torch.

    fp32          the trained model as is (models/<model>/fp32.pt, written by training)
    int8_dynamic  dynamic int8 of the Linear, LSTM and LSTMCell layers: torch.ao's (eager, CPU
                  only; embeddings, convolutions and any Linear tied to an embedding stay
                  float) or ONNX Runtime's quantizer (its MatMul and LSTM operators)
    int8_static   static int8, the activations' ranges calibrated on the train store: ONNX
                  Runtime's (QDQ) of the MatMuls and convolutions; on eager, int8_dynamic's
                  layers plus every convolution (the visual encoder's and the mask
                  decoder's) in torch.ao's static int8 (alfred_edge.quantize.static_int8)
    fp16, bf16    every floating weight and buffer cast to half / bfloat16
    lowrank       truncated-SVD factorisation of the large Linear layers (and of the LSTM
                  cell's input weights), at a configured energy or rank
    pruned        structured pruning: whole visual features, mask-decoder channels and
                  feed-forward units go, so the layers really shrink

A variant runs on backends (BACKENDS): `eager` (the PyTorch model, models/<model>/<variant>.pt)
and `onnxruntime` (its encode, step and mask graphs exported to ONNX and run by ONNX Runtime,
models/<model>/<variant>.onnx/).

Variants compose with "+": structural steps (lowrank, pruned; pruned first) and then at
most one precision step (int8_dynamic, int8_static, fp16, bf16), e.g. `lowrank+int8_dynamic`
or `pruned+lowrank`. A composite is built from the file of its name without the last step
(models/<model>/lowrank.pt for lowrank+int8_dynamic), so a fine-tune runs once.

A variant is one entry of VARIANTS here plus its conversion in alfred_edge.quantize
(conversions.py: precision steps on the eager model; structure.py: structural steps;
onnx_variants.py: the onnxruntime backend's builds), under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass
from math import prod
from pathlib import Path

BACKENDS = ("eager", "onnxruntime")
EAGER_PROVIDER = "torch"
# The providers each backend runs a benchmark device's cells with: ONNX Runtime's execution
# providers by short name (alfred_edge.backends.onnxruntime_model.PROVIDERS); eager has one.
PROVIDERS = {"eager": {"cpu": (EAGER_PROVIDER,), "cuda": (EAGER_PROVIDER,)},
             "onnxruntime": {"cpu": ("cpu",), "cuda": ("cuda", "tensorrt")}}  # fmt: skip
PRECISION, STRUCTURE = "precision", "structure"
SEPARATOR = "+"


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    size_fraction: float  # its file's bytes relative to fp32's, for the storage plan made before any is built
    devices: tuple[str, ...]  # the devices its eager kernels run on
    colour: str  # its colour in the report's figures
    backends: tuple[str, ...]  # the runtimes it is built for
    kind: str = PRECISION  # precision: changes how weights are stored; structure: changes the layers
    why_not: tuple[tuple[str, str], ...] = ()  # (backend, why it is not built for it)


NO_HALF_ORT = ("onnxruntime", "ONNX Runtime's CPU provider runs few operators in float16 or bfloat16 (casts "
               "would wrap the rest); a half-precision graph would serve its CUDA/TensorRT providers, "
               "which this conversion does not build yet")
VARIANTS = {variant.name: variant for variant in (
    Variant("fp32", "the trained model as is", 1.0, ("cpu", "cuda"), "#1f77b4", BACKENDS),
    # weights dominate the file; the embeddings and convolutions int8 leaves float keep it above a quarter
    Variant("int8_dynamic", "dynamic int8 of Linear, LSTM and LSTMCell", 0.3, ("cpu",), "#d62728", BACKENDS),
    Variant("int8_static", "static int8 calibrated on the train store", 0.3, ("cpu",), "#ff7f0e", BACKENDS),
    Variant("fp16", "weights and buffers in float16", 0.5, ("cpu", "cuda"), "#2ca02c", ("eager",),
            why_not=(NO_HALF_ORT,)),
    Variant("bf16", "weights and buffers in bfloat16", 0.5, ("cpu", "cuda"), "#9467bd", ("eager",),
            why_not=(NO_HALF_ORT,)),
    # about the fractions the default settings (energy 0.5, keep 0.5) reach, for the plan only
    Variant("pruned", "structured pruning of features, channels and units, fine-tuned", 0.6, ("cpu", "cuda"),
            "#8c564b", BACKENDS, STRUCTURE),
    Variant("lowrank", "truncated-SVD factorisation of the large layers, fine-tuned", 0.5, ("cpu", "cuda"),
            "#e377c2", BACKENDS, STRUCTURE),
)}  # fmt: skip
NAMES = tuple(VARIANTS)
STRUCTURE_ORDER = tuple(name for name, v in VARIANTS.items() if v.kind == STRUCTURE)
# What a cost-only model's rows say instead of an accuracy (the reason of its eval rows, and the
# report's text for it); defined here, without torch, for the quantize job and the report.
COST_ONLY = "untrained: cost only"


class VariantUnavailable(RuntimeError):
    """A variant that cannot be built or run here; `reason` says why (the benchmark
    records it as a skipped cell, the quantize job as an "unavailable" row)."""

    def __init__(self, variant: str, reason: str):
        super().__init__(f"variant {variant!r} is unavailable: {reason}")
        self.variant = variant
        self.reason = reason


def steps(name: str) -> tuple[str, ...]:
    """The registry's names a variant name is made of, in the order they are applied."""
    return tuple(name.split(SEPARATOR))


def name_error(name: str) -> str | None:
    """Why `name` is not a variant (None if it is one)."""
    parts = steps(name)
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        return f"{', '.join(map(repr, unknown))} not in the registry (known: {', '.join(NAMES)})"
    if len(parts) == 1:
        return None
    structural = [p for p in parts if VARIANTS[p].kind == STRUCTURE]
    precision = [p for p in parts if VARIANTS[p].kind == PRECISION]
    if "fp32" in parts:
        return "fp32 is the model itself, not a step of a composite"
    if len(precision) > 1 or (precision and parts[-1] != precision[0]):
        return "at most one precision step, and it comes last"
    if len(set(structural)) != len(structural) or structural != sorted(structural, key=STRUCTURE_ORDER.index):
        return f"structural steps at most once each, in the order {' then '.join(STRUCTURE_ORDER)}"
    return None


def for_model(names, model_config: dict) -> list[str]:
    """`names` (configured variants, in their order) less those the model's own `variants`
    (models.<model>.variants, where it has the key) leaves out."""
    own = model_config.get("variants")
    return [name for name in names if own is None or name in own]


def get(name: str) -> Variant:
    """The registry's entry for `name` (a composite's: its steps' facts combined);
    VariantUnavailable for a name that is not a variant."""
    error = name_error(name)
    if error:
        raise VariantUnavailable(name, f"not a variant: {error}")
    parts = [VARIANTS[p] for p in steps(name)]
    if len(parts) == 1:
        return parts[0]
    return Variant(
        name=name,
        description=", then ".join(p.description for p in parts),
        size_fraction=prod(p.size_fraction for p in parts),
        devices=tuple(d for d in parts[0].devices if all(d in p.devices for p in parts)),
        colour=parts[-1].colour,
        backends=tuple(b for b in BACKENDS if all(b in p.backends for p in parts)),
        kind=parts[-1].kind,
    )


def parent(name: str) -> str:
    """The variant a composite is built from: its name without the last step (fp32 for a
    single step)."""
    parts = steps(name)
    return SEPARATOR.join(parts[:-1]) if len(parts) > 1 else "fp32"


def precision_step(name: str) -> str:
    """A variant's precision step: its last step, or fp32 for a float (structural) variant."""
    last = steps(name)[-1]
    return last if VARIANTS[last].kind == PRECISION else "fp32"


def float_part(name: str) -> str:
    """The float model a variant's precision step starts from: its structural steps (fp32
    if none). The onnxruntime backend exports this one and quantizes the graphs."""
    structural = [p for p in steps(name) if VARIANTS[p].kind == STRUCTURE]
    return SEPARATOR.join(structural) or "fp32"


def providers(backend: str, device: str) -> tuple[str, ...]:
    """The providers `backend` runs on benchmark device `device` (cpu, cuda)."""
    return PROVIDERS[backend][device]


def backend_error(name: str, backend: str) -> str | None:
    """Why variant `name` does not run on `backend` (None if it does)."""
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; known: {', '.join(BACKENDS)}"
    missing = [p for p in steps(get(name).name) if backend not in VARIANTS[p].backends]
    if not missing:
        return None
    return f"{missing[0]} is not built for {backend}: {dict(VARIANTS[missing[0]].why_not)[backend]}"


def stored_bytes(path: str | Path) -> int:
    """What a board stores for a variant: its file (eager), or its folder's graphs
    (onnxruntime: models/<model>/<variant>.onnx/*.onnx)."""
    path = Path(path)
    return sum(p.stat().st_size for p in path.glob("*.onnx")) if path.is_dir() else path.stat().st_size
