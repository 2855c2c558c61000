"""Variant files of the eager backend (models/<model>/<variant>.pt; format:
alfred_edge.models.file_format): saved with the variant's weights, whose size is what the
storage budget pays for on a board, and loaded back by rebuilding the float skeleton from the
fp32 header and the structural steps' records they carry, converting it with the same
conversion, and loading the weights read with torch.load(weights_only=True).
The only global admitted beyond PyTorch's defaults is torch.ScriptObject (the packed int8
LSTM weights, restored by PyTorch's own code).

Why not quantize at load time (the most version-proof recipe)? The file on the board is
what the storage budget pays for, so it has to be the compressed one."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from alfred_edge.models.file_format import MODEL_FORMAT, VARIANT_FORMAT, header, read_file, write_file
from alfred_edge import variants
from alfred_edge.quantize.conversions import (
    CONVERSIONS,
    check_available,
    conversion,
    quiet_quantization_warnings,
)
from alfred_edge.variants import VariantUnavailable

SAFE_GLOBALS = (torch.ScriptObject,)


def save_variant(model: nn.Module, variant: str, source: dict, path: str | Path) -> None:
    """Write `model` (made by make_variant) to `path`, atomically. `source` is the fp32
    file's header and `compression` the records of its structural steps: what rebuilding the
    float skeleton needs."""
    _write({**_payload(variant, source), "compression": getattr(model, "compression", []),
            "state_dict": model.state_dict()}, path)  # fmt: skip


def save_unavailable(variant: str, reason: str, source: dict, path: str | Path) -> None:
    """Write a variant file that holds no weights, only why the variant could not be built
    here; load_variant raises VariantUnavailable with that reason."""
    _write({**_payload(variant, source), "unavailable": reason}, path)


def engine_of(variant: str) -> str | None:
    """The quantized engines a variant's weights are packed for (None: not an int8 variant,
    or a name without a conversion, whose file records only why it could not be built)."""
    if variants.name_error(variant) is not None:
        return None
    step = variants.precision_step(variant)
    engine = CONVERSIONS[step].engine if step in CONVERSIONS else None
    return engine() if engine else None


def _payload(variant: str, source: dict) -> dict:
    return {"format": VARIANT_FORMAT, "variant": variant, "engine": engine_of(variant),
            "torch_version": str(torch.__version__), "source": source}


def _write(payload: dict, path: str | Path) -> None:
    with quiet_quantization_warnings():
        write_file(payload, path)


def read_variant_file(path: str | Path) -> dict:
    """The dict stored at `path` (a variant file or an fp32 model file), its tensors
    memory-mapped on the CPU."""
    with quiet_quantization_warnings():
        return read_file(path, "variant", (VARIANT_FORMAT, MODEL_FORMAT), allowed_globals=SAFE_GLOBALS)


def skeleton_of(payload: dict):
    """device -> the float model a variant file's weights fit: the fp32 header's model with
    the recorded structural steps."""
    from alfred_edge.models import model_from_record
    from alfred_edge.quantize.structure import apply_structure

    return lambda device: apply_structure(model_from_record(payload["source"], device), payload.get("compression", []))


def load_variant(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """The model stored at `path` (models/<model>/<variant>.pt, fp32.pt included) on
    `device`, in eval mode.

    Raises VariantUnavailable (with the reason) when the variant cannot run on `device`
    here, or when the file records that it could not be built; ValueError for a file that
    is not a variant file."""
    path, device = Path(path), torch.device(device)
    payload = read_variant_file(path)
    if payload["format"] == MODEL_FORMAT:  # the trained file itself
        check_available("fp32", device)
        return conversion("fp32").load(skeleton_of({"source": header(payload)}), payload["state_dict"], device, path)
    variant = payload["variant"]
    if "unavailable" in payload:
        raise VariantUnavailable(variant, payload["unavailable"])
    check_available(variant, device)
    try:
        return conversion(variant).load(skeleton_of(payload), payload["state_dict"], device, path)
    except Exception as exc:  # packed int8 formats are private to a torch build
        if payload["torch_version"] != str(torch.__version__):
            raise VariantUnavailable(variant, f"{path} was written by torch {payload['torch_version']} "
                                     f"and does not load in torch {torch.__version__}; rerun its "
                                     f"quantize job with this torch ({exc})") from exc
        raise ValueError(f"{path} does not fit its model: {exc}") from exc
