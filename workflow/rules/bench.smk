# bench stage: one job per benchmark cell (model, variant, device, features, backend, provider,
# batch), one per
# device for the roofline, one per model for its FLOPs (counted once: the counter's start
# costs seconds), one per (model, variant, device) for the RAM capacity. Each job
# measures in its own child process and always writes its row (failures are rows). They take
# the `exclusive` resource (1 in the default profile), so they never overlap each other or
# training, whatever --cores says, and claim the cores their threads use, so no other job
# shares them. The cells come from config (common.smk: bench_cells; cheap:
# no torch, no pyarrow, no file reads); the host is fixed per run, so this host's outputs
# never claim another host's files under reports/bench/.
import shutil

from alfred_edge.bench.harness import WORKLOADS
from alfred_edge.bench.schema import path_pattern


def _bench_path(table):
    """This host's path pattern of one benchmark table (the results schema's)."""
    return path_pattern(table).replace("{host}", BENCH_HOST)


BENCH_CELL = _bench_path("cells")
BENCH_ROOFLINE = _bench_path("roofline")
BENCH_CAPACITY = _bench_path("capacity")
BENCH_FLOPS = f"reports/bench/{BENCH_HOST}/flops/{{model}}.json"
if BENCH["workload"] not in WORKLOADS:
    raise WorkflowError(
        f"config: bench.workload is {BENCH['workload']!r}; use one of {', '.join(WORKLOADS)}"
    )
if BENCH["split"] not in DATA_SPLITS:
    raise WorkflowError(
        f"config: bench.split {BENCH['split']!r} is not in data.splits {DATA_SPLITS}"
    )
if BENCH["python"] is not None and shutil.which(BENCH["python"]) is None:
    raise WorkflowError(
        f"config: bench.python {BENCH['python']!r} is not an executable (a path, or a name on PATH)"
    )
if (
    BENCH["capacity"]["measure"] is not None
    and BENCH["capacity"]["measure"] not in BENCH["ram_budgets_gb"]
):
    raise WorkflowError(
        f"config: bench.capacity.measure {BENCH['capacity']['measure']!r} is not a name in "
        f"bench.ram_budgets_gb ({', '.join(BENCH['ram_budgets_gb'])})"
    )


def get_bench_outputs(table):
    """This host's files of one benchmark table ("cells", "roofline" or "capacity")."""
    if table == "cells":
        return [BENCH_CELL.format(**cell) for cell in bench_cells()]
    if table == "roofline":
        return [BENCH_ROOFLINE.format(device=d) for d in BENCH_DEVICES]
    if table == "capacity":
        return [
            BENCH_CAPACITY.format(model=m, variant=v, device=d)
            for m in MODEL_NAMES
            for v in model_variants(m, "eager")
            for d in BENCH_DEVICES
        ]
    raise ValueError(f"unknown benchmark table {table!r}")


def _smaller_batch_cell(wildcards):
    """The cell at the next smaller batch of the sweep (its row decides a skip after OOM)."""
    batch = int(wildcards.batch)
    smaller = [b for b in backend_batches(wildcards.backend) if b < batch]
    if wildcards.features != "mmap" or not smaller:
        return []
    return [BENCH_CELL.format(**dict(wildcards, batch=smaller[-1]))]


def _fp32_reference_cell(wildcards):
    """With the policy workload, the fp32 cell of the same (model, device, features, batch):
    the actions it chose, against which a variant's agreement is measured."""
    if (
        BENCH["workload"] != "policy"
        or wildcards.variant == "fp32"
        or "fp32" not in model_variants(wildcards.model, wildcards.backend)
    ):
        return []
    return [BENCH_CELL.format(**dict(wildcards, variant="fp32"))]


def get_bench_cell_inputs(wildcards):
    return {
        "model": VARIANT_FILES[wildcards.backend].format(**wildcards),
        "store": f"data/store/{BENCH['split']}",
        "roofline": BENCH_ROOFLINE.format(device=wildcards.device),
        "flops": BENCH_FLOPS.format(model=wildcards.model),
        "smaller_batch": _smaller_batch_cell(wildcards),
        "fp32_cell": _fp32_reference_cell(wildcards),
    }


def _bench_job_settings(device):
    return {
        "host": BENCH_HOST,
        "device": device,
        "python": BENCH["python"],
        "threads": BENCH["threads"],
        "timeout_s": BENCH["timeout_s"],
    }


