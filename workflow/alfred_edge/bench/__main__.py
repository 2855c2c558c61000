"""Standalone runner: one benchmark job without Snakemake, writing the same Parquet files as
the pipeline (so that results copied from a Jetson into reports/bench/<host>/ are picked up
by the aggregation). Needs only torch, numpy, psutil and pyarrow (plus transformers for the
transformer model, jetson-stats for power on a Jetson).

    python -m alfred_edge.bench cell --model lstm --variant int8_dynamic --batch 1 --device cpu
    python -m alfred_edge.bench roofline --device cuda
    python -m alfred_edge.bench capacity --model lstm --variant fp32 --device cpu --measure jetson-4gb

Defaults equal config/config.yaml's bench section; paths default to the pipeline's layout
(models/<model>/<variant>.pt, data/store/valid_seen, reports/bench/<host>/...)."""
from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from alfred_edge.bench import environment, schema

DEFAULTS = {
    "threads": 2,
    "max_steps": 8,
    "features": "mmap",
    "store_split": "valid_seen",
    "timeout_s": 600.0,
    "loop": {"min_iterations": 5, "min_duration_s": 0.5, "max_duration_s": 3.0, "warmup_iterations": 1},
    "power": {"interval_s": 0.1, "idle_s": 1.0},
    "roofline": {"matmul_size": 512, "copy_mb": 64.0, "seconds": 0.5},
    "capacity": {"budgets_gb": {"jetson-4gb": 4.0, "jetson-8gb": 8.0, "host": "auto"},
                 "max_batch": 512, "factor": 2.0, "steps": 2, "max_seconds": 15.0},
}


def output_path(table: str, out_root: str, **keys) -> Path:
    """reports/bench/{host}/... as the schema's path pattern gives it, under out_root."""
    pattern = schema.path_pattern(table).removeprefix("reports/bench/")
    return Path(out_root) / pattern.format(**keys)


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m alfred_edge.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    for job in ("cell", "roofline", "capacity"):
        p = sub.add_parser(job)
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        p.add_argument("--host", default="auto", help="host name in the results (default: this machine's)")
        p.add_argument("--threads", type=int, default=DEFAULTS["threads"], help="torch intra-op threads")
        p.add_argument("--timeout-s", type=float, default=DEFAULTS["timeout_s"])
        p.add_argument("--out-root", default="reports/bench", help="results go to OUT_ROOT/<host>/...")
        p.add_argument("--out", help="exact output file (overrides --out-root)")
        if job == "roofline":
            continue
        p.add_argument("--model", required=True, help="lstm | transformer | fake | identity")
        p.add_argument("--variant", default="fp32")
        p.add_argument("--model-path", help="default models/<model>/<variant>.pt")
        p.add_argument("--fp32-path", help="fp32 file for FLOP counting; default models/<model>/fp32.pt")
        p.add_argument("--store", help=f"store split folder; default data/store/{DEFAULTS['store_split']}")
        p.add_argument("--features", default=DEFAULTS["features"], choices=["mmap", "ram"])
        if job == "cell":
            p.add_argument("--batch", type=int, required=True)
            p.add_argument("--max-steps", type=int, default=DEFAULTS["max_steps"])
            loop = DEFAULTS["loop"]
            p.add_argument("--min-iterations", type=int, default=loop["min_iterations"])
            p.add_argument("--min-duration-s", type=float, default=loop["min_duration_s"])
            p.add_argument("--max-duration-s", type=float, default=loop["max_duration_s"])
            p.add_argument("--warmup-iterations", type=int, default=loop["warmup_iterations"])
            p.add_argument("--power-interval-s", type=float, default=DEFAULTS["power"]["interval_s"])
            p.add_argument("--idle-power-s", type=float, default=DEFAULTS["power"]["idle_s"])
            p.add_argument("--ram-limit-mb", type=float, help="end the cell as oom when its RSS passes this")
            p.add_argument("--roofline", help="roofline Parquet of this host/device (default: look under OUT_ROOT)")
            p.add_argument("--fault", help="fake model only: simulate a failure (see workloads.FakeEpisodeModel)")
        else:
            cap = DEFAULTS["capacity"]
            p.add_argument("--measure", help="budget name to measure (default: fit only)")
            p.add_argument("--budgets-gb", default=json.dumps(cap["budgets_gb"]), help="JSON {name: GB or \"auto\"}")
            p.add_argument("--max-batch", type=int, default=cap["max_batch"])
            p.add_argument("--factor", type=float, default=cap["factor"])
            p.add_argument("--steps", type=int, default=cap["steps"])
            p.add_argument("--max-seconds", type=float, default=cap["max_seconds"], help="time box of the search")
            p.add_argument("--cells", nargs="*", help="cell Parquet files to fit (default: this host's for the model/variant/device)")
    return parser.parse_args(argv)


