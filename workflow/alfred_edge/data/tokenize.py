"""ALFRED's tokenisation (data/preprocess.py in askforalfred/alfred): whitespace collapsed and
lower-cased (its `remove_spaces_and_lower`), split by `revtok` (the PyPI package ALFRED
uses), then each token stripped and lower-cased as ALFRED numericalises it:
"Pick up the mug, then turn LEFT." -> [pick, up, the, mug, ",", then, turn, left, "."]."""
from __future__ import annotations

import revtok


def tokenize(text: str) -> list[str]:
    return [token.strip().lower() for token in revtok.tokenize(" ".join(text.split()).lower())]
