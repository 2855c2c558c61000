"""The real case end to end: config/alfred.yaml with ALFRED's golden checkpoint (made by
ALFRED's own code) and `epochs: 0` over the real sample (random features of the real shape):
the checkpoint is measured as it is, never trained, and changing it reruns what depends on
the vocabulary only."""
from __future__ import annotations

import json
import re

import pandas as pd
import pytest
import torch
import yaml

from conftest import ALFRED_GOLDEN
from alfred_golden import golden_checkpoint
from test_pipeline_reruns import HOST, copy_repo, edited, job_stats, snakemake, tiny_config_text

pytestmark = pytest.mark.slow

ALFRED_FILES = "data/alfred"
# The golden checkpoint's sizes and a tiny sweep, over config/alfred.yaml (as a user's own
# second --configfile would change it).
GOLDEN_RUN = {
    "models": {"lstm": {"demb": 16, "dhid": 16, "dframe": 32}},
    "quantize": {"variants": ["fp32", "int8_dynamic"], "eval_batch": 4},
}
REAL_CASE = ["--configfile", "config/alfred.yaml", "golden.yaml"]


@pytest.fixture(scope="module")
def alfred_run(real_tree, tmp_path_factory):
    """A copy of the repo whose data/alfred/ holds the sample tree, its splits file and the
    golden checkpoint where config/alfred.yaml expects them; returns (workdir, dry run)."""
    workdir = copy_repo(tmp_path_factory.mktemp("alfred") / "repo")
    (workdir / "config" / "config.yaml").write_text(tiny_config_text())
    (workdir / "golden.yaml").write_text(yaml.safe_dump(GOLDEN_RUN))
    files = workdir / ALFRED_FILES
    (files / "splits").mkdir(parents=True)
    tree, splits_file = real_tree
    (files / "json_feat_2.1.0").symlink_to(tree)
    (files / "splits" / "oct21.json").symlink_to(splits_file)
    (files / "best_seen.pth").symlink_to(ALFRED_GOLDEN / "best_seen.pth")
    dry_run = snakemake(workdir, *REAL_CASE, "-n")
    snakemake(workdir, *REAL_CASE, "--cores", "2")
    return workdir, dry_run


def test_the_checkpoint_is_measured_without_a_train_job(alfred_run):
    _, dry_run = alfred_run
    stats = job_stats(dry_run)
    assert stats["import_checkpoint"] == 1 and stats["vocab_from_checkpoint"] == 1
    assert stats["train"] == 1 and "synthesize" not in stats and "vocab" not in stats
    train_jobs = re.findall(r"rule train:.*?wildcards: model=(\w+)", dry_run, re.S)
    assert train_jobs == ["transformer"]


def test_the_model_file_holds_the_checkpoints_weights_bit_for_bit(alfred_run):
    workdir, _ = alfred_run
    saved = torch.load(workdir / "models/lstm/fp32.pt", weights_only=True)["state_dict"]
    original = golden_checkpoint("best_seen.pth")["model"]
    assert set(saved) == set(original)
    for key, tensor in original.items():
        assert saved[key].dtype == tensor.dtype and torch.equal(saved[key], tensor), key


def test_the_checkpoint_is_evaluated_quantized_and_benchmarked(alfred_run, real_tree):
    workdir, _ = alfred_run
    annotations = json.loads(real_tree[1].read_text())
    for variant in ("fp32", "int8_dynamic"):
        row = pd.read_parquet(workdir / f"models/lstm/{variant}.eval.parquet").iloc[0]
        assert row["status"] == "ok" and 0 <= row["accuracy_valid_seen"] <= 1
        for split in ("valid_seen", "valid_unseen"):
            assert row[f"n_annotations_{split}"] == len(annotations[split])
    assert (workdir / "models/lstm/int8_dynamic.pt").is_file()
    results = pd.read_parquet(workdir / "reports/results.parquet")
    lstm = results[(results["model"] == "lstm") & (results["host"] == HOST)]
    assert set(lstm["variant"]) == {"fp32", "int8_dynamic"} and (lstm["status"] == "ok").all()
    assert not (workdir / "models/lstm/train_metrics.parquet").exists()
    assert (workdir / "reports/summary.html").is_file()


def test_a_finished_real_case_has_nothing_to_do(alfred_run):
    workdir, _ = alfred_run
    assert "Nothing to be done" in snakemake(workdir, *REAL_CASE, "-n")


def test_another_checkpoint_reruns_what_depends_on_the_vocabulary(alfred_run):
    workdir, _ = alfred_run
    golden = workdir / "golden.yaml"
    legacy = str(ALFRED_GOLDEN / "best_seen_legacy.pth")
    with edited(golden, lambda text: yaml.safe_dump({**GOLDEN_RUN, "models": {
            "lstm": {**GOLDEN_RUN["models"]["lstm"], "init_from": legacy}}})):
        output = snakemake(workdir, *REAL_CASE, "-n")
    # The vocabulary, every store, both models (the transformer reads the store's vocabulary)
    # and all that follows; not the manifest, the subsets, the storage plan or the roofline.
    assert job_stats(output) == {
        "vocab_from_checkpoint": 1, "preprocess": 3, "import_checkpoint": 1, "train": 1, "evaluate_fp32": 2,
        "quantize": 2, "bench_flops": 2, "bench": 4, "bench_capacity": 4, "aggregate": 1, "summary": 1, "all": 1}


def test_epochs_zero_without_a_checkpoint_is_named_at_parse_time(alfred_run):
    workdir, _ = alfred_run
    (workdir / "no_checkpoint.yaml").write_text(yaml.safe_dump({"models": {"lstm": {"init_from": None}}}))
    output = snakemake(workdir, *REAL_CASE, "no_checkpoint.yaml", "-n", check=False)
    assert "config: models.lstm.train.epochs is 0 (no training), but models.lstm.init_from names no " \
           "checkpoint to measure" in output
