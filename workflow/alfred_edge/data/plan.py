"""Parse-time planning (imported by workflow/rules/common.smk; numpy only, never torch):
the manifest (from the splits file and os.stat, or from the synthetic generator's seed),
the subset counts, and the bytes every data job writes, so that `snakemake -n` shows a
numeric disk_mb for each job and reports/storage_plan.md can be written without reading
feature data."""
from __future__ import annotations

import math
from pathlib import Path

from alfred_edge.data import manifest, subset, synthetic
from alfred_edge.data.store import planned_store_bytes
from alfred_edge import variants as variant_registry

DTYPES = ("float16", "uint8", "float32")
# Vocabulary sizes used for model-size estimates before the vocabulary exists (ALFRED's
# word vocabulary has 2,360 entries; the synthetic one about 80).
ESTIMATED_VOCAB = {"synthetic": {"word": 100, "action_low": 15}, "alfred": {"word": 2400, "action_low": 15}}
RESULTS_BYTES_PER_CELL = 64 * 1024


def disk_mb(nbytes: float) -> int:
    """A job's `resources: disk_mb` (MB = 1e6 bytes, at least 1) from the bytes it writes;
    for any rule whose output size is known at parse time."""
    return max(1, math.ceil(nbytes / 1e6))


def synthetic_specs(data_cfg: dict) -> list[synthetic.TrajectorySpec]:
    syn = data_cfg["synthetic"]
    return synthetic.trajectory_specs(syn["seed"], {s: syn["trajectories"][s] for s in data_cfg["splits"]},
                                      syn["annotations_per_trajectory"], tuple(syn["nav_steps"]))


def manifest_rows(data_cfg: dict) -> list[dict]:
    if data_cfg["source"] == "synthetic":
        return synthetic.manifest_rows(synthetic_specs(data_cfg))
    root = Path(data_cfg["source"])
    if not root.is_dir():
        raise ValueError(f"data.source: {root} is not a folder (give 'synthetic' or the path of a json_feat tree)")
    if not data_cfg.get("splits_file"):
        raise ValueError("data.splits_file: required when data.source is a path (e.g. <tree>/../splits/oct21.json)")
    return manifest.scan_tree(root, data_cfg["splits_file"], data_cfg["splits"])


def reserved_bytes(models_cfg: dict, variants: list[str], n_bench_cells: int, source: str) -> dict[str, int]:
    """Bytes of the non-data outputs: models/{model}/{variant}.pt from parameter counts, and
    the benchmark results."""
    from alfred_edge.models.sizes import architecture_name, fp32_file_bytes

    vocab = ESTIMATED_VOCAB["synthetic" if source == "synthetic" else "alfred"]
    out = {}
    for name, cfg in sorted(models_cfg.items()):
        fp32 = fp32_file_bytes(architecture_name(name, cfg), cfg, vocab)
        own = set(variant_registry.for_model(variants, cfg)) | {"fp32"}
        out[f"models/{name}"] = int(fp32 * sum(variant_registry.get(v).size_fraction for v in own))
    out["reports"] = n_bench_cells * RESULTS_BYTES_PER_CELL
    return out


def make_plan(data_cfg: dict, budget_bytes: int, reserved: dict[str, int]) -> dict:
    """Everything the data rules need at parse time:
    {"rows": manifest rows, "counts": {split: n}, "splits": {split: figures}}."""
    rows = manifest_rows(data_cfg)
    dtype, seed = data_cfg["store_dtype"], data_cfg["subset"].get("seed", 0)
    # one order for all splits: a split's own order is this one restricted to it
    order = subset.stratified_order(rows, seed)
    counts = subset.split_counts(rows, data_cfg["splits"], data_cfg["subset"], dtype,
                                 budget_bytes - sum(reserved.values()), order)
    figures = {}
    for split in data_cfg["splits"]:
        chosen = [r for r in order if r["split"] == split][:counts[split]]
        chosen = [r for r in chosen if not r["problem"]]
        frames = sum(r["n_frames"] for r in chosen)
        figures[split] = {
            "available": sum(r["split"] == split for r in rows),
            "selected": counts[split], "usable": len(chosen), "frames": frames,
            "annotations": sum(r["n_annotations"] for r in chosen),
            "raw_bytes": sum(r["feat_bytes"] + r["json_bytes"] for r in chosen),
            "store_bytes": {d: planned_store_bytes(frames, len(chosen), d) for d in DTYPES},
        }
    return {"rows": rows, "counts": counts, "splits": figures}


def _gb(nbytes: float) -> str:
    return f"{nbytes / 1e9:,.3f}"


def storage_markdown(plan: dict, free_bytes: int, free_path: str) -> str:
    """reports/storage_plan.md from the parse-time figures (`plan`: the storage_plan rule's
    params) and the free space measured now."""
    dtype, budget = plan["dtype"], plan["budget_bytes"]
    lines = ["# Storage plan", "",
             f"Source: `{plan['source']}`; subset mode `{plan['subset_mode']}`; store dtype `{dtype}`; "
             f"budget {_gb(budget)} GB (storage.budget_gb). Sizes in GB (1e9 bytes); stores and "
             "models are estimates from the manifest and parameter counts, made before anything is written.", "",
             "## Raw json_feat selected", "",
             "| split | trajectories (selected / available) | annotations | frames | raw GB |", "|---|---|---|---|---|"]
    for split, f in plan["splits"].items():
        lines.append(f"| {split} | {f['usable']} / {f['available']} | {f['annotations']} | {f['frames']:,} | {_gb(f['raw_bytes'])} |")
    lines += ["", "## Store per split and dtype (GB; the configured dtype in bold)", "",
              "| split | " + " | ".join(DTYPES) + " |", "|---|" + "---|" * len(DTYPES)]
    for split, f in plan["splits"].items():
        cells = [(f"**{_gb(f['store_bytes'][d])}**" if d == dtype else _gb(f["store_bytes"][d])) for d in DTYPES]
        lines.append(f"| {split} | " + " | ".join(cells) + " |")
    store_total = sum(f["store_bytes"][dtype] for f in plan["splits"].values())
    raw_total = sum(f["raw_bytes"] for f in plan["splits"].values())
    lines += ["", "## Models and results (estimated)", "", "| output | GB |", "|---|---|"]
    lines += [f"| {name} | {_gb(n)} |" for name, n in plan["reserved"].items()]
    total = store_total + sum(plan["reserved"].values())
    verdict = "fits" if total <= budget and total <= free_bytes else "DOES NOT FIT"
    lines += ["", "## Total", "", "| | GB |", "|---|---|",
              f"| raw json_feat selected (read, not copied) | {_gb(raw_total)} |",
              f"| store ({dtype}) | {_gb(store_total)} |",
              f"| store + models + results | {_gb(total)} |",
              f"| budget (storage.budget_gb) | {_gb(budget)} |",
              f"| free space on the file system of `{free_path}` | {_gb(free_bytes)} |",
              "", f"**The plan {verdict}** ({100 * total / budget:.1f} % of the budget).", ""]
    return "\n".join(lines)
