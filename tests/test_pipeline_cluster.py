"""Scale-out: the same rules dispatched by a real non-local executor (Snakemake's
cluster-generic executor plugin, with a submit command, tests/cluster/submit.sh, that starts
each jobscript in the background on this machine and answers a job id, as sbatch or qsub
would), and the fleet recipe of the README (benchmark jobs for one host run on "the board"
from the copied models and store, its reports/bench/<host>/ copied back and aggregated)."""
from __future__ import annotations

import shutil

import pandas as pd
import pytest

from conftest import REPO_ROOT
from test_bench_runner import board_python
from test_pipeline_reruns import copy_repo, finished_run, job_stats, planned, snakemake, tiny_config_text  # noqa: F401

pytestmark = pytest.mark.slow
TARGETS = ["data/subset/valid_seen.json", "reports/storage_plan.md"]


def test_data_jobs_run_through_the_cluster_generic_executor(finished_run, tmp_path):
    work = copy_repo(tmp_path / "repo")
    (work / "config" / "config.yaml").write_text(tiny_config_text())
    submit = REPO_ROOT / "tests" / "cluster" / "submit.sh"
    output = snakemake(work, "--executor", "cluster-generic", "--cluster-generic-submit-cmd", f"bash {submit} {{rule}}",
                       "--jobs", "2", "--cores", "2", "--seconds-between-status-checks", "1", *TARGETS)
    assert "Using workflow specific profile workflow/profiles/default" in output
    submitted = sorted(line.split()[1] for line in (work / "cluster-logs/submitted.txt").read_text().splitlines())
    assert submitted == ["manifest", "storage_plan", "subset", "synthesize"]
    assert (work / TARGETS[0]).read_bytes() == (finished_run / TARGETS[0]).read_bytes()
    # the storage plan equals the local run's but for the free space measured when it ran
    plan, local_plan = ([line for line in (run / TARGETS[1]).read_text().splitlines() if "free space" not in line]
                        for run in (work, finished_run))
    assert plan == local_plan
    assert "Nothing to be done" in snakemake(work, "-n", *TARGETS)


def test_fleet_recipe_a_boards_cells_join_the_report(finished_run, tmp_path):
    board = copy_repo(tmp_path / "board")
    (board / "config" / "config.yaml").write_text(tiny_config_text())
    # what the README says to copy: the models, the benchmark's store split and the vocabulary
    shutil.copytree(finished_run / "models", board / "models", dirs_exist_ok=True)
    shutil.copytree(finished_run / "data/store/valid_seen", board / "data/store/valid_seen")
    shutil.copy2(finished_run / "data/store/vocab.json", board / "data/store/vocab.json")
    # the board's own Python (bench.python) measures, whatever interpreter runs Snakemake
    python, python_log = board_python(tmp_path)
    on_board = f"bench={{host: board, python: {python}}}"
    refused = snakemake(board, "-n", "--config", "bench={host: board, python: /no/such/python3}", check=False)
    assert "bench.python '/no/such/python3' is not an executable" in refused
    # the README's command plans this host's whole sweep and nothing upstream of it
    plan = snakemake(board, "-n", "-q", "rules", "--config", on_board, "--allowed-rules",
                     "bench_roofline", "bench_flops", "bench", "bench_capacity", "aggregate", "--",
                     "reports/results.parquet")
    assert job_stats(plan) == {"bench_roofline": 1, "bench_flops": 3, "bench": 6, "bench_capacity": 6, "aggregate": 1}
    cell = "reports/bench/board/cells/lstm/int8_dynamic/cpu/mmap/eager.torch/b1.parquet"
    # on the board: only the benchmark rules, the copied models and store taken as they are
    output = snakemake(board, "--cores", "2", "--config", on_board,
                       "--allowed-rules", "bench_roofline", "bench_flops", "bench", "--", cell)
    assert "rule train" not in output and "rule preprocess" not in output
    children = sorted(line.split()[2] for line in python_log.read_text().splitlines())
    assert children == ["cell", "flops", "roofline"]
    # back home: copying the board's folder in reruns only the aggregation and the page
    home = shutil.copytree(finished_run, tmp_path / "home", symlinks=True)
    shutil.copytree(board / "reports/bench/board", home / "reports/bench/board")
    assert planned(home) == {"aggregate": 1, "summary": 1, "all": 1}
    snakemake(home, "--cores", "2", "reports/results.parquet")
    hosts = pd.read_parquet(home / "reports/results.parquet", columns=["host"])["host"]
    assert set(hosts) == {"board", "testhost"} and (hosts == "board").sum() == 1
