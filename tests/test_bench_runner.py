"""Failures are rows: every outcome of a cell (ok, oom, oom_killed, timeout, error, skipped)
ends up in its Parquet file with the reason. Children here import torch (a few seconds each),
so only the paths that need a real child use one."""
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
import torch

from alfred_edge.bench import capacity, child, harness, memory, runner

LOOP = {"min_iterations": 3, "min_duration_s": 0.0, "max_duration_s": 10.0, "warmup_iterations": 1}


def fake_spec(**overrides):
    spec = {"host": "testhost", "model": "fake", "workload": "expert", "variant": "fp32", "device": "cpu", "batch_size": 3,
            "features": "mmap", "threads": 1, "max_steps": 3, "timeout_s": 120, "loop": LOOP,
            "power": {"interval_s": 0.05, "idle_s": 0.0}, "model_path": None, "fp32_path": None}
    return {**spec, **overrides}


def read_row(path):
    rows = pq.read_table(path).to_pylist()
    assert len(rows) == 1
    return rows[0]


def test_ok_cell_row_holds_what_was_measured(tmp_path):
    row = runner.run_cell(fake_spec(), tmp_path / "b3.parquet")
    written = read_row(tmp_path / "b3.parquet")
    assert written["run_id"] == row["run_id"] and written["status"] == "ok" and written["error"] is None
    assert written["observed_batch_size"] == 3 and written["steps_per_episode"] == 3
    assert written["iterations"] == len(written["latencies_ms"]) == len(written["rss_trace_mb"]) >= 3
    assert written["latency_min_ms"] <= written["latency_p50_ms"] <= written["latency_max_ms"]
    assert written["num_threads"] == 1 and written["torch_version"] == torch.__version__
    assert written["peak_rss_mb"] >= written["peak_rss_inference_mb"] > written["rss_baseline_mb"] > 0
    assert written["flops_per_step"] > 0
    assert 0 < written["cpu_time_s"] and written["cpu_time_p50_ms"] > 0
    assert written["power_method"] != "none" or written["power_unavailable_reason"]
    assert written["settings_digest"] and '"batch_size":3' in written["settings_json"]


def test_cuda_out_of_memory_becomes_an_oom_row(tmp_path):
    row = runner.run_cell(fake_spec(fault="cuda_oom"), tmp_path / "oom.parquet")
    assert row["status"] == "oom" and "OutOfMemoryError" in row["error"]
    assert read_row(tmp_path / "oom.parquet")["status"] == "oom"
    assert row["exit_code"] == 0 and row["peak_rss_mb"] > 0


def test_a_child_killed_by_sigkill_becomes_oom_killed(tmp_path):
    row = runner.run_cell(fake_spec(fault="die"), tmp_path / "killed.parquet")
    assert row["status"] == "oom_killed" and row["exit_code"] == -9
    assert row["peak_rss_mb"] > 0            # from wait4's ru_maxrss: the child could not report
    assert row["torch_version"]              # filled in by the parent


def test_absent_device_is_a_skipped_row_without_a_child(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "run_child", lambda *a, **k: pytest.fail("no child for an absent device"))
    monkeypatch.setattr(runner.os.path, "exists", lambda path: False)  # no /dev/nvidia*
    row = runner.run_cell(fake_spec(device="cuda"), tmp_path / "cuda.parquet")
    assert row["status"] == "skipped" and "no NVIDIA GPU" in row["error"]
    assert read_row(tmp_path / "cuda.parquet")["batch_size"] == 3


def test_a_bench_file_has_no_dictionary_pages_or_statistics(tmp_path):
    """What the aggregation parses thousands of: plain one-row column chunks."""
    write_row(fake_spec(), tmp_path / "b3.parquet", status="ok", latency_p50_ms=1.5, error="none")
    row_group = pq.read_metadata(tmp_path / "b3.parquet").row_group(0)
    chunks = [row_group.column(i) for i in range(row_group.num_columns)]
    assert len(chunks) > 100
    assert not any(chunk.has_dictionary_page or chunk.is_stats_set for chunk in chunks)
    assert read_row(tmp_path / "b3.parquet")["latency_p50_ms"] == 1.5


