"""The two models and their files.

    model = build_model("lstm", config, vocab)      # vocab: data/store/vocab.json's dict
    state = model.encode(lang, lang_lengths)        # [B,L], [B]
    action_logits, mask_logits, state = model.step(state, frames_t, prev_action)
    out = model(batch)                              # whole sequences, for training
    save_model(model, "models/lstm/fp32.pt");  model = load_model("models/lstm/fp32.pt", "cuda")

A model file (`fp32.pt`, format: models/file_format.py) holds the model name, architecture
config, vocabulary sizes and digest, and the state dict. The digest ties the weights to the
store's vocab.json; `check_vocab` turns a mismatch into an error naming both files.
"""
from __future__ import annotations

import hashlib
import json
from contextlib import contextmanager

from .file_format import MODEL_FORMAT, read_file, write_file
from .sizes import DEFAULTS, architecture, parameter_count

MODEL_NAMES = tuple(DEFAULTS)
VOCAB_KINDS = ("word", "action_low")  # what the models use from vocab.json


def vocab_sizes(vocab) -> dict:
    return {kind: len(vocab[kind]) for kind in VOCAB_KINDS}


def vocab_digest(vocab) -> str:
    """Content digest of the vocabularies a model depends on (token order included)."""
    text = json.dumps({kind: list(vocab[kind]) for kind in VOCAB_KINDS}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_model(name: str, config: dict, vocab):
    """A freshly initialised model `name` ("lstm" | "transformer") for `vocab`; `config` is the
    model's config section (architecture keys; others such as `train` are ignored)."""
    return _construct(name, config, vocab_sizes(vocab), vocab_digest(vocab))


def model_class(name: str):
    """The class of model `name`, its module imported (the transformer's imports transformers,
    which takes seconds: the benchmark imports it before it times a model load)."""
    architecture(name, {})  # raises on an unknown name
    if name == "lstm":
        from .lstm import Seq2SeqImMask

        return Seq2SeqImMask
    from .transformer import Seq2SeqTransformer

    return Seq2SeqTransformer


def _construct(name, config, sizes, digest):
    architecture(name, config)  # raises on an unknown name
    model = model_class(name)(config, sizes)
    model.vocab_sizes = dict(sizes)
    model.vocab_digest = digest
    return model


def model_from_record(record: dict, device="cpu"):
    """The model a file's header describes (model, config, vocab_sizes, vocab_digest), built
    on `device`. On "meta" its weights are left uninitialised, for load_weights to assign."""
    import torch

    with torch.device(device), _no_init_on_meta(device):
        return _construct(record["model"], record["config"], record["vocab_sizes"], record["vocab_digest"])


@contextmanager
def _no_init_on_meta(device):
    """On the meta device, torch.nn.init's functions become no-ops: the values are never
    used, and init.normal_ on a meta tensor imports torch._dynamo (a costly import, in
    every benchmark process that loads an `lstm`)."""
    from torch.nn import init

    if str(device) != "meta":
        yield
        return
    names = [n for n in dir(init) if n.endswith("_") and not n.startswith("_") and callable(getattr(init, n))]
    saved = {name: getattr(init, name) for name in names}
    for name in names:
        setattr(init, name, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for name, function in saved.items():
            setattr(init, name, function)


def model_record(model) -> dict:
    """What a model file holds besides the weights."""
    return {
        "format": MODEL_FORMAT,
        "model": model.name,
        "config": dict(model.config),
        "vocab_sizes": dict(model.vocab_sizes),
        "vocab_digest": model.vocab_digest,
    }


def save_model(model, path, **extra) -> None:
    """Write the model's float weights and record atomically (extra: plain values to keep)."""
    write_file({**model_record(model), **extra, "state_dict": model.state_dict()}, path)


def read_model_file(path, device="cpu") -> dict:
    """The dict of a model file, its tensors memory-mapped and placed on `device`."""
    return read_file(path, "model", (MODEL_FORMAT,), device)


def load_model(path, device="cpu", vocab_path=None):
    """Load a model file straight onto `device` (eval mode): the skeleton is built on the meta
    device and the memory-mapped tensors are assigned, so no second full copy is made in host
    memory. With vocab_path, check that the store's vocabulary is the one it was trained on."""
    record = read_model_file(path, device)
    if vocab_path is not None:
        check_vocab(record, vocab_path, path)
    model = model_from_record(record, "meta")
    load_weights(model, record["state_dict"], path)
    return model.eval()


def load_weights(model, state_dict, source) -> None:
    """load_state_dict(assign=True) with errors that name the file and the mismatched keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong = [f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
             for k in own if k in state_dict and state_dict[k].shape != own[k].shape]  # fmt: skip
    if missing or unexpected or wrong:
        raise ValueError(
            f"{source}: weights do not fit model {model.name!r}: missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}, wrong shapes {wrong[:8]}"
        )
    model.load_state_dict(state_dict, assign=True)
    left = [name for name, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise ValueError(f"{source}: no weights for {left[:8]}")


def check_vocab(record_or_model, vocab_path, source=None) -> None:
    """Raise if the model (or model file record) was trained on another vocabulary."""
    from alfred_edge.data.vocab import load_vocab

    vocab = load_vocab(vocab_path)
    get = record_or_model.get if isinstance(record_or_model, dict) else lambda k: getattr(record_or_model, k)
    if get("vocab_digest") != vocab_digest(vocab):
        raise ValueError(
            f"{source or 'model'}: trained on another vocabulary than {vocab_path} "
            f"(model sizes {get('vocab_sizes')}, store sizes {vocab_sizes(vocab)}, digests "
            f"{get('vocab_digest')} vs {vocab_digest(vocab)}); retrain it on this store"
        )


__all__ = [
    "MODEL_NAMES", "build_model", "model_class", "load_model", "save_model", "read_model_file", "check_vocab",
    "vocab_digest", "vocab_sizes", "parameter_count", "architecture",
]  # fmt: skip

