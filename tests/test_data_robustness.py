"""The data stage under Snakemake on the real sample with damaged files: every malformed file is
a rejection with its path and reason (skip) or one line naming it (fail); a repaired file reruns
its split's jobs only; two preprocess jobs at once never hold more than the budget on disk."""
from __future__ import annotations

import json
import os
import re
import shutil
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from alfred_edge.data import store
from conftest import REPO_ROOT, tree_digest
from test_data_workflow import planned_jobs
from test_pipeline_reruns import copy_repo, snakemake

pytestmark = pytest.mark.slow
STORES = ["data/store/train", "data/store/valid_seen", "data/store/valid_unseen"]


def _json(folder):
    return json.loads((folder / "traj_data.json").read_text())


def _write_json(folder, traj):
    (folder / "traj_data.json").write_text(json.dumps(traj))


def _first_interaction(traj):
    return next(i for i, low in enumerate(traj["plan"]["low_actions"]) if "mask" in low["discrete_action"]["args"])


def _feat(folder):
    return torch.load(folder / "feat_conv.pt", weights_only=True)


# Each damage takes a trajectory folder and returns (path the rejection names, reason pattern);
# the last two make files that are kept (converted or detached), returning (None, None).
def truncated_json(folder):
    text = (folder / "traj_data.json").read_text()
    (folder / "traj_data.json").write_text(text[: len(text) // 2])
    return folder / "traj_data.json", "not valid JSON"


def missing_key(folder):
    traj = _json(folder)
    del traj["turk_annotations"]
    _write_json(folder, traj)
    return folder / "traj_data.json", "lacks key 'turk_annotations'"


def odd_length_mask(folder):
    traj = _json(folder)
    step = _first_interaction(traj)
    traj["plan"]["low_actions"][step]["discrete_action"]["args"]["mask"] = [[5, 3], [9]]
    _write_json(folder, traj)
    return folder / "traj_data.json", rf"plan.low_actions\[{step}\]'s mask is not run-length pairs"


def text_high_idx(folder):
    traj = _json(folder)
    traj["plan"]["low_actions"][3]["high_idx"] = "1"
    _write_json(folder, traj)
    return folder / "traj_data.json", r"plan.low_actions\[3\].high_idx is '1', not an integer"


def integer_features(folder):
    torch.save(_feat(folder).to(torch.int64), folder / "feat_conv.pt")
    return folder / "feat_conv.pt", "holds int64 values, expected float32 features"


def truncated_features(folder):
    path = folder / "feat_conv.pt"
    os.truncate(path, path.stat().st_size // 2)
    return path, "cannot be read"


def wrong_shape(folder):
    torch.save(torch.rand(len(_feat(folder)), 512, 5, 5), folder / "feat_conv.pt")
    return folder / "feat_conv.pt", r"has shape \[\d+, 512, 5, 5\]"


def holds_nan(folder):
    feat = _feat(folder)
    feat[1, 3, 2, 2] = float("nan")
    torch.save(feat, folder / "feat_conv.pt")
    return folder / "feat_conv.pt", "holds NaN or infinite values"


class Payload:
    """Unpickled, it would leave a file named payload-ran in the trajectory's folder."""

    def __init__(self, folder):
        self.marker = folder / "payload-ran"

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_pickle(folder):
    torch.save({"frames": Payload(folder)}, folder / "feat_conv.pt")
    return folder / "feat_conv.pt", "cannot be read"


def extra_frame(folder):
    feat = _feat(folder)
    torch.save(torch.cat([feat, feat[:1]]), folder / "feat_conv.pt")
    return folder / "feat_conv.pt", rf"has {len(feat) + 1} frames, expected json_feat's"


def float64_features(folder):
    torch.save(_feat(folder).double(), folder / "feat_conv.pt")
    return None, None


def features_with_grad(folder):
    torch.save(_feat(folder).requires_grad_(), folder / "feat_conv.pt")
    return None, None


# split -> damages, each to one trajectory of that split (in folder order); every split keeps
# good trajectories, and train keeps most (the vocabulary comes from it).
DAMAGES = {
    "train": [truncated_json, text_high_idx, float64_features, features_with_grad],
    "valid_seen": [missing_key, odd_length_mask, integer_features, holds_nan],
    "valid_unseen": [truncated_features, wrong_shape, hostile_pickle, extra_frame],
}


def write_config(workdir: Path, tree: Path, splits_file: Path, **changes) -> None:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["data"].update(source=str(tree), splits_file=str(splits_file), **changes.pop("data", {}))
    for key, value in changes.items():
        config[key].update(value)
    (workdir / "config" / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture(scope="module")
def damaged(real_tree, tmp_path_factory):
    """A copy of the sample tree with one damaged trajectory per case, the originals of the
    damaged files, and the expected outcome: {split: {"rejected": {task: (path, reason)},
    "kept": [task, ...]}}."""
    tree, splits_file = real_tree
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(tree, root / "tree")
    shutil.copy(splits_file, root / "splits.json")
    originals, expected = root / "originals", {}
    for split, damages in DAMAGES.items():
        folders = sorted((root / "tree" / split).glob("*/*"))
        expected[split] = {"rejected": {}, "kept": []}
        for i, folder in enumerate(folders):
            task = f"{folder.parent.name}/{folder.name}"
            if i < len(damages):
                shutil.copytree(folder, originals / split / task)
                path, reason = damages[i](folder)
                if path is not None:
                    expected[split]["rejected"][task] = (path, reason)
                    continue
            expected[split]["kept"].append(task)
    return root / "tree", root / "splits.json", originals, expected


@pytest.fixture(scope="module")
def skipped_run(damaged, tmp_path_factory):
    tree, splits_file, _, _ = damaged
    workdir = copy_repo(tmp_path_factory.mktemp("skip") / "repo")
    write_config(workdir, tree, splits_file, data={"on_bad_input": "skip"})
    snakemake(workdir, "--cores", "2", *STORES)
    return workdir


def test_skip_lists_every_bad_trajectory_and_keeps_every_good_one(damaged, skipped_run):
    tree, _, _, expected = damaged
    assert not list(tree.rglob("payload-ran"))
    for split, outcome in expected.items():
        rejected = pd.read_parquet(skipped_run / "data/store" / split / store.REJECTED)
        assert sorted(rejected["task"]) == sorted(outcome["rejected"]), split
        for row in rejected.itertuples():
            path, reason = outcome["rejected"][row.task]
            assert row.path == str(path) and re.search(reason, row.reason), (row.path, row.reason)
        kept = pd.read_parquet(skipped_run / "data/store" / split / store.TRAJECTORIES)
        assert sorted(kept["task"]) == sorted(outcome["kept"]), split
    meta = store.read_meta(skipped_run / "data/store/train")
    assert meta["converted_features"] == {"float64": 1}


def test_fail_stops_with_one_line_naming_the_file_and_keeps_the_other_stores(damaged, tmp_path):
    """Clean stores first; then one valid_unseen file goes bad: its job stops with one line
    naming the file, and the stores of the other splits stay as they were."""
    _, splits_file, originals, expected = damaged
    tree = tmp_path / "tree"
    shutil.copytree(damaged[0], tree)
    for split in DAMAGES:  # repaired
        for folder in (originals / split).glob("*/*"):
            shutil.copytree(folder, tree / split / folder.parent.name / folder.name, dirs_exist_ok=True)
    workdir = copy_repo(tmp_path / "repo")
    write_config(workdir, tree, splits_file, data={"on_bad_input": "fail"})
    snakemake(workdir, "--cores", "2", *STORES)
    before = {split: tree_digest(workdir / "data/store" / split) for split in ("train", "valid_seen")}
    task = next(iter(expected["valid_unseen"]["rejected"]))
    path, reason = holds_nan(tree / "valid_unseen" / task)
    output = snakemake(workdir, "--cores", "2", *STORES, check=False)
    assert f"{path}: holds NaN or infinite values" in output.splitlines(), output[-3000:]
    assert re.search(reason, (workdir / "logs/preprocess/valid_unseen.log").read_text())
    assert "Traceback" not in (workdir / "logs/preprocess/valid_unseen.log").read_text()
    for split, digest in before.items():
        assert tree_digest(workdir / "data/store" / split) == digest
    assert not list((workdir / "data/store").glob(".*.tmp-*"))


def test_a_repaired_file_reruns_exactly_its_splits_jobs(damaged, skipped_run):
    _, _, originals, expected = damaged
    tree = Path(yaml.safe_load((skipped_run / "config/config.yaml").read_text())["data"]["source"])
    task = next(iter(expected["valid_seen"]["rejected"]))
    shutil.copytree(originals / "valid_seen" / task, tree / "valid_seen" / task, dirs_exist_ok=True)
    assert planned_jobs(snakemake(skipped_run, "-n", *STORES)) == [
        ("manifest", "valid_seen"), ("preprocess", "valid_seen"), ("subset", "valid_seen")]
    snakemake(skipped_run, "--cores", "2", *STORES)
    kept = pd.read_parquet(skipped_run / "data/store/valid_seen" / store.TRAJECTORIES)
    assert task in set(kept["task"])
    assert "Nothing to be done" in snakemake(skipped_run, "-n", *STORES)


def _store_bytes(store_root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(store_root):
        for name in files:
            try:
                total += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:  # renamed or removed while walking
                pass
    return total


def test_two_preprocess_jobs_at_once_never_hold_more_than_the_budget(real_tree, tmp_path):
    """Three stores of about the same size and a budget (after the models' and results'
    reservation) that holds one and a half: the jobs that would pass it are refused before
    writing, while the peak on disk is sampled."""
    from alfred_edge.data import plan

    tree, splits_file = real_tree
    workdir = copy_repo(tmp_path / "repo")
    subset = {"mode": "count", "seed": 0, "train": 7, "valid_seen": 7, "valid_unseen": 7}
    write_config(workdir, tree, splits_file, data={"subset": subset}, bench={"devices": ["cpu"]})
    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    figures = plan.make_plan(config["data"], 10**12, {})["splits"]
    largest = max(f["store_bytes"]["float16"] for f in figures.values())
    variants, bench = config["quantize"]["variants"], config["bench"]
    cells = len(config["models"]) * len(variants) * len(bench["batches"])  # one device
    reserved = sum(plan.reserved_bytes(config["models"], variants, cells, "source").values())
    budget = reserved + 1.5 * largest
    write_config(workdir, tree, splits_file, data={"subset": subset}, bench={"devices": ["cpu"]},
                 storage={"budget_gb": budget / 1e9})
    peak, done = [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _store_bytes(workdir / "data/store"))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        output = snakemake(workdir, "--cores", "2", "--keep-going", *STORES, check=False)
    finally:
        done.set()
        sampler.join()
    built = [s for s in STORES if (workdir / s / store.META).exists()]
    assert len(built) == 1, output[-3000:]
    assert "over storage.budget_gb" in output
    assert 0 < peak[0] <= budget - reserved, (peak[0], budget - reserved)
    print(f"peak of data/store during the run: {peak[0] / 1e6:.1f} MB; store budget {(budget - reserved) / 1e6:.1f} MB")


@pytest.fixture(scope="module")
def parse_workdir(tmp_path_factory):
    return copy_repo(tmp_path_factory.mktemp("parse") / "repo")


def _without_repeat_idx(splits):
    splits["valid_seen"][1] = {"task": splits["valid_seen"][1]["task"]}


def _entry_not_a_dict(splits):
    splits["train"][0] = splits["train"][0]["task"]


def _empty_split(splits):
    splits["valid_unseen"] = []


# case: (config changes, an edit of the splits file or None, the message expected; {splits}
# stands for the edited splits file, {tree} for the data tree)
PARSE_CASES = {
    "nan budget": ({"storage": {"budget_gb": float("nan")}}, None,
                   "config: storage.budget_gb is nan: give a finite number"),
    "infinite budget": ({"storage": {"budget_gb": float("inf")}}, None,
                        "config: storage.budget_gb is inf: give a finite number"),
    "unknown variant": ({"quantize": {"variants": ["fp32", "int4"]}}, None,
                        r"config: quantize.variants names what is not a variant: 'int4': 'int4' not in the registry "
                        r"\(known: fp32, int8_dynamic"),
    "composite out of order": ({"quantize": {"variants": ["fp32", "int8_dynamic+lowrank"]}}, None,
                               "'int8_dynamic\\+lowrank': at most one precision step, and it comes last"),
    "unknown backend": ({"quantize": {"backends": {"eager": {}, "tvm": {}}}}, None,
                        r"config: quantize.backends names \['tvm'\]; known: eager, onnxruntime"),
    "backend variant not configured": ({"quantize": {"backends": {"onnxruntime": {"variants": ["fp16"]}}}}, None,
                                       r"config: quantize.backends.onnxruntime.variants names \['fp16'\], not in"),
    "model variant not configured": ({"models": {"lstm_alfred_size": {"architecture": "lstm", "cost_only": True,
                                                                      "variants": ["fp32", "fp16"]}}}, None,
                                     r"config: models.lstm_alfred_size.variants names \['fp16'\], not in "
                                     "quantize.variants"),
    "entry without repeat_idx": ({}, _without_repeat_idx,
                                 r"config: data.splits_file: {splits}: entry 1 of 'valid_seen' is \{{'task': '[^']+'\}}, "
                                 "expected"),
    "entry not a dict": ({}, _entry_not_a_dict, "config: data.splits_file: {splits}: entry 0 of 'train' is '[^']+', expected"),
    "empty split": ({}, _empty_split, r"data.splits: \['valid_unseen'\] have no entries in"),
    "split missing from the tree": ({}, None, "data.source: {tree}/valid_unseen holds none of the 7 trajectories"),
}


@pytest.mark.parametrize("case", PARSE_CASES)
def test_bad_settings_and_splits_files_are_named_when_the_workflow_is_parsed(case, parse_workdir, real_tree, tmp_path):
    tree, splits_file = real_tree
    changes, edit, message = PARSE_CASES[case]
    if edit is not None:
        splits = json.loads(splits_file.read_text())
        edit(splits)
        splits_file = tmp_path / "splits.json"
        splits_file.write_text(json.dumps(splits))
    if case == "split missing from the tree":
        shutil.copytree(tree, tmp_path / "tree", ignore=shutil.ignore_patterns("valid_unseen"))
        tree = tmp_path / "tree"
    write_config(parse_workdir, tree, splits_file, **changes)
    output = snakemake(parse_workdir, "-n", check=False)
    assert re.search(message.format(splits=splits_file, tree=tree), output), output[-2000:]
    assert "Traceback" not in output
