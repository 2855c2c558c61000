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
config["models"] = {
    name: entry for name, entry in config["models"].items() if entry is not None
}
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
    _errors = [
        f"{name!r}: {variants.name_error(name)}"
        for name in _names
        if variants.name_error(name)
    ]
    if _errors:
        raise WorkflowError(
            f"config: {_setting} names what is not a variant: {'; '.join(_errors)}"
        )
for _model in MODEL_NAMES:
    _extra = [
        v for v in config["models"][_model].get("variants") or [] if v not in VARIANTS
    ]
    if _extra:
        raise WorkflowError(
            f"config: models.{_model}.variants names {_extra}, not in quantize.variants {VARIANTS}"
        )
BACKENDS = config["quantize"]["backends"]
if not set(BACKENDS) <= set(variants.BACKENDS):
    raise WorkflowError(
        f"config: quantize.backends names {sorted(set(BACKENDS) - set(variants.BACKENDS))}; "
        f"known: {', '.join(variants.BACKENDS)}"
    )
for _backend, _settings in BACKENDS.items():
    for _key, _all in (
        ("variants", VARIANTS),
        ("bench_batches", config["bench"]["batches"]),
    ):
        _extra = [v for v in _settings.get(_key) or [] if v not in _all]
        if _extra:
            raise WorkflowError(
                f"config: quantize.backends.{_backend}.{_key} names {_extra}, not in {_all}"
            )


def backend_variants(backend):
    """The configured variants `backend` builds, evaluates and benchmarks (none if not configured)."""
    if backend not in BACKENDS:
        return []
    chosen = BACKENDS[backend].get("variants")
    return VARIANTS if chosen is None else [v for v in VARIANTS if v in chosen]


def model_variants(model, backend):
    """The variants of `model` on `backend`: the backend's, less those the model's own
    `variants` leaves out."""
    return variants.for_model(backend_variants(backend), config["models"][model])


BENCH = config["bench"]
BENCH_HOST = host_name(BENCH["host"])
BENCH_DEVICES = bench_devices(BENCH["devices"])
BENCH_BATCHES = sorted(BENCH["batches"])


def backend_batches(backend):
    chosen = BACKENDS[backend].get("bench_batches")
    return (
        BENCH_BATCHES if chosen is None else [b for b in BENCH_BATCHES if b in chosen]
    )


def bench_cells():
    """Every benchmark cell as a dict of its wildcards: the sweep of (model, variant, device,
    batch) of each backend, on each of its providers for the device (variants.providers), plus
    eager fp32 at the smallest batch with the frames read into RAM (compare_features_in_ram).
    """
    cells = [
        dict(
            model=m,
            variant=v,
            device=d,
            features="mmap",
            backend=backend,
            provider=p,
            batch=b,
        )
        for backend in BACKENDS
        for m in MODEL_NAMES
        for v in model_variants(m, backend)
        for d in BENCH_DEVICES
        for p in variants.providers(backend, d)
        for b in backend_batches(backend)
    ]
    if BENCH["compare_features_in_ram"]:
        cells += [
            dict(
                model=m,
                variant="fp32",
                device=d,
                features="ram",
                backend="eager",
                provider=variants.EAGER_PROVIDER,
                batch=BENCH_BATCHES[0],
            )
            for m in MODEL_NAMES
            if "fp32" in model_variants(m, "eager")
            for d in BENCH_DEVICES
        ]
    return cells
