"""A small deterministic tokenizer in place of ALFRED's `revtok` (no extra dependency).

Like ALFRED (`remove_spaces_and_lower`, `revtok.tokenize`, then `w.strip().lower()`), text is
lower-cased and split into words and single punctuation marks: "Pick up the mug, then
turn left." -> [pick, up, the, mug, ",", then, turn, left, "."]. Differences from revtok:
tokens carry no attached spaces (ALFRED strips them before numericalising anyway), runs of
punctuation are split into single marks (revtok keeps e.g. "..." together), and an
underscore counts as punctuation."""
from __future__ import annotations

import re

_TOKEN = re.compile(r"[^\W_]+|[^\w\s]|_")


def tokenize(text: str) -> list[str]:
    return _TOKEN.findall(" ".join(text.split()).lower())
