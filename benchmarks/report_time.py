"""Goal: the report of a fleet, 6 hosts × 2 devices, aggregated and rendered in ≤ 30 s on the
2-core development machine.

Writes hosts × 2 devices × 2 models × 4 variants × batches benchmark files (one row each, as
the bench rule writes them; by default 6 hosts and batches 1–8: 768 files) into a temporary
folder, then times:
  - aggregation, first run (every file parsed) and rerun after one new file arrives (rows of
    unchanged files from the cache, as the aggregate rule runs it), and writing its tables;
  - rendering of summary.html and the plot files from the results table.
The rendering time follows the number of panels (hosts × devices × models a figure), more
than the rows. The load average is printed before and after: on a shared machine a run
beside others' jobs takes longer.
Usage: python benchmarks/report_time.py [--hosts 6] [--batches 8] [--workers 2] [--keep DIR]
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("POLARS_MAX_THREADS", "2")  # the aggregate rule's threads; read when polars is imported

from alfred_edge.atomic import write_parquet  # noqa: E402
from alfred_edge.report import aggregate, discover, html, inputs  # noqa: E402
from alfred_edge.report import synthetic as fx  # noqa: E402
from host_load import host_load  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=6)
    parser.add_argument("--batches", type=int, default=8, help="batch sizes 1 to this")
    parser.add_argument("--keep", type=Path, help="write here and keep (default: a temporary folder)")
    parser.add_argument("--workers", type=int, default=2, help="processes making the figures and tables (the summary rule's threads)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-report-"))
    bench, reports = root / "reports" / "bench", root / "reports"
    print(f"{host_load()} (before the run)")
    try:
        started = time.perf_counter()
        cells = 0
        for index in range(args.hosts):
            host = dataclasses.replace(
                fx.JETSON if index % 2 else fx.LAPTOP, folder=f"board{index:02d}", name=f"board{index:02d}",
                devices=("cpu", "cuda"), batches=tuple(range(1, args.batches + 1)), speed=1.0 + index / 10,
            )
            cells += fx.write_host(bench, host, seed=index)
        evals, trains, steps = fx.write_model_tables(root / "models")
        print(f"wrote {cells} benchmark files in {time.perf_counter() - started:.1f} s")

        files = discover.bench_files(bench)
        cache = reports / ".cache" / "bench_cells.parquet"
        first = timed(lambda: aggregate.aggregate(files, bench, evals, cache))  # cache: none yet
        now = dt.datetime.now(dt.timezone.utc)
        extra = fx.cell_row(fx.LAPTOP, "cpu", "lstm", "fp32", 1, np.random.default_rng(0), now)
        fx.write("cells", extra | {"host": "board00"}, bench / "board00" / "cells" / "rerun" / "b1.parquet")
        files = discover.bench_files(bench)
        results, rerun_s = timed(lambda: aggregate.aggregate(files, bench, evals, cache))
        capacity, capacity_s = timed(
            lambda: aggregate.aggregate_capacity(discover.bench_files(bench, "capacity"), bench)
        )
        _, write_s = timed(lambda: (write_parquet(results, reports / "results.parquet"),
                                    write_parquet(capacity, reports / "capacity.parquet")))

        def render():
            report = html.ReportInputs(
                cells=aggregate.read_results(reports / "results.parquet"),
                capacity=aggregate.read_results(reports / "capacity.parquet"),
                quantization=inputs.read_eval_tables(evals), training=inputs.read_training(trains),
                training_steps=inputs.read_training(steps), storage_plan_text=fx.STORAGE_PLAN, storage_budget_gb=16.0,
                ram_budgets_gb={"jetson-4gb": 4.0, "jetson-8gb": 8.0, "host": "auto"},
            )
            html.write_summary(report, reports / "summary.html", reports / "plots", workers=args.workers)

        _, render_s = timed(render)
        first_cpu, rerun_cpu, capacity_cpu, write_cpu, render_cpu = CPU_SECONDS
        print(f"results rows: {results.num_rows} (from {len(files)} files), capacity rows: {capacity.num_rows}")
        print(f"{host_load()} (after the run)")
        print("                                                  wall      CPU")
        print(f"aggregation, first run (every file parsed):      {first[1]:6.1f} s {first_cpu:6.1f} s")
        print(f"aggregation, rerun after one new file (cached):  {rerun_s:6.1f} s {rerun_cpu:6.1f} s")
        print(f"capacity table:                                  {capacity_s:6.1f} s {capacity_cpu:6.1f} s")
        print(f"writing results.parquet and capacity.parquet:    {write_s:6.1f} s {write_cpu:6.1f} s")
        print(f"rendering summary.html + plots:                  {render_s:6.1f} s {render_cpu:6.1f} s "
              f"(page {(reports / 'summary.html').stat().st_size / 1e6:.1f} MB)")
        for label, aggregation_s, aggregation_cpu in (("first run", first[1], first_cpu), ("rerun", rerun_s, rerun_cpu)):
            total = aggregation_s + capacity_s + write_s + render_s
            total_cpu = aggregation_cpu + capacity_cpu + write_cpu + render_cpu
            print(f"{f'aggregation + rendering ({label}):':49s}{total:6.1f} s {total_cpu:6.1f} s  "
                  f"(goal ≤ {GOAL_S} s wall: {'met' if total <= GOAL_S else 'NOT met'})")
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


GOAL_S = 30


def timed(call):
    """(value, wall seconds); the CPU seconds of this process and of the figure-drawing
    workers it reaped go to CPU_SECONDS, so a run on a shared, loaded machine can be judged too."""
    started, cpu = time.perf_counter(), cpu_seconds()
    value = call()
    CPU_SECONDS.append(cpu_seconds() - cpu)
    return value, time.perf_counter() - started


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


CPU_SECONDS: list[float] = []


if __name__ == "__main__":
    main()
