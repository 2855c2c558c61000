"""Standalone runner: one benchmark job without Snakemake, writing the same Parquet files as
the pipeline (so that results copied from a Jetson into reports/bench/<host>/ are picked up
by the aggregation). Needs only torch, numpy, psutil, pyarrow and pyyaml (plus transformers
for the transformer model, jetson-stats for power on a Jetson, onnxruntime for the onnxruntime
backend: without it, its cells are skipped rows that say so).

    python -m alfred_edge.bench cell --model lstm --variant int8_dynamic --batch 1 --device cpu
    python -m alfred_edge.bench cell --model lstm --variant fp32 --backend onnxruntime --batch 1 --device cuda --provider tensorrt
    python -m alfred_edge.bench roofline --device cuda
    python -m alfred_edge.bench capacity --model lstm --variant fp32 --device cpu --measure jetson-4gb

The defaults are read from the checkout's config/config.yaml (its bench section); paths
default to the pipeline's layout (models/<model>/<variant>.pt, data/store/<bench.split>,
reports/bench/<host>/..., as results.schema.yaml gives them)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from alfred_edge import variants
from alfred_edge.bench import environment, schema
from alfred_edge.bench.harness import WORKLOADS
from alfred_edge.models.sizes import architecture_name

CONFIG_PATH = environment.REPO_ROOT / "config" / "config.yaml"
BENCH_ROOT = schema.path_pattern("cells").split("{host}")[0]  # reports/bench/, which --out-root replaces


def read_config(path: str | Path = CONFIG_PATH) -> dict:
    import yaml  # the runner's side only: the measuring child never reads the config

    return yaml.safe_load(Path(path).read_text())


def config_bench(path: str | Path = CONFIG_PATH) -> dict:
    """The bench section of config/config.yaml: the defaults of the settings below."""
    return read_config(path)["bench"]


def output_path(table: str, out_root: str, **keys) -> Path:
    """reports/bench/{host}/... as the schema's path pattern gives it, under out_root."""
    return Path(out_root) / schema.path_pattern(table).removeprefix(BENCH_ROOT).format(**keys)


def parse_args(argv, bench: dict):
    """The command line, with the defaults of `bench` (config_bench())."""
    parser = argparse.ArgumentParser(prog="python -m alfred_edge.bench", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="job", required=True)
    for job in ("cell", "roofline", "capacity"):
        p = sub.add_parser(job)
        p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
        p.add_argument("--host", default="auto", help="host name in the results (default: this machine's)")
        p.add_argument("--threads", type=int, default=int(bench["threads"]), help="torch intra-op threads")
        p.add_argument("--timeout-s", type=float, default=float(bench["timeout_s"]))
        p.add_argument("--out-root", default=BENCH_ROOT.rstrip("/"), help="results go to OUT_ROOT/<host>/...")
        p.add_argument("--out", help="exact output file (overrides --out-root)")
        if job == "roofline":
            roofline = bench["roofline"]
            p.add_argument("--matmul-size", type=int, default=int(roofline["matmul_size"]), help="n of the n x n matmul")
            p.add_argument("--copy-mb", type=float, default=float(roofline["copy_mb"]), help="buffer copied for the bandwidth")
            p.add_argument("--seconds", type=float, default=float(roofline["seconds"]), help="per measurement")
            continue
        p.add_argument("--model", required=True, help="lstm | transformer | fake | identity")
        p.add_argument("--variant", default="fp32", help=" | ".join(variants.NAMES) + " (composites joined by +)")
        p.add_argument("--model-path", help="default models/<model>/<variant>.pt (onnxruntime: <variant>.onnx/)")
        p.add_argument("--fp32-path", help="fp32 file for FLOP counting; default models/<model>/fp32.pt")
        p.add_argument("--store", default=f"data/store/{bench['split']}", help="store split folder (default %(default)s)")
        p.add_argument("--features", default="mmap", choices=["mmap", "ram"])
        p.add_argument("--workload", default=bench["workload"], choices=WORKLOADS,
                       help="expert: the expert's previous actions and masks (the same work for every variant); "
                            "policy: the model's own (default %(default)s)")
        if job == "cell":
            p.add_argument("--backend", default="eager", choices=variants.BACKENDS)
            p.add_argument("--provider", help="the backend's provider on --device (default: its first, "
                                              f"{variants.PROVIDERS}); an absent one gives a skipped row")
            p.add_argument("--batch", type=int, required=True)
            p.add_argument("--max-steps", type=int, default=int(bench["max_steps"]))
            p.add_argument("--min-iterations", type=int, default=int(bench["min_iterations"]))
            p.add_argument("--min-duration-s", type=float, default=float(bench["min_duration_s"]))
            p.add_argument("--max-duration-s", type=float, default=float(bench["max_duration_s"]))
            p.add_argument("--warmup-iterations", type=int, default=int(bench["warmup_iterations"]))
            p.add_argument("--ci-half-width", type=float, default=bench["ci_half_width"],
                           help="go on until the p50's 95 %% interval is within this fraction of it (or --max-duration-s)")
            p.add_argument("--power-interval-s", type=float, default=float(bench["power"]["interval_s"]))
            p.add_argument("--idle-power-s", type=float, default=float(bench["power"]["idle_s"]))
            p.add_argument("--ram-limit-mb", type=float, help="end the cell as oom when its RSS passes this")
            p.add_argument("--roofline", help="roofline Parquet of this host/device (default: look under OUT_ROOT)")
            p.add_argument("--fault", help="fake model only: simulate a failure (see workloads.FakeEpisodeModel)")
        else:
            cap = bench["capacity"]
            p.add_argument("--measure", help="budget name to measure (default: fit only)")
            p.add_argument("--budgets-gb", default=json.dumps(bench["ram_budgets_gb"]), help="JSON {name: GB or \"auto\"}")
            p.add_argument("--max-batch", type=int, default=int(cap["max_batch"]))
            p.add_argument("--factor", type=float, default=float(cap["factor"]))
            p.add_argument("--steps", type=int, default=int(cap["steps"]))
            p.add_argument("--max-seconds", type=float, default=float(cap["max_seconds"]), help="time box of the search")
            p.add_argument("--cells", nargs="*", help="cell Parquet files to fit (default: this host's for the model/variant/device)")
    return parser.parse_args(argv)