def test_cuda_absent_in_torch_is_skipped_in_the_child():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    with pytest.raises(Exception) as info:
        child.measure_cell(fake_spec(device="cuda"), torch)
    cols = child.failure_columns(info.value, torch)
    assert cols["status"] == "skipped" and "no CUDA device" in cols["error"]


def test_wrong_batch_size_is_caught():
    with pytest.raises(harness.BatchSizeError, match="asked for batch 3") as info:
        child.measure_cell(fake_spec(fault="wrong_batch"), torch)
    cols = child.failure_columns(info.value, torch)
    assert cols["status"] == "error" and "asked for batch 3" in cols["error"] and "[2,1,300,300]" not in cols["error"]


def test_memory_error_and_cuda_messages_are_oom():
    assert child.failure_columns(MemoryError("x"), torch)["status"] == "oom"
    assert child.failure_columns(RuntimeError("CUDA error: out of memory"), torch)["status"] == "oom"
    assert child.failure_columns(ValueError("bad file"), torch)["status"] == "error"


def test_cuda_oom_is_classified_on_a_torch_without_the_top_level_class(monkeypatch):
    """A torch built before the top-level class (pytorch#121702) has torch.cuda.OutOfMemoryError
    only: the fake model's fault and the classification both use that name, and the class
    (not the message) makes it an oom."""
    monkeypatch.delattr(torch, "OutOfMemoryError", raising=False)
    with pytest.raises(torch.cuda.OutOfMemoryError) as info:
        child.measure_cell(fake_spec(fault="cuda_oom"), torch)
    assert child.failure_columns(info.value, torch)["status"] == "oom"
    assert child.failure_columns(torch.cuda.OutOfMemoryError("Tried to allocate 2.00 GiB"), torch)["status"] == "oom"


def test_smaller_batch_oom_skips_larger_ones(tmp_path):
    runner.skipped_row("cells", fake_spec(device="cuda", batch_size=2), "irrelevant", tmp_path / "b2.parquet")
    assert runner.smaller_batch_oom_reason([str(tmp_path / "b2.parquet")]) is None
    write_row(fake_spec(batch_size=4), tmp_path / "b4.parquet", status="oom", error="OutOfMemoryError")
    reason = runner.smaller_batch_oom_reason([str(tmp_path / "b2.parquet"), str(tmp_path / "b4.parquet")])
    assert reason.startswith("batch 4 already ran out of memory (oom)")
    row = runner.run_cell(fake_spec(batch_size=8), tmp_path / "b8.parquet", skip_reason=reason)
    assert row["status"] == "skipped" and row["error"] == reason
    runner.run_cell(fake_spec(batch_size=16), tmp_path / "b16.parquet",
                    skip_reason=runner.smaller_batch_oom_reason([str(tmp_path / "b8.parquet")]))
    assert read_row(tmp_path / "b16.parquet")["error"] == reason   # the skip carries on up the sweep


def write_row(spec, path, **cols):
    """A cell row as a finished job leaves it (without spending a child on it)."""
    runner.finish("cells", {**runner.base_columns(spec), "batch_size": spec["batch_size"], **cols}, path)


def _python(code):
    return subprocess.Popen([sys.executable, "-c", code])


def test_watch_ends_a_child_at_the_timeout():
    status, rusage, ended_by, _ = runner._watch(_python("import time; time.sleep(60)"), timeout_s=0.5, ram_limit_mb=None)
    assert ended_by == "timeout"
    cols = runner.exit_columns(runner.ChildExit(-15, None, 1.0, 0.5, ended_by=ended_by), 0.5, None)
    assert cols["status"] == "timeout" and "0.5 s" in cols["error"]


def test_watch_ends_a_child_that_passes_the_ram_limit():
    code = "import time\nblocks = []\nwhile True:\n    blocks.append(bytearray(20_000_000)); time.sleep(0.02)"
    status, rusage, ended_by, peak = runner._watch(_python(code), timeout_s=30, ram_limit_mb=150)
    assert ended_by == "ram_limit" and peak > 150
    cols = runner.exit_columns(runner.ChildExit(-15, None, peak, 1.0, ended_by=ended_by, peak_seen_mb=peak), 30, 150)
    assert cols["status"] == "oom" and "limit of 150 MB" in cols["error"]


