"""The file format of every model file: fp32.pt (written by training, alfred_edge.models) and
<variant>.pt (written by the quantize job, alfred_edge.quantize). A file is a plain dict
saved with torch.save and read with torch.load(weights_only=True), so reading one runs no
pickled code; its "format" key names the kind and its version:

    alfred-edge-model/1    the header (format, model, config, vocab_sizes, vocab_digest; see
                           alfred_edge.models.model_record; and what its writer noted:
                           best_epoch, imported_from, cost_only) and "state_dict"
    alfred-edge-variant/1  format, variant, engine (int8 only), torch_version, "source" (the
                           fp32 file's header) and "state_dict", or "unavailable": the reason
                           the variant could not be built, and no weights
"""
from __future__ import annotations

from pathlib import Path

MODEL_FORMAT = "alfred-edge-model/1"
VARIANT_FORMAT = "alfred-edge-variant/1"


def write_file(payload: dict, path: str | Path) -> None:
    """Save `payload` at `path`, atomically."""
    import torch

    from alfred_edge.atomic import atomic_path

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def read_file(path: str | Path, kind: str, formats: tuple[str, ...], device="cpu", allowed_globals=()) -> dict:
    """The dict stored at `path`, its tensors memory-mapped and placed on `device`. `kind`
    ("model", "variant") names the file in errors; `formats` are those accepted;
    `allowed_globals`, what torch.load may restore beyond weights_only's defaults."""
    import torch

    from alfred_edge.torch_compat import safe_globals

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    try:
        with safe_globals(list(allowed_globals)):
            record = torch.load(path, map_location=device, weights_only=True, mmap=True)
    except Exception as error:  # truncated, not a zip, objects beyond the allowed ones, or an incompatible torch
        raise ValueError(f"{path}: not a readable alfred-edge {kind} file ({type(error).__name__}: {error})") from error
    if not isinstance(record, dict) or record.get("format") not in formats:
        found = record.get("format") if isinstance(record, dict) else type(record).__name__
        expected = repr(formats[0]) if len(formats) == 1 else f"one of {formats}"
        raise ValueError(f"{path}: not an alfred-edge {kind} file (format {found!r}, expected {expected})")
    return record


def header(record: dict) -> dict:
    """A model file's dict without its weights: what rebuilding the model needs."""
    return {key: value for key, value in record.items() if key != "state_dict"}
