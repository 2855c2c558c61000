"""The timing loop, its statistics, the leak fit and the capacity fit (in-process, no torch
child): what the rows say must follow from what was measured."""
import os
import time
import types

import numpy as np
import pytest

from alfred_edge.bench import capacity, harness, memory


def test_loop_needs_both_minimum_count_and_minimum_duration():
    calls = []
    settings = harness.LoopSettings(min_iterations=3, min_duration_s=0.05, max_duration_s=5, warmup_iterations=0)
    result = harness.timed_loop(lambda: calls.append(time.sleep(0.001)), lambda: None, settings)
    assert len(result.latencies_s) == len(calls) >= 3
    assert result.loop_wall_s >= 0.05      # duration reached, far more than 3 iterations
    few = harness.timed_loop(lambda: time.sleep(0.03), lambda: None,
                             harness.LoopSettings(min_iterations=4, min_duration_s=0.0, max_duration_s=5, warmup_iterations=0))
    assert len(few.latencies_s) == 4       # count reached; duration 0


def test_loop_stops_at_max_duration():
    settings = harness.LoopSettings(min_iterations=10_000, min_duration_s=0, max_duration_s=0.05, warmup_iterations=0)
    result = harness.timed_loop(lambda: time.sleep(0.01), lambda: None, settings)
    assert 2 <= len(result.latencies_s) < 20


def test_sync_runs_before_each_clock_read():
    events = []
    settings = harness.LoopSettings(min_iterations=2, min_duration_s=0, max_duration_s=5, warmup_iterations=0)
    harness.timed_loop(lambda: events.append("run"), lambda: events.append("sync"), settings)
    assert events == ["sync", "run", "sync", "run", "sync"]


def test_spread_compares_each_latency_with_its_own_pool_batch():
    """A pool of a short and a long episode batch, each steady: no noise, so no spread; a
    single-batch workload keeps IQR / p50."""
    steady = np.tile([10.0, 30.0], 20) * 1e-3
    stats = harness.latency_stats(steady, loop_wall_s=steady.sum(), batch_size=1, steps_per_episode=1, pass_length=2)
    assert stats["spread_iqr_ratio"] == 0.0 and not stats["flag_wide_spread"]
    mixed = harness.latency_stats(steady, loop_wall_s=steady.sum(), batch_size=1, steps_per_episode=1)
    assert mixed["spread_iqr_ratio"] == mixed["latency_iqr_ms"] / mixed["latency_p50_ms"] and mixed["flag_wide_spread"]
    noisy = steady * np.tile([1.0, 1.0, 1.3, 1.3], 10)
    assert harness.latency_stats(noisy, noisy.sum(), 1, 1, pass_length=2)["flag_wide_spread"]


def test_the_loop_ends_on_a_whole_pass_over_the_pool_and_the_cap_after_the_first_pass():
    settings = harness.LoopSettings(min_iterations=5, min_duration_s=0, max_duration_s=10, warmup_iterations=0)
    assert len(harness.timed_loop(lambda: None, lambda: None, settings, pass_length=4).latencies_s) == 8
    assert len(harness.timed_loop(lambda: None, lambda: None, settings, pass_length=1).latencies_s) == 5
    capped = harness.LoopSettings(min_iterations=100, min_duration_s=0, max_duration_s=0.05, warmup_iterations=0)
    # a pass longer than the cap is finished: the work a cell records is its first pass's
    assert len(harness.timed_loop(lambda: time.sleep(0.01), lambda: None, capped, pass_length=8).latencies_s) == 8
    # past the first pass the cap ends the loop, whatever the count
    assert 3 <= len(harness.timed_loop(lambda: time.sleep(0.01), lambda: None, capped, pass_length=3).latencies_s) < 20


