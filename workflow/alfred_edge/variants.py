"""The compression variants of a model: the one list of their names and of what is known of
each before anything is built. Pure Python, so that the workflow (when it parses), the
storage plan and the report read it without torch.

    fp32          the trained model as is (models/<model>/fp32.pt, written by training)
    int8_dynamic  torch.ao dynamic int8 of Linear, LSTM and LSTMCell (CPU only); embeddings,
                  convolutions and any Linear tied to an embedding stay float
    fp16, bf16    every floating weight and buffer cast to half / bfloat16

A variant is one entry of VARIANTS here plus its conversion (check, build, load) in
alfred_edge.quantize.conversions, under the same name.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    size_fraction: float  # its file's bytes relative to fp32's, for the storage plan made before any is built
    devices: tuple[str, ...]  # the devices its kernels run on
    colour: str  # its colour in the report's figures


VARIANTS = {variant.name: variant for variant in (
    Variant("fp32", "the trained model as is", 1.0, ("cpu", "cuda"), "#1f77b4"),
    # weights dominate the file; the embeddings and convolutions int8 leaves float keep it above a quarter
    Variant("int8_dynamic", "dynamic int8 of Linear, LSTM and LSTMCell (torch.ao)", 0.3, ("cpu",), "#d62728"),
    Variant("fp16", "weights and buffers in float16", 0.5, ("cpu", "cuda"), "#2ca02c"),
    Variant("bf16", "weights and buffers in bfloat16", 0.5, ("cpu", "cuda"), "#9467bd"),
)}  # fmt: skip
NAMES = tuple(VARIANTS)
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


def get(name: str) -> Variant:
    """The registry's entry for `name`; VariantUnavailable for a name it does not know."""
    if name not in VARIANTS:
        raise VariantUnavailable(name, f"unknown variant; known: {', '.join(NAMES)}")
    return VARIANTS[name]
