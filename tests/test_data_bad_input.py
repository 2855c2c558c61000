"""Bad input: each case is skipped and listed (skip) or stops the job naming the file (fail);
nothing else is lost, the input tree is never written to, and no partial store is left."""
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from alfred_edge.data import store
from alfred_edge.data.budget import StorageError
from alfred_edge.data.preprocess import BadInput, preprocess_split
from conftest import REPO_ROOT, build_store, frames_of, make_synthetic_tree, tree_digest

VICTIM = 1  # index of the damaged training trajectory


def _feat(folder):
    return torch.load(folder / "feat_conv.pt", weights_only=True)


def not_json(folder, splits_file):
    (folder / "traj_data.json").write_text('{"plan": [')
    return folder / "traj_data.json", "not valid JSON"


def lacks_keys(folder, splits_file):
    traj = json.loads((folder / "traj_data.json").read_text())
    del traj["plan"]["low_actions"]
    (folder / "traj_data.json").write_text(json.dumps(traj))
    return folder / "traj_data.json", "lacks key 'low_actions'"


def wrong_frame_count(folder, splits_file):
    feat = _feat(folder)
    torch.save(torch.cat([feat, feat[:1]]), folder / "feat_conv.pt")
    return folder / "feat_conv.pt", (rf"has {len(feat) + 1} frames, expected json_feat's len\(plan.low_actions\)\+1 = "
                                     rf"{len(feat)} \(its images list no filler frames, so it is no full_2.1.0 file\)")


def missing_features(folder, splits_file):
    (folder / "feat_conv.pt").unlink()
    return folder / "feat_conv.pt", "feat_conv.pt is missing"


def truncated_features(folder, splits_file):
    path = folder / "feat_conv.pt"
    os.truncate(path, path.stat().st_size // 2)
    return path, "cannot be read"


def wrong_shape(folder, splits_file):
    torch.save(torch.rand(len(_feat(folder)), 512, 5, 5), folder / "feat_conv.pt")
    return folder / "feat_conv.pt", r"has shape \[\d+, 512, 5, 5\], expected \[n_frames, 512, 7, 7\]"


def holds_nan(folder, splits_file):
    feat = _feat(folder)
    feat[2, 10, 3, 3] = float("nan")
    torch.save(feat, folder / "feat_conv.pt")
    return folder / "feat_conv.pt", "NaN"


def missing_folder(folder, splits_file):
    splits = json.loads(splits_file.read_text())
    ghost = "pick_and_place_simple-Mug-None-Desk-10/trial_T20190909_000000_000000"
    splits["train"].insert(2, {"repeat_idx": 0, "task": ghost})
    splits_file.write_text(json.dumps(splits))
    return folder.parents[1] / ghost, "folder does not exist"


CASES = [not_json, lacks_keys, wrong_frame_count, missing_features, truncated_features, wrong_shape,
         holds_nan, missing_folder]


@pytest.fixture
def tree(tmp_path):
    root, splits_file, specs = make_synthetic_tree(tmp_path / "raw", {"train": 5})
    originals = {s.task: _feat(root / "train" / s.task) for s in specs}
    return root, splits_file, specs, originals


@pytest.mark.parametrize("damage", CASES, ids=[c.__name__ for c in CASES])
def test_skip_lists_the_trajectory_and_keeps_the_rest(tree, tmp_path, damage, caplog):
    root, splits_file, specs, originals = tree
    victim = specs[VICTIM].task if damage is not missing_folder else None
    path, reason = damage(root / "train" / specs[VICTIM].task, splits_file)
    before = tree_digest(root)
    with caplog.at_level(logging.WARNING, logger="alfred_edge"):
        meta = build_store(root, splits_file, tmp_path / "store", splits=["train"])["train"]
    assert tree_digest(root) == before  # the input tree was only read
    rejected = pd.read_parquet(tmp_path / "store" / "train" / store.REJECTED)
    assert len(rejected) == 1 and meta["n_rejected"] == 1
    assert rejected.path[0] == str(path)
    assert pd.Series(rejected.reason).str.contains(reason).all(), rejected.reason[0]
    assert "1 trajectories rejected" in caplog.text
    kept = pd.read_parquet(tmp_path / "store" / "train" / store.TRAJECTORIES)
    expected = [s.task for s in specs if s.task != victim]
    assert sorted(kept.task) == sorted(expected)
    for row in kept.itertuples():  # everything else arrived intact
        assert np.allclose(frames_of(tmp_path / "store" / "train", row.traj_idx), originals[row.task].numpy(), atol=2e-3)
    annotations = pd.read_parquet(tmp_path / "store" / "train" / store.ANNOTATIONS)
    assert len(annotations) == 2 * len(expected)


@pytest.mark.parametrize("damage", CASES, ids=[c.__name__ for c in CASES])
def test_fail_names_the_file_and_writes_nothing(tree, tmp_path, damage):
    root, splits_file, specs, _ = tree
    path, reason = damage(root / "train" / specs[VICTIM].task, splits_file)
    with pytest.raises(BadInput) as err:
        build_store(root, splits_file, tmp_path / "store", splits=["train"], on_bad_input="fail")
    assert str(path) in str(err.value)
    assert err.value.path == path
    assert re.search(reason, str(err.value))
    assert not (tmp_path / "store" / "train").exists()
    assert not list((tmp_path / "store").glob(".train.tmp-*"))


def _preprocess_args(tmp_path, root, splits_file, budget_bytes=10**12, planned_bytes=10**6):
    from alfred_edge.data import manifest, subset, vocab
    from alfred_edge.data.preprocess import read_traj

    rows = manifest.scan_tree(root, splits_file, ["train"])
    doc = subset.subset_document(rows, "train", 10**6, 0)
    (tmp_path / "subset.json").write_text(json.dumps(doc))
    trajs = [read_traj(root / "train" / t["task"] / "traj_data.json") for t in doc["trajectories"]]
    (tmp_path / "vocab.json").write_text(vocab.vocab_text(vocab.build_vocab(trajs)))
    return dict(split="train", subset_path=tmp_path / "subset.json", vocab_path=tmp_path / "vocab.json",
                root=root, out_dir=tmp_path / "store" / "train", dtype="float16", on_bad_input="skip",
                planned_bytes=planned_bytes, budget_bytes=budget_bytes, progress=False)


def test_refuses_over_budget_and_over_free_space(tree, tmp_path):
    root, splits_file, _, _ = tree
    with pytest.raises(StorageError, match="over storage.budget_gb"):
        preprocess_split(**_preprocess_args(tmp_path, root, splits_file, budget_bytes=10**6, planned_bytes=2 * 10**6))
    with pytest.raises(StorageError, match="free"):
        preprocess_split(**_preprocess_args(tmp_path, root, splits_file, budget_bytes=10**18, planned_bytes=10**17))
    assert not (tmp_path / "store" / "train").exists() and not list((tmp_path / "store").glob(".train.tmp-*"))


def test_killed_preprocess_leaves_no_store(tree, tmp_path):
    """SIGKILL mid-run: data/store/<split> never exists (Snakemake sees it missing and
    reruns); the next run clears the stale temporary folder and completes."""
    root, splits_file, _, _ = tree
    args = _preprocess_args(tmp_path, root, splits_file)
    (tmp_path / "args.json").write_text(json.dumps({k: str(v) if hasattr(v, "parts") else v for k, v in args.items()}))
    script = f"""
import json, pathlib, time
import alfred_edge.data.preprocess as p
read = p.read_features
p.read_features = lambda *a: (time.sleep(0.5), read(*a))[1]  # slow enough to be killed mid-run
args = json.loads(pathlib.Path({str(tmp_path / "args.json")!r}).read_text())
paths = ("subset_path", "vocab_path", "root", "out_dir")
p.preprocess_split(**{{k: pathlib.Path(v) if k in paths else v for k, v in args.items()}})
"""
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT)
    out_dir = args["out_dir"]
    deadline = time.time() + 60
    while time.time() < deadline:
        partial = list(out_dir.parent.glob(".train.tmp-*/frames.npy"))
        if partial and partial[0].stat().st_size > store.NPY_HEADER_BYTES:
            break
        assert proc.poll() is None, "preprocess ended before it could be killed"
        time.sleep(0.05)
    else:
        pytest.fail("no partial store appeared")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out_dir.exists()
    assert list(out_dir.parent.glob(".train.tmp-*"))  # the partial output is hidden, not the target
    meta = preprocess_split(**args)
    assert out_dir.is_dir() and meta["n_trajectories"] == 5
    assert not list(out_dir.parent.glob(".train.tmp-*"))