def model_spec(args, models: dict) -> dict:
    """The model's part of a job's spec; `models` is the config's models section (a model it
    lacks, such as fake or identity, is its own architecture)."""
    real = args.model not in ("fake", "identity")
    backend = getattr(args, "backend", "eager")
    suffix = ".pt" if backend == "eager" else ".onnx"
    model_path = args.model_path or (f"models/{args.model}/{args.variant}{suffix}" if real else None)
    fp32_path = args.fp32_path or (f"models/{args.model}/fp32.pt" if real else None)
    entry = models.get(args.model, {})
    return {"model": args.model, "architecture": architecture_name(args.model, entry) if real else None,
            "cost_only": bool(entry.get("cost_only")), "workload": args.workload, "variant": args.variant,
            "model_path": model_path, "fp32_path": fp32_path, "store_dir": args.store, "features": args.features,
            "backend": backend, "provider": getattr(args, "provider", None) or variants.providers(backend, args.device)[0]}


def main(argv=None) -> int:
    from alfred_edge.bench import runner

    config = read_config()
    args = parse_args(sys.argv[1:] if argv is None else argv, config["bench"])
    host = environment.host_name(args.host)
    base = {"host": host, "device": args.device, "threads": args.threads, "timeout_s": args.timeout_s}
    out_root = Path(args.out_root) / host
    if args.job == "roofline":
        out = args.out or output_path("roofline", out_root.parent, host=host, device=args.device)
        roofline = {"matmul_size": args.matmul_size, "copy_mb": args.copy_mb, "seconds": args.seconds}
        row = runner.run_roofline({**base, "roofline": roofline}, out)
    elif args.job == "cell":
        spec = {**base, **model_spec(args, config["models"]), "batch_size": args.batch, "max_steps": args.max_steps,
                "loop": {"min_iterations": args.min_iterations, "min_duration_s": args.min_duration_s,
                         "max_duration_s": args.max_duration_s, "warmup_iterations": args.warmup_iterations,
                         "ci_half_width": args.ci_half_width},
                "power": {"interval_s": args.power_interval_s, "idle_s": args.idle_power_s},
                "ram_limit_mb": args.ram_limit_mb, "fault": args.fault,
                "roofline_host": _roofline_row(args.roofline or output_path("roofline", out_root.parent, host=host, device=args.device))}
        out = args.out or output_path("cells", out_root.parent, host=host, model=args.model, variant=args.variant,
                                      device=args.device, features=args.features, backend=spec["backend"],
                                      provider=spec["provider"], batch=args.batch)
        smaller = [path for batch, path in _batch_files(Path(out).parent).items() if batch < args.batch]
        row = runner.run_cell(spec, out, skip_reason=runner.smaller_batch_oom_reason(smaller))
    else:
        from alfred_edge.bench import capacity

        cap = {"budgets_gb": json.loads(args.budgets_gb), "measure": args.measure, "max_batch": args.max_batch,
               "factor": args.factor, "steps": args.steps, "max_seconds": args.max_seconds}
        spec = {**base, **model_spec(args, config["models"]), "capacity": cap}
        cell_folder = output_path("cells", out_root.parent, host=host, model=args.model, variant=args.variant,
                                  device=args.device, features=args.features, backend="eager",
                                  provider=variants.EAGER_PROVIDER, batch="{batch}").parent
        cells = args.cells if args.cells is not None else list(_batch_files(cell_folder).values())
        out = args.out or output_path("capacity", out_root.parent, host=host, model=args.model,
                                      variant=args.variant, device=args.device)
        row = capacity.run_capacity(spec, cells, out)[0]
    print(f"{out}: status {row['status']}" + (f" ({row['error'].splitlines()[0]})" if row.get("error") else ""))
    return 0


def _batch_files(folder: Path) -> dict[int, str]:
    """The cell files in `folder` (those of one model/variant/device/features) by batch size,
    named as results.schema.yaml names them (b{batch}.parquet). After an OOM at a smaller
    batch, a cell is skipped; capacity fits all of them."""
    prefix, suffix = Path(schema.path_pattern("cells")).name.split("{batch}")
    found = {}
    for path in Path(folder).glob(f"{prefix}*{suffix}"):
        batch = path.name.removeprefix(prefix).removesuffix(suffix)
        if batch.isdigit():
            found[int(batch)] = str(path)
    return dict(sorted(found.items()))


def _roofline_row(path) -> dict | None:
    """The ok roofline row of this host/device, if its file exists."""
    if not Path(path).exists():
        return None
    import pyarrow.parquet as pq

    row = pq.read_table(path).to_pylist()[0]
    return row if row["status"] == "ok" else None


if __name__ == "__main__":
    sys.exit(main())
