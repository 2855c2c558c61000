"""Variants on the onnxruntime backend: models/<model>/<variant>.onnx/, a folder holding the
encode, step and mask graphs (alfred_edge.backends.onnx_export) and variant.json:

    save_onnx_variant(float_model, "int8_dynamic", source, folder, settings, train_store)
    model = load_onnx_variant(folder, provider="cpu", threads=2)   # an OnnxRuntimeModel

The graphs are exported from the variant's float model (its structural steps applied: the
file of variants.float_part) and its precision step is then ONNX Runtime's own:

    fp32          the exported graphs as they are
    int8_dynamic  onnxruntime.quantization.quantize_dynamic: MatMuls with a constant weight
                  (weights int8 per output channel, activations quantized at run time) and the
                  encoder's LSTM
    int8_static   onnxruntime.quantization.quantize_static (QDQ): MatMuls with a constant
                  weight and convolutions, the activations' ranges calibrated on batches of
                  the train store run through the float graphs; the transposed convolutions
                  stay float (STATIC_OPS)

Both keep their weights within 7 bits (REDUCE_RANGE).

variant.json holds the format, the variant, the fp32 file's header (source), the structural
steps' records (compression), the onnxruntime version that built it, or "unavailable": the
reason it could not be built, and no graphs.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from alfred_edge import variants
from alfred_edge.variants import VariantUnavailable

ONNX_VARIANT_FORMAT = "alfred-edge-onnx-variant/1"
META = "variant.json"
DYNAMIC_OPS = ("MatMul", "LSTM")
# Not ConvTranspose: ONNX Runtime's CPU provider has no int8 kernel for it, so quantizing it
# only wraps the float kernel in a dequantize and a quantize pass.
STATIC_OPS = ("MatMul", "Conv")
# Weights in 7 bits (the quantizers' reduce_range): on x86 CPUs without VNNI, ONNX Runtime's
# uint8 x int8 kernels add pairs of products in int16, which 8-bit weights saturate. A folder
# may be built on one host and run on another, so every folder is safe on every host.
REDUCE_RANGE = True


def save_onnx_variant(float_model, variant: str, source: dict, folder: str | Path, settings: dict | None = None,
                      train_store=None) -> None:
    """Write `folder` (atomically) for `variant` of the float model (its structural steps
    already applied). Raises VariantUnavailable where the backend cannot build it here."""
    from alfred_edge.atomic import atomic_path
    from alfred_edge.backends.onnxruntime_model import import_onnxruntime
    from alfred_edge.quantize.conversions import calibration_batches

    error = variants.backend_error(variant, "onnxruntime")
    if error:
        raise VariantUnavailable(variant, error)
    ort = import_onnxruntime(variant)
    precision = variants.precision_step(variant)
    calibration = calibration_batches(train_store, settings[precision]) if precision == "int8_static" else None
    with atomic_path(folder, directory=True) as tmp:
        build_graphs(float_model, precision, tmp, source, calibration)
        _write_meta(tmp, variant, source, getattr(float_model, "compression", []), onnxruntime=ort.__version__)


def build_graphs(float_model, precision: str, folder: Path, source: dict, calibration=None) -> None:
    """folder/{encode,step,mask}.onnx: the float model's graphs with ONNX Runtime's precision
    step (fp32, int8_dynamic, or int8_static calibrated on the loader batches `calibration`)."""
    from alfred_edge.backends.onnx_export import GRAPH_NAMES, export_model

    if precision == "fp32":
        export_model(float_model, folder)
        return
    float_dir = folder / "float"
    export_model(float_model, float_dir)
    if precision == "int8_dynamic":
        _quantize_dynamic(float_dir, folder, GRAPH_NAMES)
    else:
        _quantize_static(float_dir, folder, GRAPH_NAMES, source, calibration)
    shutil.rmtree(float_dir)


def save_onnx_unavailable(variant: str, reason: str, source: dict, folder: str | Path) -> None:
    """A variant folder that holds only why the variant could not be built here."""
    from alfred_edge.atomic import atomic_path

    with atomic_path(folder, directory=True) as tmp:
        _write_meta(tmp, variant, source, [], unavailable=reason)


def _write_meta(folder: Path, variant: str, source: dict, compression: list, **extra) -> None:
    meta = {"format": ONNX_VARIANT_FORMAT, "variant": variant, "source": _plain(source),
            "compression": compression, **extra}  # fmt: skip
    (folder / META).write_text(json.dumps(meta, indent=1, sort_keys=True))


def _plain(header: dict) -> dict:
    """The header's JSON-able values (its config, vocabulary sizes and digest, ...)."""
    return json.loads(json.dumps(header, default=str))


def read_onnx_meta(folder: str | Path) -> dict:
    path = Path(folder) / META
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an onnxruntime variant folder (no {META})")
    meta = json.loads(path.read_text())
    if meta.get("format") != ONNX_VARIANT_FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {ONNX_VARIANT_FORMAT!r}")
    return meta


def load_onnx_variant(folder: str | Path, provider: str = "cpu", threads: int | None = None):
    """The OnnxRuntimeModel in `folder`; VariantUnavailable (with the reason) when the folder
    records that it could not be built, or the provider is missing here."""
    from alfred_edge.backends.onnxruntime_model import OnnxRuntimeModel

    meta = read_onnx_meta(folder)
    if "unavailable" in meta:
        raise VariantUnavailable(meta["variant"], meta["unavailable"])
    return OnnxRuntimeModel(folder, meta["source"], provider=provider, threads=threads, variant=meta["variant"])


# --- ONNX Runtime's quantizers ---------------------------------------------------------------


def _quantize_dynamic(source_dir: Path, out_dir: Path, graphs) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for name in graphs:
        quantize_dynamic(source_dir / f"{name}.onnx", out_dir / f"{name}.onnx", weight_type=QuantType.QInt8,
                         per_channel=True, reduce_range=REDUCE_RANGE, op_types_to_quantize=list(DYNAMIC_OPS),
                         extra_options={"MatMulConstBOnly": True})


def _quantize_static(source_dir: Path, out_dir: Path, graphs, source: dict, batches) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    feeds = calibration_feeds(source_dir, source, batches)
    for name in graphs:
        quantize_static(source_dir / f"{name}.onnx", out_dir / f"{name}.onnx", ListReader(feeds[name]),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=list(STATIC_OPS), per_channel=True,
                        reduce_range=REDUCE_RANGE,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, extra_options={"MatMulConstBOnly": True})


class ListReader:
    """onnxruntime.quantization.CalibrationDataReader over recorded feeds."""

    def __init__(self, feeds: list):
        self.feeds = iter(feeds)

    def get_next(self):
        return next(self.feeds, None)


def calibration_feeds(float_dir: Path, source: dict, batches) -> dict:
    """{graph: [feeds]}: every input each float graph received while the float model decoded
    `batches` (the loader's batches; teacher forcing, masks at the expert's interaction steps)."""
    import torch

    from alfred_edge.backends.onnxruntime_model import OnnxRuntimeModel

    model = OnnxRuntimeModel(float_dir, _plain(source), threads=torch.get_num_threads())
    with model.recording() as recorded:
        for batch in batches:
            model(batch, teacher_forcing=True)
    return recorded