def test_latencies_sum_to_the_loop_wall_time_even_for_an_identity_model():
    """Back-to-back timing: the loop's bookkeeping is inside the latencies (an identity call
    takes ~2 µs, the bookkeeping longer: timed apart, the latencies summed to 43 % of the loop)."""
    settings = harness.LoopSettings(min_iterations=20_000, min_duration_s=0, max_duration_s=30, warmup_iterations=0)
    trace = []
    result = harness.timed_loop(lambda: None, lambda: None, settings, lambda: trace.append(1))
    assert len(result.latencies_s) == len(trace) == 20_000
    assert result.latencies_s.sum() / result.loop_wall_s == pytest.approx(1, abs=0.02)
    assert result.latencies_s.mean() < 50e-6


def test_the_interval_check_is_timed_apart_from_the_iterations(monkeypatch):
    """The p50 interval is checked at the end of each pass (a bootstrap); its time goes to
    no iteration's latency."""
    def slow_check(samples, pass_length=1):
        time.sleep(0.02)
        return float("inf")

    monkeypatch.setattr(harness, "half_width_ratio", slow_check)
    settings = harness.LoopSettings(min_iterations=1, min_duration_s=0, max_duration_s=0.3, warmup_iterations=0,
                                    ci_half_width=0.05)
    result = harness.timed_loop(lambda: None, lambda: None, settings, pass_length=2)
    assert len(result.latencies_s) >= 6
    assert result.latencies_s.max() < 0.01
    assert result.latencies_s.sum() < 0.5 * result.loop_wall_s


def test_p50_interval_leaves_out_how_the_pools_batches_differ():
    """A pool of four episode batches 1x to 4x as long, each timed with a little noise: the
    interval is that noise's, not the batches' spread, and it narrows with more passes."""
    rng = np.random.default_rng(5)

    def passes(n):
        return np.tile([10.0, 20.0, 30.0, 40.0], n) * rng.normal(1, 0.02, 4 * n)

    few, many = passes(4), passes(40)
    for latencies in (few, many):
        low, high = harness.median_interval(latencies, pass_length=4)
        assert low <= np.median(latencies) <= high
    assert harness.half_width_ratio(few, 4) < 0.05
    assert harness.half_width_ratio(many, 4) < harness.half_width_ratio(few, 4)
    assert harness.half_width_ratio(many, 1) > 0.1  # the same latencies as one sample: the batches' spread
    assert harness.median_interval(passes(3), pass_length=4) is None  # 3 latencies of each batch: too few


def test_p50_interval_covers_the_median_about_as_often_as_it_says():
    """95 % intervals of a pool of 8 lognormal batches, 4 latencies of each (the fewest
    allowed): over 300 cells the median of the batches' mixture is inside in at least 85 %
    (a percentile bootstrap of a median covers less than nominal at so few samples; without
    the variance correction, 80 %)."""
    rng = np.random.default_rng(11)
    scale = 1 + 0.3 * np.arange(8)
    truth = np.median((rng.lognormal(0, 0.12, (50_000, 8)) * scale).ravel())
    covered = [low <= truth <= high for low, high in
               (harness.median_interval((rng.lognormal(0, 0.12, (4, 8)) * scale).ravel(), 8) for _ in range(300))]
    assert np.mean(covered) >= 0.85


def test_a_host_is_busy_when_other_processes_take_the_cores_the_cell_needs():
    """Another process spinning on a core during the loop: its CPU time is counted as other
    work, and with the cell's threads on every core the host is flagged busy."""
    import subprocess
    import sys

    spinner = subprocess.Popen([sys.executable, "-c", "import sys; print(flush=True)\nwhile True: pass"],
                               stdout=subprocess.PIPE)
    try:
        spinner.stdout.readline()  # it has started
        tracker = harness.HostLoadTracker(threads=os.cpu_count())
        tracker.start()
        time.sleep(0.5)
        tracker.stop(None)
    finally:
        spinner.kill()
        spinner.wait()
    columns = tracker.columns()
    assert columns["host_other_cpu_cores"] > 0.5
    assert columns["flag_busy_host"]
    assert set(columns) == {"load_avg_before", "load_avg_after", "host_other_cpu_cores", "flag_busy_host"}


