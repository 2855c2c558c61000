"""Snakemake entry of bench_flops: the FLOPs of one model on the benchmark split's first
episode (roofline.episode_flops), counted once here for every cell of the model, in a child
process that runs with bench.python as the cells do (this interpreter need not have torch)."""
import json

from alfred_edge import atomic
from alfred_edge.bench import runner
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    spec = dict(snakemake.params.spec, model_path=snakemake.input.model, store_dir=snakemake.input.store)
    child = runner.run_child("flops", spec, spec["timeout_s"], None)
    result = child.result or {}
    if result.get("status") != "ok":
        raise RuntimeError(f"counting the FLOPs of {snakemake.input.model} failed: "
                           f"{result.get('error') or f'the child exited with code {child.exit_code}'}")
    atomic.write_text(snakemake.output[0], json.dumps(result["flops"]))
    log.info("%s: %s", snakemake.output[0], result["flops"])
