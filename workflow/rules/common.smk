# What several stages share: the config, validated and resolved once (devices "auto", the host
# name), the benchmark sweep, each rule's code digest and the canonical form of params. Each
# stage's own helpers are in its rule file (data.smk, train.smk, quantize.smk, bench.smk,
# report.smk), beside its rules.
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from alfred_edge import variants
from alfred_edge.data import dataset
from alfred_edge.bench.environment import bench_devices, host_name
from alfred_edge.code_digest import CodeIndex
from alfred_edge.models.sizes import architecture_name

# A model set to null is left out: a config file layered on config.yaml cannot delete a key.
config["models"] = {name: entry for name, entry in config["models"].items() if entry is not None}
validate(config, schema="../schemas/config.schema.yaml")

CODE_INDEX = CodeIndex(Path(workflow.basedir) / "workflow")


def get_code_digest(script):
    """Digest of the code a rule runs: its script (relative to workflow/), the package modules
    it imports, transitively, and the data files they name (alfred_edge.code_digest). Passed
    as a param, it reruns the rule when that code changes, and only then: a touch or a fresh
    checkout leaves it equal. (The profile leaves Snakemake's own mtime-based script trigger
    off for that reason.)"""
    return CODE_INDEX.digest(script)


def canonical(value):
    """Dicts with sorted keys, all the way down: params compare equal when settings do."""
    if isinstance(value, dict):
        return {key: canonical(value[key]) for key in sorted(value)}
    if isinstance(value, (list, tuple)):
        return [canonical(v) for v in value]
    return value


# The resolved config values more than one stage reads.
DATA_SPLITS = config["data"]["splits"]
if not set(DATA_SPLITS) <= set(dataset.SPLITS):
    raise WorkflowError(
        f"config: data.splits names {sorted(set(DATA_SPLITS) - set(dataset.SPLITS))}; "
        f"ALFRED's splits with actions are {', '.join(dataset.SPLITS)}"
    )
VALID_SPLITS = [s for s in dataset.VALID_SPLITS if s in DATA_SPLITS]
MODEL_NAMES = sorted(config["models"])
MODEL_ARCHITECTURES = {
    name: architecture_name(name, config["models"][name]) for name in MODEL_NAMES
}
# Random weights at the configured sizes: latency, memory and energy, no accuracy.
COST_ONLY_MODELS = [m for m in MODEL_NAMES if config["models"][m].get("cost_only")]
VARIANTS = list(config["quantize"]["variants"])
for _setting, _names in (
    ("quantize.variants", VARIANTS),
    ("bench.capacity.variants", config["bench"]["capacity"]["variants"]),
):
    _unknown = [name for name in _names if name not in variants.NAMES]
    if _unknown:
        raise WorkflowError(
            f"config: {_setting} names {_unknown}, not variants; known: {', '.join(variants.NAMES)}"
        )
BENCH = config["bench"]
BENCH_HOST = host_name(BENCH["host"])
BENCH_DEVICES = bench_devices(BENCH["devices"])
BENCH_BATCHES = sorted(BENCH["batches"])


def bench_cells():
    """Every benchmark cell as a dict of its wildcards: the sweep of (model, variant, device,
    batch), plus fp32 at the smallest batch with the frames read into RAM
    (compare_features_in_ram)."""
    cells = [
        dict(model=m, variant=v, device=d, features="mmap", batch=b)
        for m in MODEL_NAMES
        for v in VARIANTS
        for d in BENCH_DEVICES
        for b in BENCH_BATCHES
    ]
    if BENCH["compare_features_in_ram"] and "fp32" in VARIANTS:
        cells += [
            dict(
                model=m,
                variant="fp32",
                device=d,
                features="ram",
                batch=BENCH_BATCHES[0],
            )
            for m in MODEL_NAMES
            for d in BENCH_DEVICES
        ]
    return cells
