"""Subsets: deterministic, stratified by task type, by count / fraction / storage budget."""
import json
from collections import Counter

import numpy as np
import pytest

from alfred_edge import variants
from alfred_edge.data import plan, subset
from alfred_edge.data.store import planned_store_bytes
from conftest import ALFRED_SAMPLE, DATA_SPLITS


def alfred_scale_rows():
    """Manifest rows for ALFRED's real oct21.json (train + valid), with made-up frame
    counts (7..95, mean 51 as in ALFRED); no files needed."""
    splits = json.loads((ALFRED_SAMPLE / "splits" / "oct21.json").read_text())
    rng = np.random.default_rng(0)
    rows = []
    for split in DATA_SPLITS:
        tasks = Counter(e["task"] for e in splits[split])
        for task, n_ann in tasks.items():
            n = int(rng.integers(7, 96))
            rows.append(dict(split=split, task=task, task_type=task.split("-")[0], n_annotations=n_ann,
                             repeat_idx=list(range(n_ann)), n_frames=n, n_low_actions=n - 1,
                             feat_bytes=n * 100352 + 1100, json_bytes=150_000, problem=""))
    return rows


@pytest.fixture(scope="module")
def rows():
    return alfred_scale_rows()


def test_alfred_scale_counts(rows):
    assert len(rows) == 6574 + 251 + 255


def stratum_counts(chosen):
    return Counter((r["split"], r["task_type"]) for r in chosen)


def test_count_is_stratified_and_deterministic(rows):
    chosen = subset.select(rows, "train", 700, seed=0)
    assert len(chosen) == 700 and len({r["task"] for r in chosen}) == 700
    assert chosen == subset.select(rows, "train", 700, seed=0)
    assert chosen != subset.select(rows, "train", 700, seed=1)
    sizes = stratum_counts(r for r in rows if r["split"] == "train")
    got = stratum_counts(chosen)
    for stratum, size in sizes.items():
        assert abs(got[stratum] - 700 * size / sum(sizes.values())) <= 1.5, stratum
    # a larger subset contains the smaller one (prefixes of one order), and a split's order is
    # the all-splits order restricted to it (what the parse-time plan relies on)
    assert chosen == subset.select(rows, "train", 1400, seed=0)[:700]
    assert chosen == [r for r in subset.stratified_order(rows, 0) if r["split"] == "train"][:700]


def test_modes(rows):
    cfg = {"mode": "count", "train": 100, "valid_seen": 10**6, "valid_unseen": None}
    assert subset.split_counts(rows, DATA_SPLITS, cfg, "float16", 0) == {"train": 100, "valid_seen": 251, "valid_unseen": 255}
    cfg = {"mode": "fraction", "train": 0.1, "valid_seen": 1.0, "valid_unseen": 0.001}
    assert subset.split_counts(rows, DATA_SPLITS, cfg, "float16", 0) == {"train": 657, "valid_seen": 251, "valid_unseen": 1}
    assert subset.split_counts(rows, DATA_SPLITS, {"mode": "all"}, "float16", 0)["train"] == 6574


@pytest.mark.parametrize("cfg, message", [
    ({"mode": "count", "train": 0.5}, r"data.subset.train: 0.5 is not a whole number"),
    ({"mode": "fraction", "train": 3}, r"data.subset.train: 3 is not a fraction"),
])
def test_wrong_values_name_the_key(rows, cfg, message):
    with pytest.raises(ValueError, match=message):
        subset.split_counts(rows, DATA_SPLITS, cfg, "float16", 0)


@pytest.mark.parametrize("dtype", ["float16", "uint8"])
def test_budget_picks_the_largest_stratified_subset_that_fits(rows, dtype):
    budget = 16 * 10**9
    counts = subset.split_counts(rows, DATA_SPLITS, {"mode": "budget"}, dtype, budget)
    order = subset.stratified_order(rows, 0)
    chosen = [r for s in DATA_SPLITS for r in subset.select(rows, s, counts[s], 0)]
    used = sum(planned_store_bytes(sum(r["n_frames"] for r in chosen if r["split"] == s),
                                   counts[s], dtype) for s in DATA_SPLITS)
    assert used <= budget
    if len(chosen) < len(order):  # the next trajectory in the order would not fit
        assert used + subset.trajectory_store_bytes(order[len(chosen)], dtype) > budget
    assert chosen and sorted(map(id, chosen)) == sorted(map(id, order[:len(chosen)]))
    # every (split, task type) in proportion: within one trajectory of the common fraction
    q = len(chosen) / len(rows)
    for stratum, size in stratum_counts(rows).items():
        assert abs(stratum_counts(chosen)[stratum] - q * size) <= 1.5, stratum
    if dtype == "uint8":  # the whole float16 dataset is 18 GB; uint8 halves it and all fits
        assert counts == {"train": 6574, "valid_seen": 251, "valid_unseen": 255}


def test_plan_reports_budget_subset(rows, monkeypatch):
    monkeypatch.setattr(plan, "manifest_rows", lambda data_cfg: rows)
    data_cfg = {"splits": DATA_SPLITS, "store_dtype": "float16", "subset": {"mode": "budget", "seed": 0}}
    reserved = {"models/lstm": 10**9}
    result = plan.make_plan(data_cfg, 16 * 10**9, reserved)
    store_total = sum(f["store_bytes"]["float16"] for f in result["splits"].values())
    assert store_total + 10**9 <= 16 * 10**9
    assert 0 < result["counts"]["train"] < 6574
    text = plan.storage_markdown({"budget_bytes": 16 * 10**9, "dtype": "float16", "reserved": reserved,
                                  "source": "x", "splits": result["splits"], "subset_mode": "budget"},
                                 free_bytes=10**12, free_path="data")
    assert "**The plan fits**" in text and "| train |" in text


def test_reserved_bytes_count_a_models_own_variants_only():
    sizes = {"demb": 100, "dhid": 128, "dframe": 256}
    models = {"lstm": sizes, "small": {"architecture": "lstm", **sizes, "variants": ["fp32"]}}
    reserved = plan.reserved_bytes(models, ["fp32", "int8_dynamic"], 0, "synthetic")
    # the same architecture: "small" reserves its fp32 file, "lstm" that and its int8 file
    assert reserved["models/small"] < reserved["models/lstm"] < 2 * reserved["models/small"]
    assert variants.for_model(["fp32", "int8_dynamic", "lowrank"], {"variants": ["lowrank", "fp32"]}) == ["fp32", "lowrank"]
    assert variants.for_model(["fp32", "lowrank"], {}) == ["fp32", "lowrank"]


def test_config_errors_name_the_setting(tmp_path):
    data_cfg = {"source": str(tmp_path / "nowhere"), "splits_file": None, "splits": ["train"]}
    with pytest.raises(ValueError, match="data.source"):
        plan.manifest_rows(data_cfg)
    data_cfg["source"] = str(tmp_path)
    with pytest.raises(ValueError, match="data.splits_file"):
        plan.manifest_rows(data_cfg)
