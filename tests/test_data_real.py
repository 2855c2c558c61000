"""The real ALFRED sample through manifest -> subset -> vocab -> preprocess -> loader."""
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from alfred_edge.data import manifest, store
from alfred_edge.data.preprocess import BadInput
from alfred_edge.data.loader import StoreDataset, collate, decode_masks, decode_rle
from alfred_edge.data.tokenize import tokenize
from alfred_edge.data.vocab import WORD_SPECIALS, load_vocab
from alfred_golden import numericalized
from conftest import ALFRED_GOLDEN, ALFRED_SAMPLE, DATA_SPLITS, build_store

ALFRED_SAMPLE_SPLITS = ALFRED_SAMPLE / "splits" / "sample.json"


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
    assert vocab["word"][:3] == WORD_SPECIALS and "<<stop>>" in vocab["word"]
    assert vocab["action_low"][:3] == ["<<pad>>", "<<seg>>", "<<stop>>"]
    assert vocab["action_high"][:3] == ["<<pad>>", "<<seg>>", "<<stop>>"]
    assert len(vocab["action_low"]) == 15  # ALFRED's 12 low actions + 3 specials
    assert len(set(vocab["word"])) == len(vocab["word"])
    assert all(w == w.lower() for w in vocab["word"][3:])


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


@pytest.mark.parametrize("split", ["valid_seen", "valid_unseen"])
def test_words_outside_the_vocabulary_are_read_as_pad_and_counted(real_store, split):
    ann = pd.read_parquet(real_store / split / store.ANNOTATIONS)
    ids = np.concatenate(list(ann["lang_goal"]) + list(ann["lang_instr"]))
    meta = store.read_meta(real_store / split)
    assert meta["n_word_tokens"] == len(ids)
    assert 0 < meta["n_unknown_word_tokens"] == (ids == 0).sum() < len(ids)
    vocab = load_vocab(real_store / "vocab.json")
    assert meta["unknown_words"] and not set(meta["unknown_words"]) & set(vocab["word"])


def test_loader_batch(real_tree, real_store):
    ds = StoreDataset(real_store / "valid_seen")
    stop_word = load_vocab(real_store / "vocab.json")["word"].index("<<stop>>")
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
        assert batch["lang"][b, int(batch["lang_lengths"][b]) - 1] == stop_word
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


def test_tokens_are_revtoks_numbered_as_alfred_numbers_them():
    """Every annotation of the sample, test splits included: ALFRED's ids (numericalized.json,
    made with revtok) of our tokens."""
    golden = numericalized()
    word_id = {word: i for i, word in enumerate(golden["vocab"]["word"])}
    sample = json.loads(ALFRED_SAMPLE_SPLITS.read_text())
    assert len(golden["annotations"]) == sum(len(entries) for entries in sample.values())
    for key, want in golden["annotations"].items():
        split, repeat_idx = key.split("/")[0], int(key.rsplit("/", 1)[1])
        task = key[len(split) + 1:key.rindex("/")]
        path = ALFRED_SAMPLE / "json_2.1.0" / split / task / "traj_data.json"
        ann = json.loads(path.read_text())["turk_annotations"]["anns"][repeat_idx]
        assert [word_id[w] for w in tokenize(ann["task_desc"])] + [word_id["<<goal>>"]] == want["lang_goal"], key
        instr = [[word_id[w] for w in tokenize(d)] for d in ann["high_descs"]] + [[word_id["<<stop>>"]]]
        assert instr == want["lang_instr"], key


@pytest.fixture(scope="module")
def golden_store(real_tree, tmp_path_factory):
    """The sample's store with the vocabulary of ALFRED's golden checkpoint (init_from)."""
    out = tmp_path_factory.mktemp("golden_store")
    build_store(*real_tree, out, vocab_of=ALFRED_GOLDEN / "best_seen.pth")
    return out


def split_by(values, lengths):
    return [list(part) for part in np.split(np.asarray(values), np.cumsum(lengths)[:-1])]


@pytest.mark.parametrize("split", DATA_SPLITS)
def test_the_checkpoints_store_gives_alfreds_ids_for_every_annotation(golden_store, split):
    golden = numericalized()
    assert load_vocab(golden_store / "vocab.json") == golden["vocab"]
    ann = pd.read_parquet(golden_store / split / store.ANNOTATIONS)
    meta = store.read_meta(golden_store / split)
    assert meta["n_rejected"] == 0 and meta["n_unknown_word_tokens"] == 0
    want_keys = {key for key in golden["annotations"] if key.startswith(split + "/")}
    assert {f"{split}/{row.task}/{row.repeat_idx}" for row in ann.itertuples()} == want_keys
    for row in ann.itertuples():
        want = golden["annotations"][f"{split}/{row.task}/{row.repeat_idx}"]
        assert list(row.lang_goal) == want["lang_goal"]
        assert split_by(row.lang_instr, row.instr_lengths) == want["lang_instr"]
        # ALFRED's actions per subgoal: the store's actions grouped by their subgoal index
        subgoals = range(len(want["action_low"]))
        assert [list(row.actions[row.high_idx == g]) for g in subgoals] == want["action_low"]
        assert [list(row.valid_interact[row.high_idx == g].astype(int)) for g in subgoals] == \
            want["action_low_valid_interact"]


