"""Compression variants of a trained model: build one, save it as a file whose size
reflects the compression, and load it back without running pickled code.

    fp32          the trained model as is (models/<model>/fp32.pt, written by training)
    int8_dynamic  torch.ao dynamic int8 of Linear, LSTM and LSTMCell (CPU only); embeddings,
                  convolutions and any Linear tied to an embedding stay float
    fp16, bf16    every floating weight and buffer cast to half / bfloat16

A variant file is a dict saved with `torch.save`:
    {"format": FILE_FORMAT, "variant", "engine" (int8 only), "torch_version",
     "source": the fp32 checkpoint's header (model name, config, vocabulary; no weights),
     "state_dict": the variant's weights}          # or "unavailable": reason, no weights
`load_variant` rebuilds the float skeleton from "source", converts it with the same spec,
then loads "state_dict" read with `torch.load(weights_only=True)`; the only global it
admits beyond PyTorch's defaults is `torch.ScriptObject` (the packed int8 LSTM weights).

Why not quantize at load time (the most version-proof recipe)? The file on the board is
what the storage budget pays for, so it has to be the compressed one.
"""
from __future__ import annotations

import copy
import logging
import platform
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from alfred_edge.models import FILE_FORMAT as MODEL_FILE_FORMAT  # fp32.pt, written by training
from alfred_edge.torch_compat import safe_globals

log = logging.getLogger(__name__)

FILE_FORMAT = "alfred-edge-variant/1"
VARIANTS = ("fp32", "int8_dynamic", "fp16", "bf16")
LOW_PRECISION = {"fp16": torch.float16, "bf16": torch.bfloat16}
BF16_CAPABILITY = (8, 0)  # the first CUDA compute capability with bfloat16 arithmetic (Ampere)
# Module types int8_dynamic quantizes (exact types: MultiheadAttention's out_proj, a Linear
# subclass, is read as a tensor by its owner and must stay float).
DYNAMIC_INT8_TYPES = (nn.Linear, nn.LSTM, nn.LSTMCell)
# quantize_dynamic exists in eager torch.ao from 1.x; checked working up to 2.15.
INT8_TORCH_RANGE = "torch 2.4 to 2.15 (eager torch.ao.quantization.quantize_dynamic)"
# Engines per CPU family, most preferred first (x86 = fbgemm + oneDNN heuristics).
ENGINES = {"x86": ("x86", "fbgemm"), "arm": ("qnnpack",)}
# Globals the variant files need beyond weights_only's defaults: the packed int8 LSTM /
# LSTMCell weights (a TorchScript class object restored by PyTorch's own code).
SAFE_GLOBALS = [torch.ScriptObject]


class VariantUnavailable(RuntimeError):
    """A variant that cannot be built or run here; `reason` says why (the benchmark
    records it as a skipped cell, the quantize job as an "unavailable" row)."""

    def __init__(self, variant: str, reason: str):
        super().__init__(f"variant {variant!r} is unavailable: {reason}")
        self.variant = variant
        self.reason = reason


