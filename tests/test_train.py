"""Training and evaluation on a tiny synthetic store written by the data package."""
import json

import pandas as pd
import pytest
import torch

from alfred_edge.evaluate import evaluate, sequence_f1, weighted_mask_loss
from alfred_edge.models import load_model
from alfred_edge.train import train

from model_inputs import build_store, one_thread  # noqa: F401 (fixture)
TINY = {
    "lstm": {"demb": 16, "dhid": 24, "dframe": 32},
    "transformer": {"d_model": 32, "heads": 2, "ffn": 48, "dframe": 32},
}
HP = {"epochs": 2, "batch": 4, "lr": 0.002, "seed": 7, "mask_steps_per_batch": 2}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    return build_store(root, {"train": 4, "valid_seen": 2, "valid_unseen": 2}, annotations_per_trajectory=2,
                       nav_steps=(2, 3))


def run(name, store, out, **hp):
    config = {**TINY[name], "train": {**HP, **hp}}
    return train(name, config, store, out / "fp32.pt", out / "train_metrics.parquet", progress=False)


@pytest.mark.parametrize("name", ["lstm", "transformer"])
def test_training_writes_model_and_per_epoch_metrics(name, store, tmp_path):
    summary = run(name, store, tmp_path)
    metrics = pd.read_parquet(tmp_path / "train_metrics.parquet")
    assert list(metrics["epoch"]) == [1, 2]
    for split in ("valid_seen", "valid_unseen"):
        for metric in ("loss", "free_loss", "loss_action", "loss_mask", "action_acc", "action_f1", "action_em",
                       "mask_iou"):
            assert metrics[f"{split}/{metric}"].notna().all(), (split, metric)
        assert metrics[f"{split}/action_acc"].between(0, 1).all()
    best = metrics.loc[metrics["valid_seen/free_loss"].idxmin(), "epoch"]
    assert summary["best_epoch"] == best
    model = load_model(tmp_path / "fp32.pt", vocab_path=store / "vocab.json")
    scores = evaluate(model, store, batch_size=4)
    # The saved weights are the best epoch's: evaluating them again gives its row.
    assert scores["valid_seen/loss"] == pytest.approx(metrics.loc[best - 1, "valid_seen/loss"], rel=1e-5)
    assert torch.load(tmp_path / "fp32.pt", weights_only=True)["best_epoch"] == best


def test_the_training_loss_is_logged_every_few_batches_as_the_mean_over_them(store, tmp_path, monkeypatch):
    """8 annotations in batches of 3: 3 batches an epoch, logged after the 2nd and the (partial)
    last window; the windows' means, weighted by their batches, give the epoch's mean loss."""
    import alfred_edge.train as train_module

    monkeypatch.setattr(train_module, "LOGGED_POINTS_PER_EPOCH", 2)
    config = {**TINY["lstm"], "train": {**HP, "batch": 3}}
    train("lstm", config, store, tmp_path / "fp32.pt", tmp_path / "train_metrics.parquet", progress=False,
          steps_path=tmp_path / "train_steps.parquet")
    steps = pd.read_parquet(tmp_path / "train_steps.parquet")
    epochs = pd.read_parquet(tmp_path / "train_metrics.parquet").set_index("epoch")
    assert list(zip(steps["epoch"], steps["step"])) == [(1, 2), (1, 3), (2, 2), (2, 3)]
    assert list(steps["steps_in_epoch"]) == [3] * 4 and list(steps["samples"]) == [6, 8, 14, 16]
    assert steps["seconds"].is_monotonic_increasing
    for epoch, rows in steps.groupby("epoch"):
        weighted = (rows["train/loss"] * rows["step"].diff().fillna(rows["step"])).sum() / 3
        assert weighted == pytest.approx(epochs.loc[epoch, "train/loss"], rel=1e-6)
    assert (steps["train/loss_action"] + steps["train/loss_mask"]).to_numpy() == pytest.approx(
        steps["train/loss"].to_numpy(), rel=1e-6)


def test_the_best_epoch_is_alfreds_lowest_free_running_loss(store, tmp_path, monkeypatch):
    """ALFRED keeps the epoch whose valid_seen loss in eval mode (own argmax fed back) is lowest,
    not the teacher-forced one: here the two disagree."""
    import alfred_edge.train as train_module

    per_epoch = [{"loss": 1.0, "free_loss": 3.0}, {"loss": 2.0, "free_loss": 1.0}, {"loss": 0.5, "free_loss": 2.0}]
    calls = iter([metrics for metrics in per_epoch for _split in ("valid_seen", "valid_unseen")])
    monkeypatch.setattr(train_module, "evaluate_loader", lambda *args, **kwargs: dict(next(calls)))
    summary = run("lstm", store, tmp_path, epochs=3)
    assert summary["best_epoch"] == 2
    assert torch.load(tmp_path / "fp32.pt", weights_only=True)["best_epoch"] == 2


def test_training_is_deterministic_for_a_seed(store, tmp_path):
    run("lstm", store, tmp_path / "a", epochs=1)
    run("lstm", store, tmp_path / "b", epochs=1)
    run("lstm", store, tmp_path / "c", epochs=1, seed=8)
    a, b, c = (torch.load(tmp_path / x / "fp32.pt", weights_only=True)["state_dict"] for x in "abc")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_store_without_training_rows_is_refused(store, tmp_path):
    empty = tmp_path / "store"
    for part in ("train", "valid_seen", "valid_unseen"):
        (empty / part).mkdir(parents=True)
        for file in (store / part).iterdir():
            (empty / part / file.name).symlink_to(file)
    (empty / "vocab.json").symlink_to(store / "vocab.json")
    annotations = pd.read_parquet(store / "train" / "annotations.parquet")
    (empty / "train" / "annotations.parquet").unlink()
    annotations.iloc[:0].to_parquet(empty / "train" / "annotations.parquet")
    with pytest.raises(ValueError, match=r"store/train: the training store has no annotations"):
        run("lstm", empty, tmp_path / "out")
    assert not (tmp_path / "out" / "fp32.pt").exists()


def test_evaluate_refuses_a_model_of_another_vocabulary(store, tmp_path):
    run("transformer", store, tmp_path, epochs=1)
    model = load_model(tmp_path / "fp32.pt")
    other = tmp_path / "other"
    other.mkdir()
    vocab = json.loads((store / "vocab.json").read_text())
    vocab["word"].append("zebra")
    (other / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(ValueError, match=r"trained on another vocabulary than .*other/vocab.json"):
        evaluate(model, other)


def test_alfred_f1_and_weighted_mask_loss():
    assert sequence_f1([3, 4, 5], [3, 4, 5]) == 1.0
    assert sequence_f1([3, 4], [3, 4, 5, 6]) == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert sequence_f1([], []) == 1.0 and sequence_f1([3], []) == 0.0
    gt = torch.zeros(1, 4, 4)
    gt[0, :2] = 1
    perfect = (gt * 40 - 20).unsqueeze(1)
    assert weighted_mask_loss(perfect, gt) < 1e-6 < weighted_mask_loss(-perfect, gt)
    assert torch.isfinite(weighted_mask_loss(torch.zeros(1, 1, 4, 4), torch.zeros(1, 4, 4)))  # empty mask
