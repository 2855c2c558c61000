"""Compression variants of a trained model (their names and facts: alfred_edge.variants).

    model = make_variant(float_model, "int8_dynamic")       # conversions.py: check, build, load per variant
    save_variant(model, "int8_dynamic", header, "models/lstm/int8_dynamic.pt")   # files.py
    model = load_variant("models/lstm/int8_dynamic.pt", "cpu")    # fp32.pt too; VariantUnavailable
    row = quantize_job(...)                                 # job.py: the quantize rule's job and its eval table
"""
from alfred_edge.models.file_format import header as model_header
from alfred_edge.quantize.conversions import check_available, choose_engine, make_variant
from alfred_edge.quantize.files import load_variant, read_variant_file, save_unavailable, save_variant
from alfred_edge.quantize.job import eval_table, quantize_job
from alfred_edge.variants import NAMES as VARIANTS
from alfred_edge.variants import VariantUnavailable

__all__ = [
    "VARIANTS", "VariantUnavailable", "check_available", "choose_engine", "eval_table", "load_variant", "make_variant",
    "model_header", "quantize_job", "read_variant_file", "save_unavailable", "save_variant",
]  # fmt: skip
