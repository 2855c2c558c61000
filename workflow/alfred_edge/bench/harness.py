"""The scenario: load, a cold first batch, warm-up, then timed iterations until both a
minimum count and a minimum duration are reached (LoadGen / optimum-benchmark semantics),
with the trackers around them (latency here; memory, power and roofline in their modules),
each of which builds its own columns of the row.

A workload (see workloads.py) provides:
    load()          load the model (timed as load_time_ms)
    prepare()       build the batches (untimed)
    start_timing()  counters (encode times, masks) from here on cover the timed loop alone
    run_batch()     one iteration: a whole episode batch; raises BatchSizeError on wrong shapes
    sync()          wait for the device (CUDA synchronize; nothing on the CPU)
    batch_size, steps_per_episode, batches_per_pass (iterations that cover its episodes once),
    info() -> extra columns
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

WORKLOADS = ("expert", "policy")  # what an episode decoding feeds back; see workloads.EpisodeWorkload
LOW_N_P90 = 64     # MLPerf LoadGen's early-stopping floors
LOW_N_P99 = 662
WIDE_SPREAD = 0.10  # IQR / median (torch.utils.benchmark's "system fluctuation" warning)


class BatchSizeError(RuntimeError):
    """The model received or returned a batch of another size than the one asked for."""


@dataclass(frozen=True)
class LoopSettings:
    min_iterations: int
    min_duration_s: float
    max_duration_s: float
    warmup_iterations: int
    # Beyond the minimums, go on until the p50's 95 % interval is within this fraction of the
    # p50 (its half-width), checked on whole passes; max_duration_s caps it. None: no target.
    ci_half_width: float | None = None

    def __post_init__(self):
        if self.min_iterations < 1 or self.warmup_iterations < 0:
            raise ValueError(f"min_iterations must be >= 1 and warmup_iterations >= 0: {self}")
        if self.max_duration_s < self.min_duration_s:
            raise ValueError(f"max_duration_s must be >= min_duration_s: {self}")


@dataclass
class LoopResult:
    latencies_s: np.ndarray   # one per timed iteration
    loop_wall_s: float        # from before the first to after the last iteration
    cpu_s: np.ndarray         # process CPU time (all threads) of each iteration


def time_call(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    """Seconds one call takes, with the device synchronised before each clock read."""
    sync()
    start = time.perf_counter_ns()
    fn()
    sync()
    return (time.perf_counter_ns() - start) * 1e-9


def timed_loop(run: Callable[[], object], sync: Callable[[], None], settings: LoopSettings,
               after_iteration: Callable[[], None] = lambda: None, pass_length: int = 1) -> LoopResult:
    """Run `run` until settings.min_iterations and settings.min_duration_s are reached, the
    count is a whole number of passes (`pass_length` iterations: every batch of the
    workload's pool as often as the others) and the p50's interval is as narrow as
    settings.ci_half_width asks, or settings.max_duration_s has passed and the first pass is
    done (the work a cell records is that pass's: the pool's, equal for every variant).
    Iterations are timed back to back: the clock
    reading that ends one iteration (after the device is synchronised) starts the next, so
    the loop's own bookkeeping and `after_iteration` (e.g. an RSS reading, a few µs) count in
    the latencies rather than vanishing between them, and the latencies sum to the loop's
    wall time (an identity model's latency is then the harness's whole overhead)."""
    min_ns, max_ns = settings.min_duration_s * 1e9, settings.max_duration_s * 1e9
    wall_clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    loop_start = wall_clock()
    sync()
    stamps, cpu_stamps = [wall_clock()], [cpu_clock()]
    while True:
        run()
        sync()
        after_iteration()
        stamps.append(wall_clock())
        cpu_stamps.append(cpu_clock())
        elapsed = stamps[-1] - stamps[0]
        count = len(stamps) - 1
        if elapsed >= max_ns and count >= pass_length:
            break
        if count >= settings.min_iterations and elapsed >= min_ns and count % pass_length == 0 and (
                settings.ci_half_width is None or half_width_ratio(np.diff(stamps)) <= settings.ci_half_width):
            break
    loop_wall_ns = wall_clock() - loop_start
    return LoopResult(np.diff(stamps) * 1e-9, loop_wall_ns * 1e-9, np.diff(cpu_stamps) * 1e-9)


class Tracker:
    """One kind of measurement taken around the timed loop (optimum-benchmark's trackers):
    start() just before the loop, sample() after each iteration (only where a tracker
    overrides it: its time counts in the latencies), stop(loop) just after the loop, in
    the reverse order of start (the tracker started first stops last, after the others'
    windows have closed; loop is None when the loop raised), then columns(): its columns
    of the row (results.schema.yaml)."""

    def start(self) -> None:
        pass

    def sample(self) -> None:
        pass

    def stop(self, loop: LoopResult | None) -> None:
        pass

    def columns(self) -> dict:
        raise NotImplementedError


def tracked_loop(workload, settings: LoopSettings, trackers: list[Tracker]) -> None:
    """The workload's timed loop with `trackers` around it."""
    samplers = [t.sample for t in trackers if type(t).sample is not Tracker.sample]
    # one tracker samples today (memory): its method itself, without a call around it
    after_iteration = samplers[0] if len(samplers) == 1 else lambda: [sample() for sample in samplers]
    started, loop = [], None
    try:
        for tracker in trackers:
            tracker.start()
            started.append(tracker)
        loop = timed_loop(workload.run_batch, workload.sync, settings, after_iteration, workload.batches_per_pass)
    finally:
        for tracker in reversed(started):
            tracker.stop(loop)


def median_interval(samples, confidence: float = 0.95) -> tuple[float, float] | None:
    """A distribution-free confidence interval of the median: the order statistics x(j) and
    x(n+1-j) with j the largest rank that the binomial(n, 1/2) law of the count below the
    median leaves at most (1 - confidence) / 2 below (Conover, Practical Nonparametric
    Statistics, 3.2). None with too few samples for the confidence (fewer than 6 at 95 %)."""
    values = np.sort(np.asarray(samples, dtype=float))
    n, tail = len(values), (1 - confidence) / 2
    below, j = 0.0, 0
    while j < n:
        below += math.comb(n, j) / 2.0 ** n  # P(count <= j)
        if below > tail:
            break
        j += 1
    return None if j == 0 else (float(values[j - 1]), float(values[n - j]))


def half_width_ratio(samples) -> float:
    """The p50 interval's half-width over the p50 (inf while the interval is undefined)."""
    interval = median_interval(samples)
    median = float(np.median(samples))
    return (interval[1] - interval[0]) / 2 / median if interval and median > 0 else math.inf


class LatencyTracker(Tracker):
    """The loop's latencies, throughput and CPU time (latency_stats), the p50's interval, and
    what the workload counted over it (its info(), the encode latency)."""

    def __init__(self, workload, batch_size: int, ci_half_width: float | None = None):
        self.workload, self.batch_size, self.ci_half_width = workload, batch_size, ci_half_width

    def start(self) -> None:
        self.workload.start_timing()

    def stop(self, loop: LoopResult | None) -> None:
        self.loop = loop

    def columns(self) -> dict:
        workload, loop = self.workload, self.loop
        cols = latency_stats(loop.latencies_s, loop.loop_wall_s, self.batch_size, workload.steps_per_episode,
                             loop.cpu_s, workload.batches_per_pass)
        ratio = half_width_ratio(loop.latencies_s)
        cols["latency_p50_ci_half_width"] = ratio if math.isfinite(ratio) else None
        cols["flag_ci_wide"] = self.ci_half_width is not None and not ratio <= self.ci_half_width
        cols.update(workload.info())
        if workload.encode_times_s:
            cols["encode_latency_p50_ms"] = float(sorted(workload.encode_times_s)[len(workload.encode_times_s) // 2] * 1e3)
        return cols


def latency_stats(latencies_s, loop_wall_s: float, batch_size: int, steps_per_episode: int, cpu_s=None,
                  pass_length: int = 1) -> dict:
    """The timing columns of a cell row (names and units as in results.schema.yaml).
    cpu_s: process CPU time per iteration; with it, the CPU-time columns, which a machine
    shared with other work disturbs far less than the wall-clock latency. pass_length: the
    batches of the workload's pool, iteration i decoding batch i % pass_length; the spread
    compares each latency with its own batch's median, so that it measures noise, not how
    the pool's episodes differ."""
    lat_ms = np.asarray(latencies_s, dtype=float) * 1e3
    cpu = {}
    if cpu_s is not None:
        cpu_ms = np.asarray(cpu_s, dtype=float) * 1e3
        cpu = {"cpu_time_p50_ms": float(np.median(cpu_ms)), "cpu_time_mean_ms": float(cpu_ms.mean()),
               "cpu_utilization": float(cpu_ms.sum() / lat_ms.sum()) if lat_ms.sum() > 0 else None}
    n = len(lat_ms)
    p25, p50, p75, p90, p95, p99 = np.percentile(lat_ms, [25, 50, 75, 90, 95, 99])
    interval = median_interval(lat_ms) or (None, None)
    mean = float(lat_ms.mean())
    std = float(lat_ms.std(ddof=1)) if n > 1 else 0.0
    iqr = float(p75 - p25)
    spread = relative_spread(lat_ms, pass_length)
    steps = max(steps_per_episode, 1)
    return {
        "iterations": n,
        "loop_wall_s": loop_wall_s,
        "latency_mean_ms": mean,
        "latency_std_ms": std,
        "latency_min_ms": float(lat_ms.min()),
        "latency_p50_ms": float(p50),
        "latency_p50_ci_low_ms": interval[0],
        "latency_p50_ci_high_ms": interval[1],
        "latency_p90_ms": float(p90),
        "latency_p95_ms": float(p95),
        "latency_p99_ms": float(p99),
        "latency_max_ms": float(lat_ms.max()),
        "latency_iqr_ms": iqr,
        "latency_cv": std / mean if mean > 0 else None,
        "step_latency_mean_ms": mean / steps,
        "step_latency_p50_ms": float(p50) / steps,
        "sample_latency_p50_ms": float(p50) / batch_size,
        "throughput_samples_per_s": batch_size * n / loop_wall_s,
        "throughput_steps_per_s": batch_size * steps_per_episode * n / loop_wall_s,
        "harness_gap_fraction": 1.0 - float(lat_ms.sum()) / 1e3 / loop_wall_s,
        "flag_low_n_p90": n < LOW_N_P90,
        "flag_low_n_p99": n < LOW_N_P99,
        "spread_iqr_ratio": spread,
        "flag_wide_spread": bool(spread is not None and spread >= WIDE_SPREAD),
        "latencies_ms": lat_ms.tolist(),
        **cpu,
    }


def relative_spread(lat_ms: np.ndarray, pass_length: int) -> float | None:
    """IQR of each latency over the median of its pool batch (iteration i runs batch
    i % pass_length); with one batch, IQR / p50."""
    position = np.arange(len(lat_ms)) % pass_length
    medians = np.array([np.median(lat_ms[position == k]) for k in range(min(pass_length, len(lat_ms)))])
    if (medians <= 0).any():
        return None
    ratios = lat_ms / medians[position]
    return float(np.subtract(*np.percentile(ratios, [75, 25])))


class HostLoadTracker(Tracker):
    """The host's 1-minute load average before and after the loop, and whether the host was
    busy: more load before it than the cores the cell's threads leave free (other work then
    competes with the measurement; two threads on two busy cores measure contention)."""

    def __init__(self, threads: int):
        self.threads = threads

    def start(self) -> None:
        self.before = os.getloadavg()[0]

    def stop(self, loop: LoopResult | None) -> None:
        self.after = os.getloadavg()[0]

    def columns(self) -> dict:
        return {"load_avg_before": self.before, "load_avg_after": self.after,
                "flag_busy_host": self.before > (os.cpu_count() or 1) - self.threads}