def test_latency_stats_units_percentiles_and_flags():
    lat_s = np.arange(1, 101) * 1e-3              # 1..100 ms
    stats = harness.latency_stats(lat_s, loop_wall_s=5.2, batch_size=4, steps_per_episode=10)
    assert stats["latency_p50_ms"] == pytest.approx(50.5)
    assert stats["latency_p90_ms"] == pytest.approx(np.percentile(np.arange(1, 101), 90))
    assert stats["latency_iqr_ms"] == pytest.approx(75.25 - 25.75)
    assert stats["step_latency_p50_ms"] == pytest.approx(5.05)
    assert stats["sample_latency_p50_ms"] == pytest.approx(50.5 / 4)
    assert stats["throughput_samples_per_s"] == pytest.approx(4 * 100 / 5.2)
    assert stats["harness_gap_fraction"] == pytest.approx(1 - 5.05 / 5.2)
    assert stats["flag_low_n_p90"] is False and stats["flag_low_n_p99"] is True
    assert stats["flag_wide_spread"] is True
    steady = harness.latency_stats([0.010, 0.0101, 0.0099, 0.0100], 0.05, 1, 1)
    assert steady["flag_wide_spread"] is False and steady["flag_low_n_p90"] is True


def test_loop_settings_reject_nonsense():
    with pytest.raises(ValueError):
        harness.LoopSettings(min_iterations=0, min_duration_s=0, max_duration_s=1, warmup_iterations=0)
    with pytest.raises(ValueError):
        harness.LoopSettings(min_iterations=1, min_duration_s=5, max_duration_s=1, warmup_iterations=0)


def test_leak_fit_flags_steady_growth_and_ignores_noise_and_warmup():
    rng = np.random.default_rng(0)
    flat = 500 + rng.normal(0, 0.5, 50)
    flat[:5] += np.linspace(40, 0, 5)                  # allocator warm-up, dropped
    leaking = 500 + 2.0 * np.arange(50) + rng.normal(0, 0.5, 50)
    assert memory.leak_fit(flat)["flag"] is False
    fit = memory.leak_fit(leaking)
    assert fit["flag"] is True and fit["slope_mb_per_iter"] == pytest.approx(2.0, abs=0.1) and fit["rho"] > 0.95
    assert memory.leak_fit([1.0, 2.0, 3.0])["flag"] is None   # too few points to judge
    outlier = np.full(30, 400.0)
    outlier[15] = 900.0                                     # one spike: Theil-Sen ignores it
    assert memory.theil_sen_slope(outlier) == 0.0


