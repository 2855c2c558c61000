"""Shared fixtures: tiny synthetic json_feat trees and the real ALFRED sample JSONs with
generated features of the right shape (all under pytest's tmp folders). The real sample and
ALFRED's golden outputs ship in tests/data/ (origin and licence in its README)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TEST_DATA = Path(__file__).resolve().parent / "data"
ALFRED_SAMPLE = TEST_DATA / "alfred-sample"
ALFRED_GOLDEN = TEST_DATA / "alfred-golden"
DATA_SPLITS = ["train", "valid_seen", "valid_unseen"]


def make_synthetic_tree(root: Path, trajectories: dict, seed: int = 0, nav_steps=(1, 3),
                        annotations: int = 2) -> tuple[Path, Path, list]:
    """Write a synthetic json_feat tree under root; returns (tree, splits file, specs)."""
    from alfred_edge.data import synthetic

    specs = synthetic.trajectory_specs(seed, trajectories, annotations, nav_steps)
    synthetic.write_tree(specs, nav_steps, root / "json_feat", root / "splits.json", progress=False)
    return root / "json_feat", root / "splits.json", specs


@pytest.fixture(scope="session")
def alfred_sample() -> Path:
    return ALFRED_SAMPLE


@pytest.fixture(scope="session")
def real_tree(alfred_sample, tmp_path_factory) -> tuple[Path, Path]:
    """The sample's train/valid trajectories as a json_feat tree: its traj_data.json files
    plus a generated feat_conv.pt of shape [len(low_actions)+1, 512, 7, 7] each."""
    import torch

    root = tmp_path_factory.mktemp("real") / "json_feat"
    generator = torch.Generator().manual_seed(0)
    for split in DATA_SPLITS:
        for src in sorted((alfred_sample / "json_2.1.0" / split).glob("*/*/traj_data.json")):
            folder = root / split / src.parent.parent.name / src.parent.name
            folder.mkdir(parents=True)
            shutil.copyfile(src, folder / "traj_data.json")
            n_low = len(json.loads(src.read_text())["plan"]["low_actions"])
            torch.save(torch.rand(n_low + 1, 512, 7, 7, generator=generator), folder / "feat_conv.pt")
    return root, alfred_sample / "splits" / "sample.json"


def tree_digest(root: Path) -> dict[str, str]:
    """Content digest of every file under root (to show a tree was not written to)."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def build_store(tree: Path, splits_file: Path, out: Path, splits=DATA_SPLITS, dtype="float16",
                on_bad_input="skip", budget_bytes=10**12, vocab_of=None, vocab=None) -> dict:
    """manifest -> subset (all) -> vocab -> preprocess, as the rules run them; returns
    {split: meta} and leaves out/<split>/ and out/vocab.json. vocab_of: an ALFRED checkpoint
    whose vocabulary is the store's (models.lstm.init_from); vocab: the vocabulary itself;
    else it is built from train."""
    from alfred_edge.data import manifest, preprocess, store, subset
    from alfred_edge.data.vocab import build_vocab, vocab_text

    rows = manifest.scan_tree(tree, splits_file, list(splits))
    out.mkdir(parents=True, exist_ok=True)
    docs = {}
    for split in splits:
        docs[split] = subset.subset_document(rows, split, 10**6, 0)
        (out / f"subset_{split}.json").write_text(json.dumps(docs[split]))
    if vocab_of is not None:
        from alfred_edge.models.alfred_checkpoint import read_checkpoint_vocab

        vocab = read_checkpoint_vocab(vocab_of)
    elif vocab is None:
        readable = []
        for entry in docs["train"]["trajectories"]:
            try:
                readable.append(preprocess.read_traj(tree / "train" / entry["task"] / "traj_data.json"))
            except preprocess.BadInput:
                pass
        vocab = build_vocab(readable)
    (out / "vocab.json").write_text(vocab_text(vocab))
    metas = {}
    for split in splits:
        frames = sum(t["n_frames"] for t in docs[split]["trajectories"])
        metas[split] = preprocess.preprocess_split(
            split, out / f"subset_{split}.json", out / "vocab.json", tree, out / split, dtype, on_bad_input,
            store.planned_store_bytes(frames, len(docs[split]["trajectories"]), dtype), budget_bytes, progress=False)
    return metas


@pytest.fixture(scope="session")
def real_store(real_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("real_store")
    build_store(*real_tree, out)
    return out


@pytest.fixture(scope="session")
def synthetic_tree(tmp_path_factory):
    return make_synthetic_tree(tmp_path_factory.mktemp("synthetic"), {"train": 8, "valid_seen": 3, "valid_unseen": 3})


@pytest.fixture(scope="session")
def synthetic_store(synthetic_tree, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_store")
    build_store(*synthetic_tree[:2], out)
    return out


def frames_of(store_dir: Path, traj_idx: int) -> np.ndarray:
    from alfred_edge.data.loader import StoreDataset

    return StoreDataset(store_dir).trajectory_frames(traj_idx).numpy()
