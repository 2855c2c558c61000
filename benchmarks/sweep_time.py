"""Goal: ~6 s per benchmark job on average on an idle machine, so that the default main job
stays within 10 minutes on 2 cores. Times the default benchmark sweep: every cpu cell of the
embedded config (2 models x the variants x the batches, plus the features=ram cells), the
roofline and the capacity jobs, each in its own process as the bench rules run them (through
alfred_edge.bench.runner with config/config.yaml's bench settings). Prints per-job time and
the total.

    python benchmarks/sweep_time.py [--models DIR] [--store DIR] [--batches 1 ...]

Models: models/<model>/<variant>.pt, else untrained ones built from the config into a
temporary folder (every variant this host can make). Store: data/store/valid_seen (run
`snakemake --cores 2 data/store/valid_seen` first). Quick form: --batches 1."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

from alfred_edge.bench import capacity, runner
from host_load import host_load
from untrained_models import build_models

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path)
    parser.add_argument("--store", type=Path, default=REPO / "data" / "store" / "valid_seen")
    parser.add_argument("--batches", type=int, nargs="*", help="only these batch sizes (a shorter run)")
    args = parser.parse_args()
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    bench = config["bench"]
    times: list[tuple[str, float, str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        tmp = Path(tmp)
        models = args.models or REPO / "models"
        if not (models / "lstm" / "fp32.pt").exists():
            vocab = json.loads((args.store.parent / "vocab.json").read_text())
            models = build_models(config["models"], config["quantize"]["variants"], vocab, tmp / "models")
        print(f"{host_load()} (before the run)")
        job = {"host": "sweep", "device": "cpu", "threads": bench["threads"], "timeout_s": bench["timeout_s"]}

        def timed(name, fn):
            start = time.perf_counter()
            row = fn()
            cpu = row.get("cpu_time_s") or 0.0
            times.append((name, time.perf_counter() - start, row["status"], cpu))
            print(f"  {name:<44} {times[-1][1]:6.1f} s wall, {cpu:6.1f} s CPU (child)  {row['status']}", flush=True)
            return row

        roof = timed("roofline/cpu", lambda: runner.run_roofline({**job, "roofline": bench["roofline"]},
                                                                 tmp / "roofline.parquet"))
        cells = [(m, v, "mmap", b) for m in sorted(config["models"]) for v in config["quantize"]["variants"]
                 for b in sorted(args.batches or bench["batches"])]
        cells += [(m, "fp32", "ram", min(bench["batches"])) for m in sorted(config["models"])]
        for model, variant, features, batch in cells:
            spec = {**job, "model": model, "variant": variant, "features": features, "batch_size": batch,
                    "max_steps": bench["max_steps"], "power": bench["power"], "ram_limit_mb": None,
                    "loop": {k: bench[k] for k in ("min_iterations", "min_duration_s", "max_duration_s", "warmup_iterations")},
                    "model_path": str(models / model / f"{variant}.pt"), "fp32_path": str(models / model / "fp32.pt"),
                    "store_dir": str(args.store), "roofline_host": roof if roof["status"] == "ok" else None}
            out = tmp / "cells" / model / variant / features / f"b{batch}.parquet"
            timed(f"{model}/{variant}/{features}/b{batch}", lambda: runner.run_cell(spec, out))
        cap = bench["capacity"]
        for model in sorted(config["models"]):
            for variant in config["quantize"]["variants"]:
                measured = cap["measure"] if variant in cap["variants"] else None
                spec = {**job, "model": model, "variant": variant, "features": "mmap",
                        "model_path": str(models / model / f"{variant}.pt"), "fp32_path": None, "store_dir": str(args.store),
                        "capacity": {**{k: cap[k] for k in ("max_batch", "factor", "steps", "max_seconds")},
                                     "budgets_gb": bench["ram_budgets_gb"], "measure": measured}}
                files = sorted(str(p) for p in (tmp / "cells" / model / variant / "mmap").glob("b*.parquet"))
                timed(f"capacity {model}/{variant}", lambda: capacity.run_capacity(spec, files, tmp / f"cap-{model}-{variant}.parquet")[0])
    cells_only = [(t, c) for name, t, _, c in times if not name.startswith(("roofline", "capacity"))]
    total, total_cpu = sum(t for _, t, _, _ in times), sum(c for *_, c in times)
    print(f"{len(times)} jobs: {total:.0f} s wall, {total_cpu:.0f} s child CPU in all; cells: {len(cells_only)}, mean "
          f"{sum(t for t, _ in cells_only) / len(cells_only):.1f} s wall, {sum(c for _, c in cells_only) / len(cells_only):.1f} s CPU "
          f"(goal: ~6 s each; on a machine shared with other work the CPU time, not the wall time, is the idle-machine "
          f"estimate); the Snakemake job start adds about a second per job")
    print(f"{host_load()} (after the run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
