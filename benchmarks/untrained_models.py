"""Untrained model files in the pipeline's format (models/<model>/<variant>.pt), for the
benchmarks that measure cost (latency, memory, file size) without training first: none of
these depends on the weights' values."""
from __future__ import annotations

from pathlib import Path

import yaml

from alfred_edge import quantize
from alfred_edge.models import build_model, model_record, save_model

REPO = Path(__file__).resolve().parents[1]
SIZES = ("demb", "dhid", "dframe", "pframe")


def alfred_lstm_sizes() -> dict:
    """The sizes of ALFRED's seq2seq_im_mask, as config/alfred.yaml (the real case) sets them."""
    lstm = yaml.safe_load((REPO / "config" / "alfred.yaml").read_text())["models"]["lstm"]
    return {key: lstm[key] for key in SIZES}


def build_models(models: dict, variants, vocab: dict, out_dir: Path) -> Path:
    """out_dir/<model>/<variant>.pt for each of `models` ({name: config}) and `variants`, as
    the train and quantize jobs write them; a variant this host cannot make gets a file
    recording why, as a quantize job's does. Returns out_dir."""
    for name, config in models.items():
        model = build_model(name, config, vocab).eval()
        save_model(model, out_dir / name / "fp32.pt")
        for variant in variants:
            if variant == "fp32":
                continue
            path = out_dir / name / f"{variant}.pt"
            try:
                quantize.save_variant(quantize.make_variant(model, variant), variant, model_record(model), path)
            except quantize.VariantUnavailable as exc:
                quantize.save_unavailable(variant, exc.reason, model_record(model), path)
    return out_dir
