"""The standalone runner: its defaults are the config's, it imports nothing the Jetson path
lacks, and it writes the pipeline's files (one cheap identity cell)."""
import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from alfred_edge.bench import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


def defaults(bench):
    """The runner's defaults, in the config's shape, as parse_args gives them for `bench`."""
    cell = cli.parse_args(["cell", "--model", "lstm", "--batch", "1"], bench)
    capacity = cli.parse_args(["capacity", "--model", "lstm"], bench)
    roofline = cli.parse_args(["roofline"], bench)
    return {
        "threads": cell.threads, "max_steps": cell.max_steps, "store": cell.store, "timeout_s": cell.timeout_s,
        "loop": {k: getattr(cell, k) for k in ("min_iterations", "min_duration_s", "max_duration_s", "warmup_iterations",
                                               "ci_half_width")},
        "workload": cell.workload,
        "power": {"interval_s": cell.power_interval_s, "idle_s": cell.idle_power_s},
        "roofline": {"matmul_size": roofline.matmul_size, "copy_mb": roofline.copy_mb, "seconds": roofline.seconds},
        "budgets_gb": json.loads(capacity.budgets_gb),
        "capacity": {k: getattr(capacity, k) for k in ("max_batch", "factor", "steps", "max_seconds")},
    }


@pytest.mark.parametrize("edit", [{}, {"threads": 6, "max_steps": 3, "split": "valid_unseen", "min_iterations": 9,
                                       "ci_half_width": 0.02, "workload": "policy",
                                       "power": {"interval_s": 0.5, "idle_s": 0.0}, "ram_budgets_gb": {"orin": 8.0},
                                       "roofline": {"matmul_size": 256, "copy_mb": 16, "seconds": 0.25},
                                       "capacity": {"max_batch": 64, "factor": 4.0, "steps": 1, "max_seconds": 5}}])
def test_defaults_are_the_config_files(tmp_path, edit):
    """The checkout's config/config.yaml, and any edit of it: the runner reads its defaults
    there, so they cannot drift from the pipeline's."""
    config = yaml.safe_load(cli.CONFIG_PATH.read_text())
    config["bench"].update(edit)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    bench = config["bench"]
    d = defaults(cli.config_bench(tmp_path / "config.yaml") if edit else cli.config_bench())
    assert cli.CONFIG_PATH == REPO / "config" / "config.yaml"
    assert d["threads"] == bench["threads"] and d["max_steps"] == bench["max_steps"]
    assert d["store"] == f"data/store/{bench['split']}" and d["timeout_s"] == bench["timeout_s"]
    assert d["loop"] == {k: bench[k] for k in d["loop"]} and d["workload"] == bench["workload"]
    assert d["power"] == bench["power"] and d["roofline"] == bench["roofline"]
    assert d["budgets_gb"] == bench["ram_budgets_gb"]
    assert d["capacity"] == {k: bench["capacity"][k] for k in ("max_batch", "factor", "steps", "max_seconds")}


def test_parent_side_imports_none_of_pandas_polars_snakemake_matplotlib_torch():
    code = ("import sys; import alfred_edge.bench.__main__, alfred_edge.bench.runner, alfred_edge.bench.capacity; "
            "print(sorted(m for m in ('pandas', 'polars', 'snakemake', 'matplotlib', 'torch', 'yaml') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_measuring_side_imports_nothing_beyond_torch_numpy_psutil_pyarrow():
    """What a board needs for an lstm cell (the README's fleet recipe): the child's modules,
    the store's loader and vocabulary, the variant loader and the model, on top of torch,
    numpy, psutil and pyarrow, add no other third-party package."""
    code = ("import sys; import torch, numpy, psutil, pyarrow, pyarrow.parquet; base = set(sys.modules); "
            "from alfred_edge.bench import child, workloads; from alfred_edge import quantize; "
            "from alfred_edge.data import loader, store, vocab; from alfred_edge.models import lstm; "
            "new = {m.split('.')[0] for m in set(sys.modules) - base} - set(sys.stdlib_module_names); "
            "print(sorted(new - {'alfred_edge'}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_cell_writes_the_schema_path_and_skips_after_a_smaller_oom(tmp_path):
    run = lambda *extra: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "alfred_edge.bench", "cell", "--model", "identity", "--host", "board-1",
         "--out-root", str(tmp_path), "--min-duration-s", "0", "--threads", "1", *extra],
        capture_output=True, text=True, check=True, cwd=tmp_path)
    run("--batch", "2")
    path = tmp_path / "board-1" / "cells" / "identity" / "fp32" / "cpu" / "mmap" / "eager.torch" / "b2.parquet"
    row = pq.read_table(path).to_pylist()[0]
    assert row["status"] == "ok" and row["host"] == "board-1" and row["batch_size"] == 2
    # an OOM row at batch 2 (as a board would leave it) makes batch 4 a skipped row, without a child
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", [["oom"]]), path)
    out = run("--batch", "4").stdout
    assert "status skipped (batch 2 already ran out of memory (oom)" in out
