"""ALFRED's tokenisation (data/preprocess.py in askforalfred/alfred): whitespace collapsed and
lower-cased (its `remove_spaces_and_lower`), split by `revtok` (the PyPI package ALFRED
uses), then each token stripped and lower-cased as ALFRED numericalises it:
"Pick up the mug, then turn LEFT." -> [pick, up, the, mug, ",", then, turn, left, "."]."""
from __future__ import annotations


def tokenize(text: str) -> list[str]:
    # Imported here: the benchmark's measuring side reads vocabularies (data.vocab) on boards
    # that have only torch, numpy, psutil and pyarrow; revtok (and its tqdm) is the data stage's.
    import revtok

    return [token.strip().lower() for token in revtok.tokenize(" ".join(text.split()).lower())]