@contextmanager
def quiet_quantization_warnings():
    """torch.ao and the quantized dtypes warn that they are deprecated on every call
    (quantization.md §1); they still work, and the warnings drown the job logs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r".*quantized tensor creation functions")
        warnings.filterwarnings("ignore", message=r".*TypedStorage is deprecated")
        yield


# --- engine and availability ------------------------------------------------------------


def cpu_family(machine: str | None = None) -> str:
    machine = (machine or platform.machine()).lower()
    if machine in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if machine.startswith(("aarch64", "arm")):
        return "arm"
    return machine


def choose_engine(machine: str | None = None, supported: list[str] | None = None) -> str:
    """The quantized engine for this CPU: x86 (or fbgemm) on x86, qnnpack on ARM (the
    torch 2.11 default of x86 on ARM fails with 'unknown architecure', quantization.md §2)."""
    supported = list(torch.backends.quantized.supported_engines if supported is None else supported)
    family = cpu_family(machine)
    wanted = ENGINES.get(family, ())
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


def check_available(variant: str, device: str | torch.device) -> None:
    """Raise VariantUnavailable if `variant` cannot run on `device` here."""
    if variant not in VARIANTS:
        raise VariantUnavailable(variant, f"unknown variant; known: {', '.join(VARIANTS)}")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise VariantUnavailable(variant, f"device {device} requested but CUDA is not available "
                                 f"(torch {torch.__version__})")
    if variant == "int8_dynamic":
        if device.type != "cpu":
            raise VariantUnavailable(variant, f"torch.ao dynamic int8 kernels run on the CPU only, "
                                     f"not on {device.type} (use fp16 there)")
        quantize_dynamic_function()
        choose_engine()
    elif variant == "bf16" and device.type == "cuda" and torch.cuda.get_device_capability(device) < BF16_CAPABILITY:
        # is_bf16_supported() says yes there too: the ops run, emulated, and would measure the emulation
        major, minor = torch.cuda.get_device_capability(device)
        raise VariantUnavailable(variant, f"{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) "
                                 "has no bfloat16 arithmetic; it needs 8.0 (Ampere, Orin) or later")
    elif variant in LOW_PRECISION:
        probe_low_precision(variant, device)


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


# --- building variants -------------------------------------------------------------------


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


def uses_mha_fast_path(model: nn.Module) -> bool:
    return any(
        isinstance(m, (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))
        for m in model.modules()
    )


def quantize_int8_dynamic(model: nn.Module, inplace: bool = False) -> nn.Module:
    """A dynamic-int8 version of a float model (a copy unless `inplace`) on the CPU,
    packed for the engine set for this CPU."""
    quantize_dynamic = quantize_dynamic_function()
    set_engine()
    from torch.ao.quantization import default_dynamic_qconfig

    if not inplace:
        model = copy.deepcopy(model)

    if uses_mha_fast_path(model):
        # The fast path reads linear1.weight as a tensor; a quantized Linear has a method
        # there ("'function' object has no attribute 'device'", quantization.md §3).
        torch.backends.mha.set_fastpath_enabled(False)
    spec = {name: default_dynamic_qconfig for name in int8_targets(model)}
    with quiet_quantization_warnings():
        return quantize_dynamic(model.to("cpu").eval(), spec, dtype=torch.qint8, inplace=True)


def make_variant(model: nn.Module, variant: str) -> nn.Module:
    """A converted copy of the float `model` (which is left as it was), in eval mode.

    Raises VariantUnavailable if this host cannot build the variant."""
    if variant == "fp32":
        return model.eval()
    if variant == "int8_dynamic":
        return quantize_int8_dynamic(model)
    if variant in LOW_PRECISION:
        device = next(model.parameters()).device
        probe_low_precision(variant, device)
        return cast_model(copy.deepcopy(model), LOW_PRECISION[variant]).eval()
    raise VariantUnavailable(variant, f"unknown variant; known: {', '.join(VARIANTS)}")


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


# --- files -------------------------------------------------------------------------------


def save_variant(model: nn.Module, variant: str, source: dict, path: str | Path) -> None:
    """Write `model` (made by make_variant) to `path`, atomically. `source` is the fp32
    checkpoint's header: what rebuilding the float skeleton needs."""
    payload = _payload(variant, source)
    payload["state_dict"] = model.state_dict()
    _write(payload, path)


def save_unavailable(variant: str, reason: str, source: dict, path: str | Path) -> None:
    """Write a variant file that holds no weights, only why the variant could not be built
    here; load_variant raises VariantUnavailable with that reason."""
    payload = _payload(variant, source)
    payload["unavailable"] = reason
    _write(payload, path)


def _payload(variant: str, source: dict) -> dict:
    return {
        "format": FILE_FORMAT,
        "variant": variant,
        "engine": torch.backends.quantized.engine if variant == "int8_dynamic" else None,
        "torch_version": str(torch.__version__),
        "source": source,
    }


def _write(payload: dict, path: str | Path) -> None:
    from alfred_edge.atomic import atomic_path

    with atomic_path(path) as tmp, quiet_quantization_warnings():
        torch.save(payload, tmp)


