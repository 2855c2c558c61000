"""ALFRED's golden fixture (tests/data/alfred-golden, made by ALFRED's own code): its
checkpoints, its numericalisation of the sample and its outputs on fixed inputs."""
from __future__ import annotations

import json
from functools import lru_cache

import torch

from conftest import ALFRED_GOLDEN

CHECKPOINTS = ("best_seen.pth", "best_seen_legacy.pth")  # zip and pre-1.6 format


def golden_checkpoint(name: str) -> dict:
    from alfred_edge.models.alfred_checkpoint import read_alfred_checkpoint

    return read_alfred_checkpoint(ALFRED_GOLDEN / name)


@lru_cache(maxsize=1)
def numericalized() -> dict:
    """{"vocab": {kind: [token, ...]}, "annotations": {"<split>/<task>/<repeat_idx>": ids}}."""
    return json.loads((ALFRED_GOLDEN / "numericalized.json").read_text())


@lru_cache(maxsize=1)
def cases() -> dict:
    """{"b1": ..., "b3": ...}: model inputs and ALFRED's outputs (see the fixture's README)."""
    return torch.load(ALFRED_GOLDEN / "cases.pt", weights_only=True)["cases"]
