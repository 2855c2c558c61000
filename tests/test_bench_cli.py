"""The standalone runner: its defaults are the config's, it imports nothing the Jetson path
lacks, and it writes the pipeline's files (one cheap identity cell)."""
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import yaml

from alfred_edge.bench import __main__ as cli

REPO = Path(__file__).resolve().parents[1]


def test_defaults_equal_the_embedded_config():
    bench = yaml.safe_load((REPO / "config" / "config.yaml").read_text())["bench"]
    d = cli.DEFAULTS
    assert d["threads"] == bench["threads"] and d["max_steps"] == bench["max_steps"]
    assert d["store_split"] == bench["split"] and d["timeout_s"] == bench["timeout_s"]
    assert d["loop"] == {k: bench[k] for k in d["loop"]}
    assert d["power"] == bench["power"] and d["roofline"] == bench["roofline"]
    assert d["capacity"]["budgets_gb"] == bench["ram_budgets_gb"]
    assert {k: v for k, v in d["capacity"].items() if k != "budgets_gb"} == \
        {k: bench["capacity"][k] for k in ("max_batch", "factor", "steps", "max_seconds")}


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
    path = tmp_path / "board-1" / "cells" / "identity" / "fp32" / "cpu" / "mmap" / "b2.parquet"
    row = pq.read_table(path).to_pylist()[0]
    assert row["status"] == "ok" and row["host"] == "board-1" and row["batch_size"] == 2
    # an OOM row at batch 2 (as a board would leave it) makes batch 4 a skipped row, without a child
    table = pq.read_table(path)
    pq.write_table(table.set_column(table.schema.get_field_index("status"), "status", [["oom"]]), path)
    out = run("--batch", "4").stdout
    assert "status skipped (batch 2 already ran out of memory (oom)" in out
