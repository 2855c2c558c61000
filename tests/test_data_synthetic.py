"""The synthetic generator: ALFRED's layout and keys, determinism, and learnable content."""
import json

import numpy as np
import torch

from alfred_edge.data import manifest, synthetic
from alfred_edge.data.loader import decode_rle
from conftest import make_synthetic_tree, tree_digest


def key_paths(obj, prefix=""):
    """Nested key set; list elements collapse to '[]'."""
    keys = set()
    if isinstance(obj, dict):
        for k, v in obj.items():
            keys.add(f"{prefix}.{k}")
            keys |= key_paths(v, f"{prefix}.{k}")
    elif isinstance(obj, list):
        for v in obj:
            keys |= key_paths(v, prefix + "[]")
    return keys


def test_synthetic_key_set_matches_real_files(alfred_sample):
    real = [key_paths(json.loads(p.read_text()))
            for split in ("train", "valid_seen", "valid_unseen")
            for p in (alfred_sample / "json_2.1.0" / split).glob("*/*/traj_data.json")]
    assert len(real) == 28
    specs = synthetic.trajectory_specs(0, {"train": 40, "valid_seen": 5, "valid_unseen": 5}, 3, (1, 3))
    generated = [key_paths(synthetic.traj_data(s, (1, 3))[0]) for s in specs]
    assert set().union(*generated) == set().union(*real)
    # every synthetic file has every key that all real files have
    common = set.intersection(*real)
    assert all(common <= keys for keys in generated)


def test_tree_layout_and_features(synthetic_tree):
    tree, splits_file, specs = synthetic_tree
    splits = json.loads(splits_file.read_text())
    assert set(splits) == {"train", "valid_seen", "valid_unseen"}
    assert splits["train"][0] == {"repeat_idx": 0, "task": specs[0].task}
    for spec in specs:
        folder = tree / spec.split / spec.task
        task_folder, trial = spec.task.split("/")
        assert task_folder.split("-")[0] == spec.task_type and len(task_folder.split("-")) == 5
        assert trial.startswith("trial_T")
        traj = json.loads((folder / "traj_data.json").read_text())
        feat = torch.load(folder / "feat_conv.pt", weights_only=True)
        assert feat.dtype == torch.float32 and tuple(feat.shape) == (len(traj["plan"]["low_actions"]) + 1, 512, 7, 7)
        assert feat.min() >= 0
        assert traj["plan"]["high_pddl"][-1]["discrete_action"]["action"] == "NoOp"
        n_sub = len(traj["plan"]["high_pddl"]) - 1
        assert all(len(a["high_descs"]) == n_sub for a in traj["turk_annotations"]["anns"])
        assert traj["task_id"] == trial and traj["task_type"] == spec.task_type


def test_deterministic_and_seeded(tmp_path):
    a = tree_digest(make_synthetic_tree(tmp_path / "a", {"train": 3})[0])
    b = tree_digest(make_synthetic_tree(tmp_path / "b", {"train": 3})[0])
    c = tree_digest(make_synthetic_tree(tmp_path / "c", {"train": 3}, seed=1)[0])
    assert a == b
    assert a != c


def test_parse_time_manifest_matches_written_tree(synthetic_tree):
    tree, splits_file, specs = synthetic_tree
    scanned = manifest.scan_tree(tree, splits_file, ["train", "valid_seen", "valid_unseen"])
    planned = synthetic.manifest_rows(specs)
    for got, plan in zip(scanned, planned):
        assert {k: got[k] for k in ("split", "task", "task_type", "n_frames", "n_annotations", "repeat_idx")} == \
               {k: plan[k] for k in ("split", "task", "task_type", "n_frames", "n_annotations", "repeat_idx")}
        assert abs(got["feat_bytes"] - plan["feat_bytes"]) < synthetic.FRAME_BYTES
        assert got["problem"] == ""


def test_frames_carry_next_action_and_target_cells(synthetic_tree):
    """What makes the data learnable: frame t cues action t (stop last); at an interaction the
    object channel marks exactly the cells whose upscaled box is the mask."""
    tree, _, specs = synthetic_tree
    for spec in specs[:5]:
        folder = tree / spec.split / spec.task
        traj = json.loads((folder / "traj_data.json").read_text())
        feat = torch.load(folder / "feat_conv.pt", weights_only=True).numpy()
        cue = feat[:, synthetic.CUE_CHANNEL:synthetic.CUE_CHANNEL + 13].mean(axis=(2, 3)).argmax(axis=1)
        names = [a["discrete_action"]["action"] for a in traj["plan"]["low_actions"]]
        assert list(cue) == [synthetic.LOW_ACTIONS.index(n) for n in names] + [12]
        for t, low in enumerate(traj["plan"]["low_actions"]):
            cells = feat[t, synthetic.OBJECT_CHANNEL] > 0.5
            if low["discrete_action"]["action"] in synthetic.NAV_ACTIONS:
                assert not cells.any()
                continue
            mask = decode_rle(low["discrete_action"]["args"]["mask"])
            upscaled = np.zeros((300, 300), bool)
            for r, c in zip(*np.nonzero(cells)):
                upscaled[r * 300 // 7:(r + 1) * 300 // 7, c * 300 // 7:(c + 1) * 300 // 7] = True
            assert (mask == upscaled).all()
            x1, y1, x2, y2 = low["discrete_action"]["args"]["bbox"]
            ys, xs = np.nonzero(mask)
            assert (x1, y1, x2, y2) == (xs.min(), ys.min(), xs.max(), ys.max())


def test_instructions_spell_out_navigation():
    spec = synthetic.trajectory_specs(3, {"train": 1}, 1, (2, 4))[0]
    traj, _ = synthetic.traj_data(spec, (2, 4))
    first_goto = [a["discrete_action"]["action"] for a in traj["plan"]["low_actions"] if a["high_idx"] == 0]
    desc = traj["turk_annotations"]["anns"][0]["high_descs"][0].lower()
    positions = []
    for action in first_goto:
        phrase = synthetic.NAV_PHRASES[action][0]
        at = desc.find(phrase, positions[-1] + 1 if positions else 0)
        assert at >= 0, (phrase, desc)
        positions.append(at)


def test_learnable_by_a_linear_probe(tmp_path):
    """A linear model on each frame's channel means, trained for a moment on train, predicts
    valid_seen's next actions (teacher-forced) almost perfectly: the signal is in the data."""
    from alfred_edge.data.loader import StoreDataset
    from conftest import build_store

    tree, splits_file, _ = make_synthetic_tree(tmp_path / "raw", {"train": 24, "valid_seen": 8}, seed=5)
    build_store(tree, splits_file, tmp_path / "store", splits=["train", "valid_seen"])

    def steps(split):
        ds = StoreDataset(tmp_path / "store" / split)
        items = [ds[i] for i in range(0, len(ds), 2)]  # one annotation per trajectory
        x = torch.cat([it["frames"].mean(dim=(2, 3)) for it in items])
        y = torch.cat([it["actions"] for it in items])
        return x, y

    (x, y), (vx, vy) = steps("train"), steps("valid_seen")
    torch.manual_seed(0)
    probe = torch.nn.Linear(512, int(max(y.max(), vy.max())) + 1)
    optim = torch.optim.Adam(probe.parameters(), lr=0.05)
    for _ in range(200):
        optim.zero_grad()
        torch.nn.functional.cross_entropy(probe(x), y).backward()
        optim.step()
    accuracy = (probe(vx).argmax(1) == vy).float().mean().item()
    assert accuracy >= 0.95, accuracy
