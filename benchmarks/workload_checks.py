"""Issue 21's acceptance, read from a finished run's reports/results.parquet (by default this
checkout's, after `snakemake --cores 4 reports/summary.html`):

- every (host, device, model, batch) does the same work in all its variants: equal
  mask_fraction, steps per episode and FLOPs per step;
- ALFRED's lstm at its own sizes (the cost-only model) is there, its fp32 file ~183 MB, and
  (eager) int8_dynamic's per-sample latency over fp32's at batch 1 (goal <= 0.5);
- the share of ok cells whose p50 interval is within bench.ci_half_width (goal >= 90 %);
- fp32 at the smallest batch, read from the store and from RAM: do the intervals overlap;
- the roofline of the ALFRED-size fp32 batch-1 cell from the step's bytes, not the file's.

    python benchmarks/workload_checks.py [reports/results.parquet]
"""
from __future__ import annotations

import sys

import pandas as pd

from host_load import host_load

ALFRED_SIZE = "lstm_alfred_size"


def same_work(ok: pd.DataFrame) -> pd.DataFrame:
    """Per (host, device, model, batch) of the memory-mapped cells: the distinct values of the
    work columns across the variants (1 each when every variant did the same work)."""
    mmap = ok[ok["features"] == "mmap"]
    return mmap.groupby(["host", "device", "model", "batch_size"])[
        ["mask_fraction", "steps_per_episode", "flops_per_step"]].nunique()


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "reports/results.parquet"
    results = pd.read_parquet(path)
    ok = results[results["status"] == "ok"]
    print(f"{path}: {len(results)} rows, {len(ok)} ok; {host_load()}")

    distinct = same_work(ok)
    unequal = distinct[(distinct > 1).any(axis=1)]
    print(f"same work across variants: {len(distinct) - len(unequal)} of {len(distinct)} (host, device, model, batch)"
          " groups")
    if not unequal.empty:
        print(unequal.to_string())

    alfred = ok[(ok["model"] == ALFRED_SIZE) & (ok["features"] == "mmap") & (ok["backend"] == "eager")]
    if alfred.empty:
        print(f"{ALFRED_SIZE}: no ok cells")
    else:
        b1 = alfred[alfred["batch_size"] == alfred["batch_size"].min()].set_index(["device", "variant"])
        for device in b1.index.get_level_values("device").unique():
            fp32 = b1.loc[(device, "fp32")]
            print(f"{ALFRED_SIZE} on {device}: fp32 file {fp32['model_file_mb']:.1f} MB, cost_only {fp32['cost_only']}, "
                  f"accuracy {fp32['accuracy_valid_seen']}")
            if (device, "int8_dynamic") in b1.index:
                int8 = b1.loc[(device, "int8_dynamic")]
                ratio = int8["sample_latency_p50_ms"] / fp32["sample_latency_p50_ms"]
                print(f"    int8_dynamic / fp32 per-sample latency at batch {int(fp32['batch_size'])}: {ratio:.2f} "
                      f"(goal <= 0.5; {int8['sample_latency_p50_ms']:.1f} / {fp32['sample_latency_p50_ms']:.1f} ms)")
            print(f"    roofline: step bytes {fp32['step_weight_bytes'] / 1e6:.1f} MB (file {fp32['model_file_mb']:.1f} MB),"
                  f" weight bytes per step {fp32['weight_bytes_per_step'] / 1e6:.1f} MB,"
                  f" roofline_fraction {fp32['roofline_fraction']:.3f}")

    with_ci = ok["latency_p50_ci_half_width"].notna()
    met = ~ok["flag_ci_wide"].astype(bool)
    print(f"cells with a p50 interval: {with_ci.sum()} of {len(ok)}; within the half-width target: {met.sum()} "
          f"({met.mean():.0%}, goal >= 90 %); busy host flagged: {ok['flag_busy_host'].astype(bool).sum()}")
    if "host_other_cpu_cores" in ok:
        other = ok["host_other_cpu_cores"].dropna()
        print(f"other processes' CPU during the loops: median {other.median():.2f}, max {other.max():.2f} cores")
    wide = ok[ok["flag_ci_wide"].astype(bool)]
    for row in wide.itertuples():
        width = "none" if pd.isna(row.latency_p50_ci_half_width) else f"{row.latency_p50_ci_half_width:.1%}"
        print(f"    wide: {row.model} {row.variant} {row.backend} {row.features} b{row.batch_size}: "
              f"{row.iterations} iterations in {row.loop_wall_s:.1f} s, half-width {width}")

    ram = ok[ok["features"] == "ram"]
    for row in ram.itertuples():
        twin = ok[(ok["features"] == "mmap") & (ok["host"] == row.host) & (ok["device"] == row.device)
                  & (ok["model"] == row.model) & (ok["variant"] == row.variant) & (ok["batch_size"] == row.batch_size)]
        if twin.empty:
            continue
        mmap = twin.iloc[0]
        overlap = (row.latency_p50_ci_low_ms <= mmap["latency_p50_ci_high_ms"]
                   and mmap["latency_p50_ci_low_ms"] <= row.latency_p50_ci_high_ms)
        print(f"{row.model} {row.variant} b{row.batch_size} {row.device}: mmap p50 {mmap['latency_p50_ms']:.2f} "
              f"[{mmap['latency_p50_ci_low_ms']:.2f}, {mmap['latency_p50_ci_high_ms']:.2f}] ms, ram "
              f"{row.latency_p50_ms:.2f} [{row.latency_p50_ci_low_ms:.2f}, {row.latency_p50_ci_high_ms:.2f}] ms: "
              f"intervals {'overlap' if overlap else 'DO NOT overlap'}"
              if pd.notna(row.latency_p50_ci_low_ms) and pd.notna(mmap["latency_p50_ci_low_ms"]) else
              f"{row.model} {row.variant} b{row.batch_size} {row.device}: mmap p50 {mmap['latency_p50_ms']:.2f} ms, ram "
              f"{row.latency_p50_ms:.2f} ms: no interval on one of them")


if __name__ == "__main__":
    main()
