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
RESAMPLES = 500     # bootstrap resamples of the p50 interval (each check runs them: milliseconds)
MIN_SAMPLES = 6     # latencies before a p50 interval is given ...
MIN_PER_BATCH = 4   # ... and of each of the pool's batches (fewer: a within-batch resample is too coarse)
BUSY_TOLERANCE_CORES = 0.25  # other processes' CPU (cores) below which a host is not called busy


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
    Iterations are timed back to back: the clock reading that ends one iteration (after the
    device is synchronised) starts the next, so the loop's own bookkeeping and
    `after_iteration` (e.g. an RSS reading, a few µs) count in the latencies rather than
    vanishing between them. The one exception is the interval check at the end of a pass
    (a bootstrap: milliseconds), whose time no iteration gets; the latencies then sum to the
    loop's wall time less those checks (harness_gap_fraction)."""
    min_ns, max_ns = settings.min_duration_s * 1e9, settings.max_duration_s * 1e9
    wall_clock, cpu_clock = time.perf_counter_ns, time.process_time_ns
    loop_start = wall_clock()
    sync()
    latencies, cpu_times = [], []
    first = start = wall_clock()
    cpu_start = cpu_clock()
    while True:
        run()
        sync()
        after_iteration()
        end, cpu_end = wall_clock(), cpu_clock()
        latencies.append(end - start)
        cpu_times.append(cpu_end - cpu_start)
        start, cpu_start = end, cpu_end
        elapsed, count = end - first, len(latencies)
        if elapsed >= max_ns and count >= pass_length:
            break
        if count >= settings.min_iterations and elapsed >= min_ns and count % pass_length == 0:
            if settings.ci_half_width is None or half_width_ratio(latencies, pass_length) <= settings.ci_half_width:
                break
            start, cpu_start = wall_clock(), cpu_clock()
    loop_wall_ns = wall_clock() - loop_start
    return LoopResult(np.array(latencies) * 1e-9, loop_wall_ns * 1e-9, np.array(cpu_times) * 1e-9)


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


def median_interval(samples, pass_length: int = 1, confidence: float = 0.95) -> tuple[float, float] | None:
    """A confidence interval of the median latency of a cell whose iteration i decodes the
    pool's batch i % pass_length: a stratified percentile bootstrap (Efron & Tibshirani, An
    Introduction to the Bootstrap, 6.2 and 13.3) that resamples each batch's latencies among
    themselves. The pool is fixed by design (the same episodes for every variant), so how its
    batches differ is not noise; an interval over the latencies as one sample would count it
    as such, and would narrow only over many passes. None until every batch has
    MIN_PER_BATCH latencies and there are MIN_SAMPLES in all (seeded: the same latencies give
    the same interval)."""
    values = np.asarray(samples, dtype=float)
    batch = np.arange(len(values)) % pass_length
    counts = np.bincount(batch, minlength=pass_length)
    if len(values) < MIN_SAMPLES or counts.min() < MIN_PER_BATCH:
        return None
    rng = np.random.default_rng(0)
    resampled = np.concatenate([rng.choice(_expanded(values[batch == k]), size=(RESAMPLES, counts[k]))
                                for k in range(pass_length)], axis=1)  # [RESAMPLES, n]
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(np.median(resampled, axis=1), [tail, 100 - tail])
    return float(low), float(high)


def _expanded(values: np.ndarray) -> np.ndarray:
    """The values spread about their median by sqrt(n / (n - 1)): a resample's variance is
    then unbiased (plain resampling shrinks it by (n - 1) / n, which few latencies per batch
    turn into an interval that covers too rarely)."""
    median = np.median(values)
    return median + (values - median) * math.sqrt(len(values) / (len(values) - 1))


def half_width_ratio(samples, pass_length: int = 1) -> float:
    """The p50 interval's half-width over the p50 (inf while the interval is undefined)."""
    interval = median_interval(samples, pass_length)
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
        ratio = half_width_ratio(loop.latencies_s, workload.batches_per_pass)
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
    interval = median_interval(lat_ms, pass_length) or (None, None)
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
    """The host's 1-minute load average before and after the loop, the cores' worth of CPU
    time that other processes took during it, and whether the host was busy: other work
    took more than the cores the cell's threads leave free, plus BUSY_TOLERANCE_CORES for
    the system's own background (it then competed with the measurement; two threads on two
    busy cores measure contention). The load average alone cannot say this: it trails by a
    minute, so it still holds the previous job's work, and during the loop it counts the
    cell's own threads."""

    def __init__(self, threads: int):
        self.threads = threads

    def start(self) -> None:
        self.before = os.getloadavg()[0]
        self._start = _busy_cpu_s(), time.process_time(), time.perf_counter()

    def stop(self, loop: LoopResult | None) -> None:
        self.after = os.getloadavg()[0]
        busy_start, own_start, wall_start = self._start
        busy, own = _busy_cpu_s() - busy_start, time.process_time() - own_start
        wall = time.perf_counter() - wall_start
        self.other_cores = max(busy - own, 0.0) / wall if wall > 0 else None

    def columns(self) -> dict:
        free = max((os.cpu_count() or 1) - self.threads, 0)
        return {"load_avg_before": self.before, "load_avg_after": self.after,
                "host_other_cpu_cores": self.other_cores,
                "flag_busy_host": self.other_cores is not None and self.other_cores > free + BUSY_TOLERANCE_CORES}


def _busy_cpu_s() -> float:
    """CPU seconds the host's cores have spent busy since boot, steal (the hypervisor running
    other guests) included: all but idle and I/O wait."""
    import psutil

    times = psutil.cpu_times()
    # Linux counts a guest's time in user (and guest_nice in nice) as well as on its own
    counted_twice = getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    return sum(times) - times.idle - getattr(times, "iowait", 0.0) - counted_twice
