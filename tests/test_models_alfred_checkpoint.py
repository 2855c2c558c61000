"""Importing ALFRED's checkpoints (best_seen.pth) through the restricted unpickler: the golden
checkpoints made by ALFRED's own code reproduce ALFRED's outputs, and nothing else is admitted."""
import argparse
import json
import sys
import types

import pytest
import torch

from alfred_edge.data.vocab import vocab_text
from alfred_edge.models.alfred_checkpoint import import_alfred_checkpoint, read_alfred_checkpoint
from alfred_edge.train import import_model

from alfred_golden import CHECKPOINTS, cases, golden_checkpoint, numericalized
from conftest import ALFRED_GOLDEN
from model_inputs import one_thread  # noqa: F401 (fixture)

TOLERANCE = 1e-5  # the fixture's README: alfred-edge's lstm within 1e-6 of ALFRED's outputs


def case_batch(case: dict) -> dict:
    keys = ("lang", "lang_lengths", "frames", "frame_lengths", "actions", "valid_interact")
    return {key: case[key].float() if key == "frames" else case[key] for key in keys}


def step_loop(model, batch):
    """ALFRED's eval step loop: its own argmax fed back, a mask at every step.
    -> action logits [B,T,A], mask logits [B,T,1,P,P]."""
    state = model.encode(batch["lang"], batch["lang_lengths"])
    logits, masks = [], []
    for t in range(batch["frames"].shape[1]):
        action_t, mask_t, state = model.step(state, batch["frames"][:, t])
        logits.append(action_t)
        masks.append(mask_t)
    return torch.stack(logits, 1), torch.stack(masks, 1)


@pytest.fixture(scope="module", params=CHECKPOINTS)
def imported(request):
    assert "vocab" not in sys.modules  # ALFRED's vocab package is not needed
    return import_alfred_checkpoint(ALFRED_GOLDEN / request.param)


@pytest.mark.parametrize("name", ["b1", "b3"])
def test_golden_checkpoints_reproduce_alfreds_outputs(imported, name):
    case = cases()[name]
    batch = case_batch(case)
    with torch.no_grad():
        forced = imported(batch, teacher_forcing=True)
        free_logits, free_masks = step_loop(imported, batch)
        free_forward = imported(batch, teacher_forcing=False)  # what evaluate's free_loss reads
    torch.testing.assert_close(forced["action_logits"], case["tf_action_logits"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(forced["mask_logits"], case["tf_mask_logits_interact"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(free_logits, case["fr_action_logits"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(free_forward["action_logits"], case["fr_action_logits"], atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(free_masks[case["fr_interact"]], case["fr_mask_logits_interact"],
                               atol=TOLERANCE, rtol=0)


def test_imported_model_has_the_checkpoints_sizes_vocabulary_and_tie(imported):
    sizes = torch.load(ALFRED_GOLDEN / "cases.pt", weights_only=True)["sizes"]
    assert {key: imported.config[key] for key in sizes} == sizes
    golden_vocab = numericalized()["vocab"]
    assert imported.vocab_sizes == {kind: len(golden_vocab[kind]) for kind in ("word", "action_low")}
    assert imported.dec.emb is imported.emb_action_low  # ALFRED's tied action embedding


@pytest.fixture
def golden_store(tmp_path):
    """A store folder whose vocab.json is ALFRED's vocabulary of the golden checkpoint."""
    (tmp_path / "vocab.json").write_text(vocab_text(numericalized()["vocab"]))
    return tmp_path


def test_import_model_writes_the_checkpoint_unchanged(golden_store):
    config = {"demb": 16, "dhid": 16, "dframe": 32, "init_from": str(ALFRED_GOLDEN / "best_seen.pth")}
    import_model(config, golden_store, golden_store / "fp32.pt")
    saved = torch.load(golden_store / "fp32.pt", weights_only=True)
    original = golden_checkpoint("best_seen.pth")["model"]
    assert saved["imported_from"] == config["init_from"] and set(saved["state_dict"]) == set(original)
    for key, tensor in original.items():
        assert saved["state_dict"][key].dtype == tensor.dtype and torch.equal(saved["state_dict"][key], tensor), key


def test_sizes_other_than_the_checkpoints_are_named(golden_store):
    config = {"dhid": 512, "dframe": 32, "init_from": str(ALFRED_GOLDEN / "best_seen.pth")}
    with pytest.raises(ValueError, match=r"models.lstm: .*best_seen.pth \(dhid: 512 in the config, 16 in the checkpoint\)"):
        import_model(config, golden_store, golden_store / "fp32.pt")
    assert not (golden_store / "fp32.pt").exists()


def test_a_store_of_another_vocabulary_is_refused(golden_store):
    vocab = json.loads((golden_store / "vocab.json").read_text())
    vocab["word"].append("zebra")
    (golden_store / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"best_seen.pth: the store's vocabulary is not the checkpoint's"):
        import_model({"init_from": str(ALFRED_GOLDEN / "best_seen.pth")}, golden_store, golden_store / "fp32.pt")


def _pickled_class(module: str, name: str):
    """A class that pickles as the global `module.name`."""
    cls = type(name, (), {"__init__": lambda self, words: setattr(self, "_index2word", list(words))})
    cls.__module__, cls.__qualname__ = module, name
    return cls


def test_a_vocab_class_of_another_name_is_refused(tmp_path, monkeypatch):
    """Only `vocab.vocab.Vocab`, the class every PyPI release of `vocab` pickles, is admitted."""
    fake = types.ModuleType("vocab")
    fake.Vocab = _pickled_class("vocab", "Vocab")
    monkeypatch.setitem(sys.modules, "vocab", fake)
    ckpt = golden_checkpoint("best_seen.pth")
    path = tmp_path / "best_seen.pth"
    torch.save({**ckpt, "vocab": {kind: fake.Vocab(["<<pad>>"]) for kind in ("word", "action_low", "action_high")}},
               path)
    monkeypatch.delitem(sys.modules, "vocab")
    with pytest.raises(ValueError, match=r"best_seen.pth: not a readable ALFRED checkpoint \(its pickle names "
                                         r"vocab.Vocab, which is not admitted"):
        read_alfred_checkpoint(path)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_foreign_global_is_refused_without_running_it(tmp_path, legacy):
    marker = tmp_path / "ran"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"model": {}, "args": argparse.Namespace(payload=Evil()), "vocab": {}}, path,
               _use_new_zipfile_serialization=not legacy)
    with pytest.raises(ValueError, match=r"evil.pth: not a readable ALFRED checkpoint \(its pickle names "
                                         r"(builtins|io).open, which is not admitted"):
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


def test_a_checkpoint_without_alfreds_vocabularies_is_named(tmp_path):
    path = tmp_path / "best_seen.pth"
    torch.save({**golden_checkpoint("best_seen.pth"), "vocab": {"word": ["<<pad>>"]}}, path)
    with pytest.raises(ValueError, match=r"best_seen.pth: its 'vocab' is not ALFRED's"):
        import_alfred_checkpoint(path)