def test_capacity_search_stops_at_the_limit_and_reports_the_largest_batch(tmp_path):
    cells = []
    for b in (1, 2):
        write_row(fake_spec(batch_size=b), tmp_path / f"b{b}.parquet", status="ok", peak_memory_mb=300.0 + b)
        cells.append(str(tmp_path / f"b{b}.parquet"))
    spec = fake_spec(capacity={"budgets_gb": {"tiny": 0.05, "big": 100.0}, "measure": "tiny",
                               "max_batch": 8, "factor": 2.0, "steps": 2, "max_seconds": 60})
    rows = capacity.run_capacity(spec, cells, tmp_path / "capacity.parquet")
    by_budget = {r["budget_name"]: r for r in pq.read_table(tmp_path / "capacity.parquet").to_pylist()}
    assert set(by_budget) == {"tiny", "big"} and len(rows) == 2
    tiny = by_budget["tiny"]   # 50 MB: below a torch process's baseline, so nothing fits
    assert tiny["status"] == "ok" and tiny["measured"] and tiny["measured_max_batch"] == 0
    assert tiny["measured_first_failing_batch"] == 1 and tiny["measured_stop_reason"] == "ram_limit"
    assert by_budget["big"]["measured"] is False and by_budget["big"]["measured_max_batch"] is None
    assert by_budget["big"]["fit_points"] == 2
    assert by_budget["big"]["fit_slope_mb_per_sample"] == pytest.approx(1.0)
    assert by_budget["big"]["predicted_max_batch"] == pytest.approx(100_000 - 300, abs=1)


def test_measured_columns_from_progress():
    progress = [{"batch": b, "peak_memory_mb": mb, "memory_method": "rss"} for b, mb in ((1, 500), (2, 700), (4, 1100))]
    exit_ = runner.ChildExit(0, {}, 900, 3.0, ended_by="ram_limit", peak_seen_mb=1200, progress=progress)
    cols = capacity.measured_columns(exit_, [1, 2, 4, 8], limit_mb=1000)
    assert cols["measured_max_batch"] == 2 and cols["measured_first_failing_batch"] == 4
    assert cols["measured_peak_memory_mb"] == 700 and cols["measured_batches"] == [1, 2, 4]
    time_boxed = runner.ChildExit(0, {}, 700, 3.0, progress=progress[:2])
    cols = capacity.measured_columns(time_boxed, [1, 2, 4, 8], limit_mb=1000)
    assert cols["measured_max_batch"] == 2 and cols["measured_first_failing_batch"] is None


class GpuMemoryRssDoesNotShow:
    """A cuda process's GPU-side memory (nvmap on a Jetson) as memory.DeviceMemory reads it:
    1.5 GB more at each batch of the search, none of it in the RSS."""

    method = "rss+nvmap"

    def __init__(self, torch_module, device):
        self.batches = 0

    def reset_peak(self):
        self.batches += 1

    def peak_mb(self):
        return 1500.0 * self.batches


def test_the_capacity_search_counts_gpu_memory_and_stops_after_the_batch_that_passed(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "DeviceMemory", GpuMemoryRssDoesNotShow)
    progress = tmp_path / "progress.jsonl"
    cap = {"batches": [1, 2, 4, 8], "steps": 1, "factor": 2.0, "max_seconds": 600, "limit_mb": 3000.0}
    result = capacity.measure_search(fake_spec(capacity=cap, progress_path=str(progress)), torch)
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert result == {"measured_stop_reason": "ram_limit"} and [p["batch"] for p in lines] == [1, 2]
    assert lines[1]["peak_memory_mb"] > 3000 + memory.rss_mb() * 0.5 and lines[0]["memory_method"] == "rss+nvmap"
    cols = capacity.measured_columns(runner.ChildExit(0, result, 500, 1.0, progress=lines), cap["batches"], 3000.0)
    assert cols["measured_max_batch"] == 1 and cols["measured_first_failing_batch"] == 2
    assert cols["measured_memory_method"] == "rss+nvmap"