def read_variant_file(path: str | Path) -> dict:
    """The dict stored at `path` (a variant file or an fp32 model file), its tensors
    memory-mapped on the CPU, read with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"variant file {path} does not exist")
    try:
        with safe_globals(SAFE_GLOBALS), quiet_quantization_warnings():
            payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # truncated, foreign, or packed by an incompatible torch
        raise ValueError(f"{path} is not a readable alfred-edge variant file "
                         f"({type(exc).__name__}: {exc})") from exc
    formats = (FILE_FORMAT, MODEL_FILE_FORMAT)
    if not isinstance(payload, dict) or payload.get("format") not in formats:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ValueError(f"{path} is not an alfred-edge variant file (format {found!r}, expected one of {formats})")
    return payload


def load_variant(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model stored at `path` (models/<model>/<variant>.pt, fp32.pt included) on
    `device`, in eval mode.

    Raises VariantUnavailable (with the reason) when the variant cannot run on `device`
    here, or when the file records that it could not be built; ValueError for a file that
    is not a variant file."""
    from alfred_edge.models import load_model

    path, device = Path(path), torch.device(device)
    payload = read_variant_file(path)
    if payload["format"] == MODEL_FILE_FORMAT:
        check_available("fp32", device)
        return load_model(path, device)
    variant = payload["variant"]
    if "unavailable" in payload:
        raise VariantUnavailable(variant, payload["unavailable"])
    check_available(variant, device)
    try:
        return load_state(variant, payload["source"], payload["state_dict"], device, path)
    except Exception as exc:  # packed int8 formats are private to a torch build
        if payload["torch_version"] != str(torch.__version__):
            raise VariantUnavailable(variant, f"{path} was written by torch {payload['torch_version']} "
                                     f"and does not load in torch {torch.__version__}; rerun its "
                                     f"quantize job with this torch ({exc})") from exc
        raise ValueError(f"{path} does not fit its model: {exc}") from exc


def load_state(variant: str, source: dict, state: dict, device: torch.device, path: Path) -> nn.Module:
    """Build the variant's skeleton from the fp32 header `source`, then load `state`."""
    from alfred_edge.models import load_weights

    if variant == "int8_dynamic":
        # quantize_dynamic needs real float weights on the CPU: build them, quantize in
        # place with the same spec as at build time, then load the int8 state over them.
        model = quantize_int8_dynamic(build_float(source, "cpu"), inplace=True)
        with quiet_quantization_warnings():
            model.load_state_dict(state)
        return model.eval()
    # Low precision: built on the meta device and the tensors assigned, so the file's
    # weights reach `device` without a float32 copy or a second copy in host memory.
    model = cast_model(build_float(source, "meta"), LOW_PRECISION[variant])
    load_weights(model, {k: v.to(device) for k, v in state.items()}, path)
    return model.eval()


def build_float(source: dict, device: str | torch.device) -> nn.Module:
    """The float model described by an fp32 model file's header, built on `device`."""
    from alfred_edge.models import model_from_record

    return model_from_record(source, device)


def model_header(record: dict) -> dict:
    """An fp32 model file's dict without its weights: what rebuilding the model needs."""
    return {k: v for k, v in record.items() if k != "state_dict"}


# --- the quantize job --------------------------------------------------------------------

EVAL_METRICS = ("action_acc", "action_f1", "action_em", "mask_iou", "loss", "n_annotations")


def eval_device(variant: str) -> str:
    """Where a variant is evaluated: int8 on the CPU (its only device), the float variants
    on the GPU when there is one."""
    return "cuda" if variant != "int8_dynamic" and torch.cuda.is_available() else "cpu"


