# bench stage: one job per benchmark cell (model, variant, device, features, batch), one per
# device for the roofline, one per model for its FLOPs (counted once: the counter's start
# costs seconds), one per (model, variant, device) for the RAM capacity. Each job
# measures in its own child process and always writes its row (failures are rows). They take
# the `exclusive` resource (1 in the default profile), so they never overlap each other or
# training, whatever --cores says. Cells and settings come from common.smk "# --- bench ---".


wildcard_constraints:
    device="cpu|cuda",
    features="mmap|ram",
    batch=r"\d+",


rule bench_roofline:
    output:
        BENCH_ROOFLINE,
    log:
        "logs/bench_roofline/{device}.log",
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_roofline_spec,
        code=get_code_digest("scripts/roofline.py", *BENCH_CODE),
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
        code=get_code_digest("scripts/flops.py", *BENCH_CODE, *BENCH_WORKLOAD_CODE),
    script:
        "../scripts/flops.py"


rule bench:
    input:
        unpack(get_bench_cell_inputs),
    output:
        BENCH_CELL,
    log:
        "logs/bench/{model}/{variant}/{device}/{features}/b{batch}.log",
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_cell_spec,
        code=get_code_digest("scripts/bench.py", *BENCH_CODE, *BENCH_WORKLOAD_CODE),
    script:
        "../scripts/bench.py"


rule bench_capacity:
    input:
        unpack(get_bench_capacity_inputs),
    output:
        BENCH_CAPACITY,
    log:
        "logs/bench_capacity/{model}/{variant}/{device}.log",
    resources:
        exclusive=1,
        disk_mb=1,
    params:
        spec=get_bench_capacity_spec,
        code=get_code_digest("scripts/capacity.py", *BENCH_CODE, *BENCH_WORKLOAD_CODE),
    script:
        "../scripts/capacity.py"