def model_spec(args, host: str) -> dict:
    model_path = args.model_path or (None if args.model in ("fake", "identity") else f"models/{args.model}/{args.variant}.pt")
    fp32_path = args.fp32_path or (None if args.model in ("fake", "identity") else f"models/{args.model}/fp32.pt")
    return {"model": args.model, "variant": args.variant, "model_path": model_path, "fp32_path": fp32_path,
            "store_dir": args.store or f"data/store/{DEFAULTS['store_split']}", "features": args.features}


def main(argv=None) -> int:
    from alfred_edge.bench import runner

    args = parse_args(sys.argv[1:] if argv is None else argv)
    host = environment.host_name(args.host)
    base = {"host": host, "device": args.device, "threads": args.threads, "timeout_s": args.timeout_s}
    out_root = Path(args.out_root) / host
    if args.job == "roofline":
        out = args.out or output_path("roofline", out_root.parent, host=host, device=args.device)
        row = runner.run_roofline({**base, "roofline": DEFAULTS["roofline"]}, out)
    elif args.job == "cell":
        spec = {**base, **model_spec(args, host), "batch_size": args.batch, "max_steps": args.max_steps,
                "loop": {"min_iterations": args.min_iterations, "min_duration_s": args.min_duration_s,
                         "max_duration_s": args.max_duration_s, "warmup_iterations": args.warmup_iterations},
                "power": {"interval_s": args.power_interval_s, "idle_s": args.idle_power_s},
                "ram_limit_mb": args.ram_limit_mb, "fault": args.fault,
                "roofline_host": _roofline_row(args.roofline or output_path("roofline", out_root.parent, host=host, device=args.device))}
        out = args.out or output_path("cells", out_root.parent, host=host, model=args.model, variant=args.variant,
                                      device=args.device, features=args.features, batch=args.batch)
        row = runner.run_cell(spec, out, skip_reason=runner.smaller_batch_oom_reason(_smaller_batch_files(out, args.batch)))
    else:
        from alfred_edge.bench import capacity

        cap = {"budgets_gb": json.loads(args.budgets_gb), "measure": args.measure, "max_batch": args.max_batch,
               "factor": args.factor, "steps": args.steps, "max_seconds": args.max_seconds}
        spec = {**base, **model_spec(args, host), "capacity": cap}
        cells = args.cells if args.cells is not None else sorted(glob.glob(str(
            out_root / "cells" / args.model / args.variant / args.device / args.features / "b*.parquet")))
        out = args.out or output_path("capacity", out_root.parent, host=host, model=args.model,
                                      variant=args.variant, device=args.device)
        row = capacity.run_capacity(spec, cells, out)[0]
    print(f"{out}: status {row['status']}" + (f" ({row['error'].splitlines()[0]})" if row.get("error") else ""))
    return 0


def _smaller_batch_files(out: Path, batch: int) -> list[str]:
    """Cells of the same model/variant/device/features at smaller batches already written
    beside `out` (b<batch>.parquet): after an OOM there, this batch is skipped."""
    found = [(int(p.stem[1:]), str(p)) for p in Path(out).parent.glob("b*.parquet") if p.stem[1:].isdigit()]
    return [path for b, path in sorted(found) if b < batch]


def _roofline_row(path) -> dict | None:
    """The ok roofline row of this host/device, if its file exists."""
    if not Path(path).exists():
        return None
    import pyarrow.parquet as pq

    row = pq.read_table(path).to_pylist()[0]
    return row if row["status"] == "ok" else None


if __name__ == "__main__":
    sys.exit(main())