def _model_settings(model):
    """What a measuring process needs to know of the model besides its file."""
    return {
        "model": model,
        "architecture": MODEL_ARCHITECTURES[model],
        "cost_only": model in COST_ONLY_MODELS,
        "workload": BENCH["workload"],
    }


def get_bench_flops_spec(wildcards):
    """The FLOP count runs on the CPU (quantized kernels are invisible to the counter)."""
    return canonical(_bench_job_settings("cpu"))


def get_bench_cell_spec(wildcards):
    """Everything a cell's measurement depends on (paths are added by the script)."""
    ram_limit = BENCH["ram_limit_gb"]
    loop_keys = (
        "min_iterations",
        "min_duration_s",
        "max_duration_s",
        "warmup_iterations",
        "ci_half_width",
    )
    return canonical(
        {
            **_bench_job_settings(wildcards.device),
            **_model_settings(wildcards.model),
            "variant": wildcards.variant,
            "features": wildcards.features,
            "backend": wildcards.backend,
            "provider": wildcards.provider,
            "batch_size": int(wildcards.batch),
            "max_steps": BENCH["max_steps"],
            "loop": {key: BENCH[key] for key in loop_keys},
            "power": BENCH["power"],
            "ram_limit_mb": None if ram_limit is None else ram_limit * 1000.0,
        }
    )


def get_bench_roofline_spec(wildcards):
    return canonical(
        {**_bench_job_settings(wildcards.device), "roofline": BENCH["roofline"]}
    )


def _capacity_measured(wildcards):
    cap = BENCH["capacity"]
    return cap["measure"] is not None and wildcards.variant in cap["variants"]


def get_bench_capacity_inputs(wildcards):
    inputs = {
        "cells": [
            BENCH_CELL.format(
                **dict(
                    wildcards,
                    features="mmap",
                    backend="eager",
                    provider=variants.EAGER_PROVIDER,
                    batch=b,
                )
            )
            for b in BENCH_BATCHES
        ],
    }
    if _capacity_measured(wildcards):
        inputs.update(
            model=VARIANT_FILES["eager"].format(**wildcards),
            store=f"data/store/{BENCH['split']}",
        )
    return inputs


def get_bench_capacity_spec(wildcards):
    cap = BENCH["capacity"]
    search = ("max_batch", "factor", "steps", "max_seconds")
    return canonical(
        {
            **_bench_job_settings(wildcards.device),
            **_model_settings(wildcards.model),
            "variant": wildcards.variant,
            "features": "mmap",
            "capacity": {
                **{key: cap[key] for key in search},
                "budgets_gb": BENCH["ram_budgets_gb"],
                "measure": cap["measure"] if _capacity_measured(wildcards) else None,
            },
        }
    )


wildcard_constraints:
    device="cpu|cuda",
    features="mmap|ram",
    backend="|".join(variants.BACKENDS),
    provider="|".join(
        sorted({p for b in variants.PROVIDERS.values() for d in b.values() for p in d})
    ),
    batch=r"\d+",


rule bench_roofline:
    output:
        BENCH_ROOFLINE,
    log:
        "logs/bench_roofline/{device}.log",
    threads: BENCH["threads"]  # the cell's own: with --cores equal to them, no other job runs beside it
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_roofline_spec,
        code=get_code_digest("scripts/roofline.py"),
    script:
        "../scripts/roofline.py"


rule bench_flops:
    input:
        model="models/{model}/fp32.pt",
        store=f"data/store/{BENCH['split']}",
    output:
        BENCH_FLOPS,
    log:
        "logs/bench_flops/{model}.log",
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_flops_spec,
        code=get_code_digest("scripts/flops.py"),
    script:
        "../scripts/flops.py"


rule bench:
    input:
        unpack(get_bench_cell_inputs),
    output:
        BENCH_CELL,
    log:
        "logs/bench/{model}/{variant}/{device}/{features}/{backend}.{provider}/b{batch}.log",
    threads: BENCH["threads"]  # the cell's own: with --cores equal to them, no other job runs beside it
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_cell_spec,
        code=get_code_digest("scripts/bench.py"),
    script:
        "../scripts/bench.py"


rule bench_capacity:
    input:
        unpack(get_bench_capacity_inputs),
    output:
        BENCH_CAPACITY,
    log:
        "logs/bench_capacity/{model}/{variant}/{device}.log",
    threads: BENCH["threads"]  # the cell's own: with --cores equal to them, no other job runs beside it
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_capacity_spec,
        code=get_code_digest("scripts/capacity.py"),
    script:
        "../scripts/capacity.py"