def test_inference_peak_sees_an_allocation_inside_the_window():
    with memory.InferencePeak() as peak:
        block = np.ones(80_000_000 // 8)                    # 80 MB, touched
        del block
    assert peak.peak_mb >= memory.rss_mb() + 70
    assert peak.method in ("clear_refs", "sampled")


def test_rss_follows_allocations_and_a_forked_child_reads_its_own():
    before = memory.rss_mb()  # opens this process's statm
    block = np.ones(100_000_000 // 8)
    assert memory.rss_mb() >= before + 90
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child frees the block: its RSS drops, the parent's does not
        del block
        os.write(write, str(memory.rss_mb()).encode())
        os._exit(0)
    os.waitpid(pid, 0)
    child_mb = float(os.read(read, 64))
    assert child_mb <= memory.rss_mb() - 50
    del block


def test_capacity_fit_and_prediction():
    rows = [{"status": "ok", "batch_size": b, "peak_memory_mb": 400 + 10 * b} for b in (1, 2, 4, 8)]
    rows.append({"status": "oom", "batch_size": 16, "peak_memory_mb": 9999})  # failures are not fitted
    fit = capacity.fit_peak_ram(rows)
    assert fit["fit_slope_mb_per_sample"] == pytest.approx(10) and fit["fit_intercept_mb"] == pytest.approx(400)
    assert capacity.predict_max_batch(fit, 4005) == 360
    assert capacity.predict_max_batch(fit, 300) == 0
    assert capacity.predict_max_batch(capacity.fit_peak_ram(rows[:1]), 4000) is None
    assert capacity.search_batches(20, 2.0) == [1, 2, 4, 8, 16]
    assert capacity.budgets_mb({"a": 4.0, "host": "auto"})["a"] == 4000.0


def test_cpu_time_separates_work_from_waiting():
    settings = harness.LoopSettings(min_iterations=3, min_duration_s=0, max_duration_s=5, warmup_iterations=0)

    def busy():
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass

    sleeping = harness.timed_loop(lambda: time.sleep(0.02), lambda: None, settings)
    working = harness.timed_loop(busy, lambda: None, settings)
    assert len(sleeping.cpu_s) == len(sleeping.latencies_s) == 3
    slept = harness.latency_stats(sleeping.latencies_s, sleeping.loop_wall_s, 1, 1, sleeping.cpu_s)
    worked = harness.latency_stats(working.latencies_s, working.loop_wall_s, 1, 1, working.cpu_s)
    assert slept["cpu_utilization"] < 0.2 < worked["cpu_utilization"]
    assert worked["cpu_time_p50_ms"] <= worked["latency_p50_ms"] * 1.05


def nvmap_maps(*clients):
    """/sys/kernel/debug/nvmap/iovmm/maps as a Jetson's kernel prints it: a header, each
    client ("CLIENT PROCESS PID SIZEK") with its allocations indented below it, a total."""
    lines = [f"{'CLIENT':<18} {'PROCESS':>18} {'PID':>8} {'SIZE':>11}",
             f"{'':<18} {'':>18} {'BASE':>8} {'SIZE':>11} {'FLAGS':>8} {'SHARE':>6} {'UID':>9}"]
    for pid, process, kib in clients:
        lines += [f"{'user':<18} {process:>18} {pid:>8} {kib:>10}K",
                  f"{'':<18} {'':<18} {0:>8x} {kib:>10}K {0:>8x} {'private':>6} {1000:>9}", ""]
    lines.append(f"{'total':<18} {'':<18} {'':>8} {sum(k for *_, k in clients):>10}K")
    return "\n".join(lines) + "\n"


def test_nvmap_memory_of_a_process_is_the_sum_of_its_clients(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text(nvmap_maps((4242, "python3", 200_000), (1000, "gnome-shell", 8_000), (4242, "python3", 4_000)))
    assert memory.nvmap_mb(4242, str(maps)) == pytest.approx(204_000 * 1024 / 1e6)
    assert memory.nvmap_mb(1000, str(maps)) == pytest.approx(8_000 * 1024 / 1e6)
    assert memory.nvmap_mb(77, str(maps)) == 0.0
    assert memory.nvmap_mb(4242, str(tmp_path / "absent")) is None  # not a Jetson, or not root


class ReservingTorch:
    """torch.cuda's allocator statistics, as a desktop GPU gives them."""

    def __init__(self, reserved_mb):
        self.cuda = types.SimpleNamespace(max_memory_reserved=lambda: reserved_mb * 1e6, reset_peak_memory_stats=lambda: None)


def test_device_memory_counts_nvmap_on_a_jetson_and_cuda_reserved_elsewhere(tmp_path, monkeypatch):
    maps = tmp_path / "maps"
    maps.write_text(nvmap_maps((os.getpid(), "python3", 1_500_000)))
    on_jetson = memory.DeviceMemory(ReservingTorch(900.0), "cuda", maps_path=str(maps))
    assert on_jetson.method == "rss+nvmap" and on_jetson.peak_mb() == pytest.approx(1536.0)
    monkeypatch.setattr(memory, "NVMAP_MAPS", str(tmp_path / "absent"))  # a desktop GPU (or a Jetson, not root)
    desktop = memory.DeviceMemory(ReservingTorch(900.0), "cuda")
    assert desktop.method == "rss+cuda_reserved" and desktop.peak_mb() == pytest.approx(900.0)
    on_cpu = memory.DeviceMemory(ReservingTorch(900.0), "cpu", maps_path=str(maps))
    assert on_cpu.method == "rss" and on_cpu.peak_mb() is None