def quantize_job(fp32_path, variant: str, store_dir, splits, variant_path, table_path,
                 batch_size: int = 8) -> dict:
    """Build `variant` of the model in `fp32_path`, write it to `variant_path` (fp32: none,
    the trained file is the variant), evaluate the file's model on `splits` of the store
    and write the one-row table `table_path` (columns: see eval_row). A variant that cannot
    be built or evaluated here gets a row with status "unavailable" or "failed" and the
    reason, and its file records the reason; the job itself succeeds. Returns the row."""
    fp32_path = Path(fp32_path)
    record = read_variant_file(fp32_path)
    row = {"model": record["model"], "variant": variant, "status": "ok", "reason": "",
           "fp32_file_size_bytes": fp32_path.stat().st_size, "torch_version": str(torch.__version__)}
    if variant == "fp32":
        variant_path = fp32_path
    else:
        row.update(_build(fp32_path, record, variant, Path(variant_path)))
    if row["status"] == "ok":
        row.update(_evaluate(variant, Path(variant_path), store_dir, splits, batch_size))
    table = eval_table(row, splits)
    from alfred_edge.atomic import write_parquet

    write_parquet(table, table_path)
    return table.iloc[0].to_dict()


def _build(fp32_path: Path, record: dict, variant: str, variant_path: Path) -> dict:
    """Make and save the variant; on failure save its reason instead. -> row columns."""
    from alfred_edge.models import load_model

    header = model_header(record)
    try:
        model = make_variant(load_model(fp32_path, "cpu"), variant)
        save_variant(model, variant, header, variant_path)
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        save_unavailable(variant, exc.reason, header, variant_path)
        return {"status": "unavailable", "reason": exc.reason}
    except Exception as exc:  # a variant that breaks must not stop the other variants
        log.exception("building %s failed", variant)
        reason = f"building failed: {type(exc).__name__}: {exc}"
        save_unavailable(variant, reason, header, variant_path)
        return {"status": "failed", "reason": reason}
    engine = torch.backends.quantized.engine if variant == "int8_dynamic" else ""
    return {"engine": engine, "file_size_bytes": variant_path.stat().st_size}


def _evaluate(variant: str, path: Path, store_dir, splits, batch_size: int) -> dict:
    """Load the variant file as the benchmark will, and evaluate it. -> row columns."""
    from alfred_edge.evaluate import evaluate

    device = eval_device(variant)
    columns = {"eval_device": device, "file_size_bytes": path.stat().st_size}
    try:
        model = load_variant(path, device)
        with quiet_quantization_warnings():
            metrics = evaluate(model, store_dir, device, splits=tuple(splits), batch_size=batch_size)
    except VariantUnavailable as exc:
        log.warning("%s", exc)
        return {**columns, "status": "unavailable", "reason": exc.reason}
    except Exception as exc:
        if variant == "fp32":  # the baseline must work; its failure is a bug to see
            raise
        log.exception("evaluating %s failed", variant)
        return {**columns, "status": "failed", "reason": f"evaluation failed: {type(exc).__name__}: {exc}"}
    for split in splits:
        for metric in EVAL_METRICS:
            columns[f"{metric}_{split}"] = metrics[f"{split}/{metric}"]
    return columns


def eval_table(row: dict, splits) -> "pd.DataFrame":
    """The one-row table of models/<model>/<variant>.eval.parquet:
    model, variant, status (ok | unavailable | failed), reason, file_size_bytes,
    file_size_mb (1e6 bytes), fp32_file_size_bytes, size_ratio (file / fp32 file), engine
    (int8), eval_device, torch_version, and per split: accuracy_<split> (teacher-forced
    action accuracy, 0..1), action_f1_<split>, action_em_<split>, mask_iou_<split>,
    loss_<split> (teacher-forced), n_annotations_<split>; NaN where the variant was not evaluated."""
    import pandas as pd

    row = {"engine": "", "eval_device": "", "file_size_bytes": float("nan"), **row}
    row["file_size_mb"] = row["file_size_bytes"] / 1e6
    row["size_ratio"] = row["file_size_bytes"] / row["fp32_file_size_bytes"]
    for split in splits:
        for metric in EVAL_METRICS:
            row.setdefault(f"{metric}_{split}", float("nan"))
        row[f"accuracy_{split}"] = row.pop(f"action_acc_{split}")
    return pd.DataFrame([row])
