"""Snakemake entry of bench_flops: the FLOPs of one model on the benchmark split's first
episode (roofline.episode_flops), counted once here for every cell of the model."""
import json

import torch

from alfred_edge import atomic
from alfred_edge.bench import roofline, workloads
from alfred_edge.joblog import job_logging
from alfred_edge.quantize import load_variant

with job_logging(snakemake) as log:
    torch.set_num_threads(snakemake.threads)
    model = load_variant(snakemake.input.model, "cpu")
    batch = workloads.store_batches(snakemake.input.store, 1, 2, "mmap")[0]  # the first episode of every cell's pool
    counts = roofline.episode_flops(torch, model, batch["lang"], batch["lang_lengths"], batch["frames"].float())
    atomic.write_text(snakemake.output[0], json.dumps(counts))
    log.info("%s: %s", snakemake.output[0], counts)
