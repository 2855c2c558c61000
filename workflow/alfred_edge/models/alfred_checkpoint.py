"""Import an ALFRED checkpoint (`best_seen.pth` of askforalfred/alfred) into the `lstm` model,
without ALFRED's code and without the `vocab` package.

ALFRED saves `{'metric', 'model': state_dict, 'optim': Adam state, 'args': argparse.Namespace,
'vocab': {'word', 'action_low', 'action_high': vocab.Vocab}}`, in PyTorch's zip format or, as
its released checkpoints are, the pre-1.6 one. It is read with torch.load(weights_only=True),
PyTorch's restricted unpickler, admitting beyond tensors and plain containers only
argparse.Namespace, collections.Counter and a stand-in for `vocab.vocab.Vocab` (the class of
every PyPI release of `vocab`; attributes `_index2word`, `_word2index`, `counts`): anything
else in the pickle is refused with an error naming it, so a foreign file cannot run code.

The checkpoint's vocabulary is the store's (the vocab rule writes it to data/store/vocab.json
when models.lstm.init_from is set), so the model reads exactly the ids ALFRED gave its words.
"""
from __future__ import annotations

import argparse
import collections
import logging
import re
from pathlib import Path

import torch

from alfred_edge.data.vocab import KINDS, check_vocab_file
from alfred_edge.torch_compat import safe_globals

from . import build_model, load_weights, vocab_digest

log = logging.getLogger(__name__)
REQUIRED = ("model", "args", "vocab")
SIZES = ("demb", "dhid", "dframe", "pframe")  # what the weights' shapes fix


class AlfredVocab:
    """Stand-in for `vocab.vocab.Vocab`: unpickling restores its attributes, nothing runs."""

    _index2word: list

    def words(self) -> list[str]:
        return list(self._index2word)


ALLOWED_GLOBALS = [argparse.Namespace, collections.Counter, (AlfredVocab, "vocab.vocab.Vocab")]


def read_alfred_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such ALFRED checkpoint")
    try:
        with safe_globals(ALLOWED_GLOBALS):
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"{path}: not a readable ALFRED checkpoint ({load_error(error)})") from error
    missing = [key for key in REQUIRED if not isinstance(ckpt, dict) or key not in ckpt]
    if missing:
        raise ValueError(f"{path}: not an ALFRED checkpoint (missing {missing}; expected keys {list(REQUIRED)})")
    return ckpt


def load_error(error: Exception) -> str:
    """What refused a file: the global the restricted unpickler did not admit (PyTorch's own
    message goes on to suggest weights_only=False, which would run the file's code), else the
    error's first line."""
    refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
    if refused:
        return (f"its pickle names {refused.group(1)}, which is not admitted; admitted beyond tensors: "
                "argparse.Namespace, collections.Counter, vocab.vocab.Vocab")
    return f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


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


def checkpoint_vocab(ckpt, path) -> dict[str, list[str]]:
    """The checkpoint's vocabularies as vocab.json holds them."""
    vocabs = ckpt["vocab"]
    if not isinstance(vocabs, dict) or not all(isinstance(vocabs.get(kind), AlfredVocab) for kind in KINDS):
        raise ValueError(f"{path}: its 'vocab' is not ALFRED's {{{', '.join(KINDS)}: vocab.Vocab}}")
    return check_vocab_file({kind: vocabs[kind].words() for kind in KINDS}, path)


def read_checkpoint_vocab(path) -> dict[str, list[str]]:
    return checkpoint_vocab(read_alfred_checkpoint(path), path)


def check_sizes(checkpoint_config: dict, model_config: dict, path) -> None:
    """The config's sizes must be the checkpoint's: they size the model files in the plan."""
    wrong = [f"{key}: {model_config[key]} in the config, {checkpoint_config[key]} in the checkpoint"
             for key in SIZES if key in model_config and model_config[key] != checkpoint_config[key]]
    if wrong:
        raise ValueError(f"models.lstm: the sizes differ from {path} ({'; '.join(wrong)}); set the checkpoint's "
                         "sizes (ALFRED's: config/alfred.yaml)")


def import_alfred_checkpoint(path, model_config=None, vocab=None, overrides=None):
    """An `lstm` model with the checkpoint's weights, unchanged (CPU, eval mode).

    model_config: the config's models.lstm section, whose sizes must be the checkpoint's.
    vocab: the store's vocabulary, which must be the checkpoint's own. overrides: config keys
    to change (the dropouts, for fine-tuning)."""
    ckpt = read_alfred_checkpoint(path)
    own_vocab = checkpoint_vocab(ckpt, path)
    config = alfred_config(ckpt["args"])
    check_sizes(config, model_config or {}, path)
    if vocab is not None and vocab_digest(vocab) != vocab_digest(own_vocab):
        raise ValueError(f"{path}: the store's vocabulary is not the checkpoint's; rebuild data/store/vocab.json "
                         "with models.lstm.init_from set to this checkpoint (the vocab rule)")
    model = build_model("lstm", {**config, **(overrides or {})}, own_vocab)
    load_weights(model, dict(ckpt["model"]), path)
    log.info("imported %s: %s", path, {key: config[key] for key in SIZES})
    return model.eval()
