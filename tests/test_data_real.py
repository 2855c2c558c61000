"""The real ALFRED sample through manifest -> subset -> vocab -> preprocess -> loader."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from alfred_edge.data import manifest, store
from alfred_edge.data.loader import StoreDataset, collate, decode_masks, decode_rle
from alfred_edge.data.tokenize import tokenize
from alfred_edge.data.vocab import load_vocab
from conftest import DATA_SPLITS, build_store


def test_manifest_from_file_sizes(real_tree):
    tree, splits_file = real_tree
    rows = manifest.scan_tree(tree, splits_file, DATA_SPLITS)
    assert [sum(r["split"] == s for r in rows) for s in DATA_SPLITS] == [14, 7, 7]
    for row in rows:
        traj = json.loads((tree / row["split"] / row["task"] / "traj_data.json").read_text())
        assert row["n_low_actions"] == len(traj["plan"]["low_actions"])
        assert row["task_type"] == traj["task_type"]
        assert row["repeat_idx"] == list(range(row["n_annotations"]))


def test_manifest_names_a_missing_split(real_tree):
    with pytest.raises(ValueError, match="tests_seen|nope"):
        manifest.scan_tree(real_tree[0], real_tree[1], ["train", "nope"])


def test_vocab_specials_and_actions(real_store):
    vocab = load_vocab(real_store / "vocab.json")
    assert vocab["word"][:5] == ["<<pad>>", "<<seg>>", "<<goal>>", "<<stop>>", "<<unk>>"]
    assert vocab["action_low"][:3] == ["<<pad>>", "<<seg>>", "<<stop>>"]
    assert vocab["action_high"][:3] == ["<<pad>>", "<<seg>>", "<<stop>>"]
    assert len(vocab["action_low"]) == 15  # ALFRED's 12 low actions + 3 specials
    assert len(set(vocab["word"])) == len(vocab["word"])
    assert all(w == w.lower() for w in vocab["word"][5:])


@pytest.mark.parametrize("split", DATA_SPLITS)
def test_actions_stop_and_masks_match_the_json(real_tree, real_store, split):
    tree, _ = real_tree
    vocab = load_vocab(real_store / "vocab.json")
    ann = pd.read_parquet(real_store / split / store.ANNOTATIONS)
    meta = store.read_meta(real_store / split)
    assert meta["n_rejected"] == 0 and meta["n_trajectories"] == 7 * (2 if split == "train" else 1)
    for row in ann.itertuples():
        traj = json.loads((tree / split / row.task / "traj_data.json").read_text())
        lows = traj["plan"]["low_actions"]
        names = [vocab["action_low"][i] for i in row.actions]
        assert names == [a["discrete_action"]["action"] for a in lows] + ["<<stop>>"]
        assert list(row.high_idx[:-1]) == [a["high_idx"] for a in lows]
        # <<stop>> belongs to the NoOp subgoal (appended by preprocessing where the file lacks it)
        subgoals = [h for h in traj["plan"]["high_pddl"] if h["discrete_action"]["action"] != "NoOp"]
        assert row.high_idx[-1] == len(subgoals)
        interact = [a for a in lows if "mask" in a["discrete_action"]["args"]]
        assert row.valid_interact.sum() == len(interact)
        first = interact[0]["discrete_action"]["args"]
        assert (decode_rle(row.mask_rle[:2 * row.mask_pairs[0]]) == decode_rle(first["mask"])).all()
        assert list(row.bboxes[:4]) == first["bbox"]
        text = traj["turk_annotations"]["anns"][row.repeat_idx]
        words = [vocab["word"][i] for i in row.lang_goal]
        assert words[-1] == "<<goal>>"
        if split == "train":  # every training word is in the vocabulary
            assert words[:-1] == tokenize(text["task_desc"])
        instr = [vocab["word"][i] for i in row.lang_instr]
        assert instr[-1] == "<<stop>>" and len(row.instr_lengths) == len(text["high_descs"]) + 1


def test_unseen_words_map_to_unk(real_store):
    ann = pd.read_parquet(real_store / "valid_unseen" / store.ANNOTATIONS)
    ids = np.concatenate(list(ann["lang_goal"]) + list(ann["lang_instr"]))
    assert (ids == 4).any() and (ids != 4).any()


def test_loader_batch(real_tree, real_store):
    ds = StoreDataset(real_store / "valid_seen")
    assert isinstance(store.open_frames(real_store / "valid_seen"), np.memmap)
    items = [ds[i] for i in range(4)]
    batch = collate(items)
    B, T = 4, max(len(it["actions"]) for it in items)
    assert batch["frames"].shape == (B, T, 512, 7, 7) and batch["frames"].dtype == torch.float32
    assert batch["actions"].shape == (B, T) and batch["valid_interact"].dtype == torch.bool
    for b, it in enumerate(items):
        n = int(batch["frame_lengths"][b])
        assert batch["actions"][b, n - 1] == 2 and (batch["actions"][b, n:] == 0).all()
        assert (batch["frames"][b, n:] == 0).all()
        assert batch["lang"][b, int(batch["lang_lengths"][b]) - 1] == 3  # <<stop>>
    masks = decode_masks(batch)
    n_interact = int(batch["valid_interact"].sum())
    assert masks.shape == (n_interact, 300, 300) and batch["bboxes"].shape == (n_interact, 4)
    # masks and bboxes follow valid_interact.nonzero(): item by item, step by step
    expected = []
    for it in items:
        traj = json.loads((real_tree[0] / "valid_seen" / it["task"] / "traj_data.json").read_text())
        expected += [a["discrete_action"]["args"] for a in traj["plan"]["low_actions"]
                     if "mask" in a["discrete_action"]["args"]]
    assert len(expected) == n_interact
    for k in (0, n_interact // 2, n_interact - 1):
        assert (masks[k].numpy() == decode_rle(expected[k]["mask"])).all()
        assert batch["bboxes"][k].tolist() == expected[k]["bbox"]


def test_item_frames_equal_the_raw_features(real_tree, real_store):
    tree, _ = real_tree
    ds = StoreDataset(real_store / "train")
    item = ds[5]
    raw = torch.load(tree / "train" / item["task"] / "feat_conv.pt", weights_only=True)
    assert torch.allclose(item["frames"], raw, atol=2e-3, rtol=1e-3)  # float16 store


@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_other_dtypes(real_tree, tmp_path, dtype):
    tree, splits_file = real_tree
    meta = build_store(tree, splits_file, tmp_path, splits=["train", "valid_seen"], dtype=dtype)["valid_seen"]
    ds = StoreDataset(tmp_path / "valid_seen")
    frames = ds.trajectory_frames(0).numpy()
    raw = torch.load(tree / "valid_seen" / ds.trajectories["task"][0] / "feat_conv.pt", weights_only=True).numpy()
    if dtype == "float32":
        assert (frames == raw).all()
    else:
        scale = np.load(tmp_path / "valid_seen" / store.SCALES)[0]
        assert (np.abs(frames - raw) <= scale[None, :, None, None] / 2 + 1e-6).all()
        assert meta["frames_bytes"] / meta["raw_feature_bytes"] < 0.26


def test_tokenizer():
    assert tokenize("Pick up the mug,  then turn LEFT.") == ["pick", "up", "the", "mug", ",", "then", "turn", "left", "."]
    assert tokenize("Don't go\nthere...") == ["don", "'", "t", "go", "there", ".", ".", "."]
