"""Vocabularies (data/store/vocab.json), built from the training subset.

    word:        <<pad>>=0 <<seg>>=1 <<goal>>=2 (ALFRED's indices), <<stop>>=3, <<unk>>=4,
                 then the training subset's words in order of first appearance
                 (valid words never seen in training map to <<unk>>)
    action_low:  <<pad>>=0 <<seg>>=1 <<stop>>=2 (ALFRED's indices), then the low actions
                 in order of first appearance
    action_high: <<pad>>=0 <<seg>>=1 <<stop>>=2, then the high actions (GotoLocation, ...,
                 NoOp) in order of first appearance (ALFRED also adds the object arguments;
                 no model uses them, so they are left out)

The file is `{"word": [...], "action_low": [...], "action_high": [...]}`: a token's id is
its position in the list."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from alfred_edge.data.tokenize import tokenize

PAD, SEG, GOAL, STOP_WORD, UNK = 0, 1, 2, 3, 4
WORD_SPECIALS = ["<<pad>>", "<<seg>>", "<<goal>>", "<<stop>>", "<<unk>>"]
ACTION_STOP = 2
ACTION_SPECIALS = ["<<pad>>", "<<seg>>", "<<stop>>"]
KINDS = ("word", "action_low", "action_high")
NON_INTERACT = ("MoveAhead", "Rotate", "Look", "<<stop>>", "<<pad>>", "<<seg>>")  # ALFRED's has_interaction


def _append_new(tokens: list[str], seen: dict[str, int], new: Iterable[str]) -> None:
    for token in new:
        if token not in seen:
            seen[token] = len(tokens)
            tokens.append(token)


def build_vocab(trajectories: Iterable[dict]) -> dict[str, list[str]]:
    """From parsed training traj_data.json dicts, in a fixed order."""
    vocab = {"word": list(WORD_SPECIALS), "action_low": list(ACTION_SPECIALS),
             "action_high": list(ACTION_SPECIALS)}
    seen = {kind: {t: i for i, t in enumerate(tokens)} for kind, tokens in vocab.items()}
    for traj in trajectories:
        for ann in traj["turk_annotations"]["anns"]:
            _append_new(vocab["word"], seen["word"], tokenize(ann["task_desc"]))
            for desc in ann["high_descs"]:
                _append_new(vocab["word"], seen["word"], tokenize(desc))
        _append_new(vocab["action_low"], seen["action_low"],
                    (a["discrete_action"]["action"] for a in traj["plan"]["low_actions"]))
        _append_new(vocab["action_high"], seen["action_high"],
                    (h["discrete_action"]["action"] for h in traj["plan"]["high_pddl"]))
    _append_new(vocab["action_high"], seen["action_high"], ["NoOp"])
    return vocab


def load_vocab(path: str | Path) -> dict[str, list[str]]:
    vocab = json.loads(Path(path).read_text())
    missing = [kind for kind in KINDS if kind not in vocab]
    if missing:
        raise ValueError(f"{path}: not a vocabulary file (missing {missing})")
    return vocab


def index(tokens: list[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(tokens)}


def vocab_text(vocab: dict[str, list[str]]) -> str:
    return json.dumps({kind: vocab[kind] for kind in KINDS}, indent=1)


def interaction_actions(vocab: dict[str, list[str]]) -> list[bool]:
    """Per action_low id: True for the actions that act on an object (and so need a mask)."""
    return [not name.startswith(NON_INTERACT) for name in vocab["action_low"]]
