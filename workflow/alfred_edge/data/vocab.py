"""Vocabularies (data/store/vocab.json): `{"word": [...], "action_low": [...], "action_high": [...]}`,
a token's id its position in the list.

Built as ALFRED's data/preprocess.py builds them, from the training subset:

    word:        <<pad>>=0 <<seg>>=1 <<goal>>=2, then the words in order of first appearance,
                 annotation by annotation: the goal's tokens, <<goal>>, each instruction's
                 tokens, <<stop>> (so <<stop>> gets the id where it first appears)
    action_low:  <<pad>>=0 <<seg>>=1 <<stop>>=2, then ALFRED's 12 low actions (in the order of its
                 vocabulary of the full dataset), then any other action in order of appearance:
                 fixed, so that no subset of the data can leave a valid action out
    action_high: <<pad>>=0 <<seg>>=1 <<stop>>=2, then the high actions (GotoLocation, ...,
                 NoOp) in order of first appearance (ALFRED also adds the object arguments;
                 no model uses them, so they are left out)

With `models.lstm.init_from`, the vocabulary is the checkpoint's own instead
(`alfred_checkpoint.checkpoint_vocab`), so the store feeds that model ALFRED's ids.

A word the vocabulary lacks is read as <<pad>>, as ALFRED's successor E.T. does with ALFRED's
vocabulary (`numericalize(..., train=False)` in its data processing): ALFRED itself has no
unknown-word id (its vocabulary covers every split it preprocessed), and the <<pad>> row, like
an unknown word, is never trained (padding is packed away)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from alfred_edge.data.tokenize import tokenize

PAD, GOAL, ACTION_STOP = 0, 2, 2
WORD_SPECIALS = ["<<pad>>", "<<seg>>", "<<goal>>"]
ACTION_SPECIALS = ["<<pad>>", "<<seg>>", "<<stop>>"]
STOP_WORD = "<<stop>>"
LOW_ACTIONS = ["LookDown_15", "MoveAhead_25", "RotateLeft_90", "PickupObject", "SliceObject", "LookUp_15",
               "RotateRight_90", "OpenObject", "PutObject", "CloseObject", "ToggleObjectOn", "ToggleObjectOff"]
KINDS = ("word", "action_low", "action_high")
NON_INTERACT = ("MoveAhead", "Rotate", "Look", "<<stop>>", "<<pad>>", "<<seg>>")  # ALFRED's has_interaction


def _append_new(tokens: list[str], seen: dict[str, int], new: Iterable[str]) -> None:
    for token in new:
        if token not in seen:
            seen[token] = len(tokens)
            tokens.append(token)


def annotation_words(ann: dict) -> list[str]:
    """The tokens of one annotation in ALFRED's order: goal, <<goal>>, instructions, <<stop>>."""
    words = tokenize(ann["task_desc"]) + [WORD_SPECIALS[GOAL]]
    for desc in ann["high_descs"]:
        words += tokenize(desc)
    return words + [STOP_WORD]


def build_vocab(trajectories: Iterable[dict]) -> dict[str, list[str]]:
    """From parsed training traj_data.json dicts, in a fixed order."""
    vocab = {"word": list(WORD_SPECIALS), "action_low": ACTION_SPECIALS + LOW_ACTIONS,
             "action_high": list(ACTION_SPECIALS)}
    seen = {kind: {t: i for i, t in enumerate(tokens)} for kind, tokens in vocab.items()}
    for traj in trajectories:
        for ann in traj["turk_annotations"]["anns"]:
            _append_new(vocab["word"], seen["word"], annotation_words(ann))
        _append_new(vocab["action_low"], seen["action_low"],
                    (a["discrete_action"]["action"] for a in traj["plan"]["low_actions"]))
        _append_new(vocab["action_high"], seen["action_high"],
                    (h["discrete_action"]["action"] for h in traj["plan"]["high_pddl"]))
    _append_new(vocab["action_high"], seen["action_high"], ["NoOp"])
    return vocab


def check_vocab_file(vocab: dict, source) -> dict[str, list[str]]:
    """The vocabulary if it has every kind and ALFRED's special ids (the models and the store
    rely on them), else a ValueError naming `source`."""
    missing = [kind for kind in KINDS if kind not in vocab]
    if missing:
        raise ValueError(f"{source}: not a vocabulary file (missing {missing})")
    specials = {"word": WORD_SPECIALS, "action_low": ACTION_SPECIALS}
    for kind, want in specials.items():
        if list(vocab[kind][:len(want)]) != want:
            raise ValueError(f"{source}: {kind} starts with {vocab[kind][:len(want)]}, expected ALFRED's {want}")
    return vocab


def load_vocab(path: str | Path) -> dict[str, list[str]]:
    return check_vocab_file(json.loads(Path(path).read_text()), path)


def index(tokens: list[str]) -> dict[str, int]:
    return {token: i for i, token in enumerate(tokens)}


def vocab_text(vocab: dict[str, list[str]]) -> str:
    return json.dumps({kind: list(vocab[kind]) for kind in KINDS}, indent=1)


def interaction_actions(vocab: dict[str, list[str]]) -> list[bool]:
    """Per action_low id: True for the actions that act on an object (and so need a mask)."""
    return [not name.startswith(NON_INTERACT) for name in vocab["action_low"]]
