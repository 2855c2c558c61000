"""Import an ALFRED checkpoint (`best_seen.pth` of askforalfred/alfred) into the `lstm` model,
without ALFRED's code and without the `vocab` package.

ALFRED saves `{'metric', 'model': state_dict, 'optim': Adam state, 'args': argparse.Namespace,
'vocab': {'word', 'action_low', 'action_high': vocab.Vocab}}`. It is read with
torch.load(weights_only=True), PyTorch's restricted unpickler, admitting beyond tensors and
plain containers only argparse.Namespace, collections.Counter and a stand-in for `vocab.Vocab`
(attributes `_index2word`, `_word2index`, `counts`): anything else in the pickle is refused
with an error naming it, so a foreign file cannot run code.
"""
from __future__ import annotations

import argparse
import collections
import logging
from pathlib import Path

import torch

from . import build_model, load_weights, vocab_sizes

log = logging.getLogger(__name__)
REQUIRED = ("model", "args", "vocab")


class AlfredVocab:
    """Stand-in for `vocab.Vocab`: unpickling restores its attributes, nothing runs."""

    _index2word: list

    def words(self) -> list[str]:
        return list(self._index2word)


ALLOWED_GLOBALS = [argparse.Namespace, collections.Counter, (AlfredVocab, "vocab.Vocab")]


def read_alfred_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ALFRED checkpoint")
    try:
        with torch.serialization.safe_globals(ALLOWED_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable ALFRED checkpoint ({type(error).__name__}: {error})") from error
    missing = [key for key in REQUIRED if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f"{path}: not an ALFRED checkpoint (missing {missing}; expected keys {list(REQUIRED)})")
    return ckpt


def alfred_config(args: argparse.Namespace) -> dict:
    """The `lstm` config of a checkpoint's training arguments (ALFRED's defaults where an
    older checkpoint lacks one)."""
    a = vars(args)
    aux = a.get("subgoal_aux_loss_wt", 0.0) > 0 or a.get("pm_aux_loss_wt", 0.0) > 0
    config = {key: a.get(key, default) for key, default in
              {"demb": 100, "dhid": 512, "dframe": 2500, "pframe": 300, "vis_dropout": 0.3,
               "hstate_dropout": 0.3, "lang_dropout": 0.0, "input_dropout": 0.0,
               "attn_dropout": 0.0, "actor_dropout": 0.0}.items()}  # fmt: skip
    return {**config, "progress_monitor": bool(aux), "teacher_forcing": bool(a.get("dec_teacher_forcing", False))}


def checkpoint_vocab(ckpt) -> dict:
    return {kind: ckpt["vocab"][kind].words() for kind in ("word", "action_low")}


def _remap_rows(weight, from_tokens, to_tokens, fresh):
    """Rows of an embedding indexed by `from_tokens`, reordered to `to_tokens`; tokens the
    checkpoint lacks keep the fresh model's rows. Returns (weight, missing tokens)."""
    index = {token: i for i, token in enumerate(from_tokens)}
    out = fresh.clone()
    missing = []
    for j, token in enumerate(to_tokens):
        if token in index:
            out[j] = weight[index[token]]
        else:
            missing.append(token)
    return out, missing


def import_alfred_checkpoint(path, vocab=None, overrides=None):
    """An `lstm` model with the checkpoint's weights (CPU, eval mode).

    vocab: the store's vocabulary. Given, the embedding rows are reordered to its token ids
    (so the model reads this store's ids); words the checkpoint never saw keep fresh rows
    (logged), while an action it lacks is an error. Without it, the checkpoint's own
    vocabulary is used. overrides: config keys to change (e.g. dropouts for fine-tuning)."""
    ckpt = read_alfred_checkpoint(path)
    own_vocab = checkpoint_vocab(ckpt)
    config = {**alfred_config(ckpt["args"]), **(overrides or {})}
    target = own_vocab if vocab is None else vocab
    model = build_model("lstm", config, target)
    state = dict(ckpt["model"])
    if vocab is not None:
        fresh = model.state_dict()
        state["emb_word.weight"], new_words = _remap_rows(
            state["emb_word.weight"], own_vocab["word"], vocab["word"], fresh["emb_word.weight"])
        actions, new_actions = _remap_rows(
            state["emb_action_low.weight"], own_vocab["action_low"], vocab["action_low"], fresh["emb_action_low.weight"])
        if new_actions:
            raise ValueError(f"{path}: the checkpoint has no embedding for actions {new_actions} of the store's vocabulary")
        state["emb_action_low.weight"] = state["dec.emb.weight"] = actions
        if new_words:
            log.warning("%s: %d store words not in the checkpoint keep fresh embeddings (e.g. %s)",
                        path, len(new_words), new_words[:5])
        log.info("imported %s for vocabulary sizes %s", path, vocab_sizes(vocab))
    load_weights(model, state, path)
    return model.eval()
