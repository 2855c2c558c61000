"""Importing an ALFRED-format checkpoint (best_seen.pth) through the restricted unpickler."""
import argparse
import collections
import sys
import types

import pytest
import torch

from alfred_edge.models import build_model
from alfred_edge.models.alfred_checkpoint import import_alfred_checkpoint, read_alfred_checkpoint

from model_inputs import one_thread, random_batch, tiny_vocab  # noqa: F401 (fixture)
ALFRED_ARGS = dict(demb=16, dhid=24, dframe=40, pframe=300, vis_dropout=0.3, hstate_dropout=0.3,
                   lang_dropout=0.0, input_dropout=0.0, attn_dropout=0.0, actor_dropout=0.0,
                   subgoal_aux_loss_wt=0.1, pm_aux_loss_wt=0.1, seed=123, batch=8, lr=1e-4)


def _fake_vocab_module():
    """A module named `vocab` with a class `Vocab`, like the PyPI package ALFRED pickles."""
    module = types.ModuleType("vocab")

    class Vocab:
        def __init__(self, words):
            self._index2word = list(words)
            self._word2index = {w: i for i, w in enumerate(words)}
            self.counts = collections.Counter(words)

    Vocab.__module__, Vocab.__qualname__ = "vocab", "Vocab"
    module.Vocab = Vocab
    return module


def _write_alfred(path, model, vocab, args, monkeypatch, legacy=False):
    """torch.save a checkpoint as ALFRED's seq2seq.Module.save_model does, with `vocab.Vocab`
    objects pickled from a fake `vocab` module that is gone again afterwards."""
    module = _fake_vocab_module()
    monkeypatch.setitem(sys.modules, "vocab", module)
    ckpt = {
        "metric": {"action_low_f1": 0.5},
        "model": model.state_dict(),
        "optim": torch.optim.Adam(model.parameters(), lr=1e-3).state_dict(),
        "args": argparse.Namespace(**args),
        "vocab": {kind: module.Vocab(vocab[kind]) for kind in ("word", "action_low", "action_high")},
    }
    # legacy: the pre-1.6 (non-zip) format that ALFRED's torch 1.1 wrote
    torch.save(ckpt, path, _use_new_zipfile_serialization=not legacy)
    monkeypatch.delitem(sys.modules, "vocab")  # the importer must not need the package


@pytest.fixture(params=["zip", "legacy"])
def alfred_file(request, tmp_path, monkeypatch):
    vocab = tiny_vocab()
    torch.manual_seed(0)
    model = build_model("lstm", {**ALFRED_ARGS, "progress_monitor": True}, vocab).eval()
    path = tmp_path / "best_seen.pth"
    _write_alfred(path, model, vocab, ALFRED_ARGS, monkeypatch, legacy=request.param == "legacy")
    return path, model, vocab


def _outputs(model, batch):
    with torch.no_grad():
        return model(batch, teacher_forcing=True)


def test_imported_checkpoint_reproduces_outputs_exactly(alfred_file):
    path, exported, vocab = alfred_file
    assert "vocab" not in sys.modules
    imported = import_alfred_checkpoint(path)
    assert imported.dec.progress_monitor and imported.config["dhid"] == ALFRED_ARGS["dhid"]
    assert imported.dec.emb is imported.emb_action_low  # the tie survives the import
    batch = random_batch(vocab, seed=3)
    want, got = _outputs(exported, batch), _outputs(imported, batch)
    for key in ("action_logits", "mask_logits", "subgoal", "progress"):
        assert torch.equal(want[key], got[key]), key


def test_import_reorders_embeddings_to_the_store_vocabulary(alfred_file):
    path, exported, vocab = alfred_file
    store_vocab = {kind: list(reversed(vocab[kind])) for kind in ("word", "action_low")}
    imported = import_alfred_checkpoint(path, vocab=store_vocab)
    word = vocab["word"][7]
    new_id = store_vocab["word"].index(word)
    assert torch.equal(imported.emb_word.weight[new_id], exported.emb_word.weight[7])
    assert imported.dec.emb is imported.emb_action_low
    assert torch.equal(imported.emb_action_low.weight[0], exported.emb_action_low.weight[-1])


def test_import_refuses_an_action_the_checkpoint_lacks(alfred_file):
    path, _, vocab = alfred_file
    store_vocab = {"word": vocab["word"], "action_low": vocab["action_low"] + ["Teleport"]}
    with pytest.raises(ValueError, match=r"best_seen.pth.*Teleport"):
        import_alfred_checkpoint(path, vocab=store_vocab)


def test_import_names_mismatched_weights(alfred_file, tmp_path, monkeypatch):
    _, model, vocab = alfred_file
    bad = tmp_path / "bad.pth"
    _write_alfred(bad, model, vocab, {**ALFRED_ARGS, "dframe": 48}, monkeypatch)  # weights: dframe 40
    with pytest.raises(ValueError, match=r"bad.pth.*dec.vis_encoder.fc.weight"):
        import_alfred_checkpoint(bad)


def test_foreign_pickle_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": Evil(), "vocab": {}}, path)
    with pytest.raises(ValueError, match="evil.pth"):
        read_alfred_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04truncated"])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "best_seen.pth"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="best_seen.pth"):
        read_alfred_checkpoint(path)


def test_a_plain_state_dict_is_not_an_alfred_checkpoint(tmp_path):
    path = tmp_path / "weights.pth"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match=r"weights.pth.*missing \['model', 'args', 'vocab'\]"):
        read_alfred_checkpoint(path)