def test_uint8_store_records_the_negative_values_it_clips(tree, tmp_path, caplog):
    root, splits_file, specs, originals = tree
    feat = originals[specs[VICTIM].task].clone()
    feat[0, :4, 0, 0] = torch.tensor([-0.5, -1.25, -2.0, -0.1])
    torch.save(feat, root / "train" / specs[VICTIM].task / "feat_conv.pt")
    with caplog.at_level(logging.WARNING, logger="alfred_edge"):
        meta = build_store(root, splits_file, tmp_path / "store", splits=["train"], dtype="uint8")["train"]
    assert meta["n_rejected"] == 0
    assert meta["uint8_clipped_values"] == 4 and meta["uint8_largest_clip"] == pytest.approx(2.0)
    assert "train: 4 negative feature values clipped to 0 in the uint8 store (largest error 2)" in caplog.text


def test_a_training_subset_without_an_action_keeps_the_trajectories_that_have_it(real_tree, tmp_path):
    """The action vocabulary is ALFRED's fixed set: a valid trajectory is never refused for an
    action the sampled training trajectories happen to lack."""
    from alfred_edge.data import vocab
    from alfred_edge.data.preprocess import read_traj

    tree, splits_file = real_tree
    train = [read_traj(path) for path in sorted((tree / "train").glob("*/*/traj_data.json"))]
    without_slice = [t for t in train if all(a["discrete_action"]["action"] != "SliceObject"
                                             for a in t["plan"]["low_actions"])]
    assert len(without_slice) < len(train)
    built = vocab.build_vocab(without_slice[:2])
    assert built["action_low"] == vocab.ACTION_SPECIALS + vocab.LOW_ACTIONS
    meta = build_store(tree, splits_file, tmp_path, splits=["train"], vocab=built)["train"]
    assert meta["n_rejected"] == 0 and meta["n_trajectories"] == len(train)