def test_a_cells_gpu_memory_counts_in_its_peak_and_against_the_ram_limit():
    cols = memory.total_memory_columns(800.0, GpuMemoryRssDoesNotShow(torch, "cuda"), device_before_mb=2500.0)
    assert cols == {"peak_device_memory_mb": 2500.0, "peak_memory_mb": 3300.0, "memory_method": "rss+nvmap"}
    result = {"status": "ok", "peak_rss_mb": 800.0, **cols}
    under = runner.exit_columns(runner.ChildExit(0, result, 800.0, 1.0), 60, ram_limit_mb=4000.0)
    over = runner.exit_columns(runner.ChildExit(0, result, 800.0, 1.0), 60, ram_limit_mb=3000.0)
    assert under["status"] == "ok"
    assert over["status"] == "oom" and "peak memory 3300 MB (rss+nvmap) passed the harness's limit of 3000 MB" in over["error"]


def test_the_capacity_fit_follows_gpu_memory_where_the_rss_stays_flat():
    rows = [{"status": "ok", "batch_size": b, "peak_rss_mb": 900.0, "peak_memory_mb": 900.0 + 250.0 * b} for b in (1, 2, 4)]
    fit = capacity.fit_peak_ram(rows)
    assert fit["fit_slope_mb_per_sample"] == pytest.approx(250.0)
    assert capacity.predict_max_batch(fit, 4000.0) == 12


def test_cuda_jobs_compute_float32_in_ieee_float32_and_record_it(monkeypatch):
    """cuDNN allows TF32 by default (Ampere and later, Orin included): a cuda job turns it off
    for cuDNN and matmuls and its row says so; a cpu row leaves the flags null."""
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert child.ieee_fp32(torch, "cpu") == {"cuda_matmul_allow_tf32": None, "cudnn_allow_tf32": None}
    assert torch.backends.cudnn.allow_tf32 is True
    assert child.ieee_fp32(torch, "cuda") == {"cuda_matmul_allow_tf32": False, "cudnn_allow_tf32": False}
    assert torch.backends.cuda.matmul.allow_tf32 is False and torch.backends.cudnn.allow_tf32 is False
    result = runner.run_child("cell", fake_spec(device="cuda"), 120, None).result  # skipped here: no GPU
    assert result["cuda_matmul_allow_tf32"] is False and result["cudnn_allow_tf32"] is False


def board_python(folder):
    """A stand-in for a board's own interpreter: logs each command line, then runs this one."""
    python, log = folder / "board-python", folder / "board-python.log"
    python.write_text(f'#!/bin/sh\necho "$@" >> "{log}"\nexec "{sys.executable}" "$@"\n')
    python.chmod(0o755)
    return python, log


def test_the_child_runs_with_the_configured_interpreter(tmp_path):
    python, log = board_python(tmp_path)
    row = runner.run_cell(fake_spec(python=str(python)), tmp_path / "b3.parquet")
    assert row["status"] == "ok"
    assert log.read_text().startswith("-m alfred_edge.bench.child cell ")


def test_cells_of_two_backends_are_two_rows_of_the_results(tmp_path):
    """The same (model, variant, device, features, batch) on eager and on onnxruntime: two
    files, and two rows of reports/results.parquet, each with its backend and provider."""
    from alfred_edge.bench import schema
    from alfred_edge.report import aggregate, discover

    bench = tmp_path / "bench"
    for backend, provider in (("eager", "torch"), ("onnxruntime", "cpu")):
        spec = fake_spec(backend=backend, provider=provider)
        path = bench / schema.path_pattern("cells").removeprefix("reports/bench/").format(
            host="testhost", model="fake", variant="fp32", device="cpu", features="mmap", backend=backend,
            provider=provider, batch=3)
        runner.run_cell(spec, path, skip_reason="not measured here")
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas()
    assert sorted(zip(rows["backend"], rows["provider"])) == [("eager", "torch"), ("onnxruntime", "cpu")]
