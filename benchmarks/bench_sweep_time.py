"""Wall time of the default benchmark sweep on this machine: every cpu cell of the embedded
config (2 models x the variants x the batches, plus the features=ram cells), the roofline
and the capacity jobs, each in its own process as the bench rules run them (through
alfred_edge.bench.runner with config/config.yaml's bench settings). Prints per-job time and
the total; the goal is ~6 s per cell on average so that the whole default main job stays
within 10 minutes on 2 cores.

    python benchmarks/bench_sweep_time.py [--models DIR] [--store DIR]

Models as in bench_harness.py: models/<model>/<variant>.pt, else untrained ones built from
the config into a temporary folder (every variant the quantize helper can make here)."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "workflow"))

from alfred_edge.bench import capacity, runner  # noqa: E402


def build_models(config: dict, vocab_path: Path, out: Path) -> Path:
    from alfred_edge import quantize
    from alfred_edge.models import build_model, model_record, save_model

    vocab = json.loads(vocab_path.read_text())
    for name in config["models"]:
        model = build_model(name, config["models"][name], vocab).eval()
        save_model(model, out / name / "fp32.pt")
        for variant in config["quantize"]["variants"]:
            if variant == "fp32":
                continue
            try:
                quantize.save_variant(quantize.make_variant(model, variant), variant, model_record(model),
                                      out / name / f"{variant}.pt")
            except quantize.VariantUnavailable as exc:
                quantize.save_unavailable(variant, exc.reason, model_record(model), out / name / f"{variant}.pt")
    return out


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
        models = args.models or (REPO / "models" if (REPO / "models" / "lstm" / "fp32.pt").exists()
                                 else build_models(config, args.store.parent / "vocab.json", tmp / "models"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