def test_one_instruction_fewer_than_subgoals_merges_the_last_two_as_alfred_does(real_tree, tmp_path):
    """ALFRED's issue #84: the second-to-last subgoal's actions join the one before it, and
    <<stop>> keeps the last index (...11, 11, 12, 12, 13 -> ...11, 11, 11, 11, 13)."""
    from alfred_edge.data.preprocess import subgoal_of_steps

    path, traj = next((p, t) for p in sorted((real_tree[0] / "valid_seen").glob("*/*/traj_data.json"))
                      if (t := json.loads(p.read_text()))["plan"]["high_pddl"][-1]["planner_action"]["action"] == "End")
    highs = [low["high_idx"] for low in traj["plan"]["low_actions"]]
    n = len(traj["plan"]["high_pddl"])  # subgoals, the last the NoOp that <<stop>> belongs to
    aligned = subgoal_of_steps(traj, n - 1, path)
    assert list(aligned) == highs + [n - 1]
    merged = subgoal_of_steps(traj, n - 2, path)
    assert list(merged) == [n - 3 if h == n - 2 else h for h in highs] + [n - 1]
    assert (merged == n - 3).sum() == sum(h in (n - 3, n - 2) for h in highs) and n - 2 not in merged
    with pytest.raises(BadInput, match=r"subgoals for .* instructions"):
        subgoal_of_steps(traj, n - 3, path)


def test_a_missing_end_subgoal_is_appended_before_stop(real_tree):
    """Three sample files end without the planner's End: <<stop>> gets the appended NoOp's index."""
    from alfred_edge.data.preprocess import subgoal_of_steps

    paths = [p for p in real_tree[0].glob("*/*/*/traj_data.json")
             if json.loads(p.read_text())["plan"]["high_pddl"][-1]["planner_action"]["action"] != "End"]
    assert len(paths) == 3
    for path in paths:
        traj = json.loads(path.read_text())
        n = len(traj["plan"]["high_pddl"])
        assert subgoal_of_steps(traj, n, path)[-1] == n


def test_full_layout_features_keep_alfreds_frames(real_tree, tmp_path):
    """ALFRED's full_2.1.0 feat_conv.pt has a frame per image plus copies of the last: the
    store keeps the first image of each low action and the file's last frame."""
    tree, splits_file = real_tree
    full = tmp_path / "tree"
    shutil.copytree(tree, full)
    folder = next((full / "valid_seen").glob("*/*"))
    traj = json.loads((folder / "traj_data.json").read_text())
    n_images, n_low = len(traj["images"]), len(traj["plan"]["low_actions"])
    frames = torch.arange(n_images + 10, dtype=torch.float32)[:, None, None, None].expand(-1, 512, 7, 7).clone()
    torch.save(frames, folder / "feat_conv.pt")
    build_store(full, splits_file, tmp_path / "store", splits=["train", "valid_seen"], dtype="float32")
    ds = StoreDataset(tmp_path / "store" / "valid_seen")
    traj_idx = ds.trajectories["task"].index(f"{folder.parent.name}/{folder.name}")
    kept = ds.trajectory_frames(traj_idx)[:, 0, 0, 0].tolist()
    first_image = [next(i for i, image in enumerate(traj["images"]) if image["low_idx"] == t) for t in range(n_low)]
    assert kept == first_image + [n_images + 9]
    assert kept != list(range(n_low + 1))  # filler frames were skipped


def test_a_frame_count_of_neither_layout_names_both(real_tree, tmp_path):
    tree, splits_file = real_tree
    bad = tmp_path / "tree"
    shutil.copytree(tree, bad)
    folder = next((bad / "valid_seen").glob("*/*"))
    torch.save(torch.rand(5, 512, 7, 7), folder / "feat_conv.pt")
    build_store(bad, splits_file, tmp_path / "store", splits=["train", "valid_seen"])
    rejected = pd.read_parquet(tmp_path / "store" / "valid_seen" / store.REJECTED)
    assert list(rejected["path"]) == [str(folder / "feat_conv.pt")]
    assert re.fullmatch(r"has 5 frames, expected json_feat's len\(plan.low_actions\)\+1 = \d+ or full_2.1.0's one "
                        r"per entry of images \(at least \d+\)", rejected["reason"][0])


@pytest.mark.parametrize("text, tokens", [
    ("Turn to the 2nd  shelf", ["turn", "to", "the", "2", "nd", "shelf"]),
    ("a++b", ["a", "++", "b"]),
    ("put it <<here>>", ["put", "it", "<<", "here", ">>"]),
    ("wait...", ["wait", ".", ".", "."]),
])
def test_tokens_where_revtok_differs_from_a_word_and_punctuation_split(text, tokens):
    """revtok 0.0.3's tokens (run once to get them) on inputs that a plain regular expression
    splits differently: digits before letters, runs of the same symbol."""
    assert tokenize(text) == tokens
