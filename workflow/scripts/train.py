"""Train one model on the store (rule train): models/{model}/fp32.pt + train_metrics.parquet
+ train_steps.parquet."""
import os
from pathlib import Path

import torch

from alfred_edge.joblog import job_logging
from alfred_edge.train import train

with job_logging(snakemake) as log:
    # More threads than cores makes torch's CPU kernels spin against each other.
    torch.set_num_threads(max(1, min(snakemake.threads, len(os.sched_getaffinity(0)))))
    summary = train(
        snakemake.params.architecture,
        snakemake.params.settings,
        store_dir=Path(snakemake.input.vocab).parent,
        model_path=snakemake.output.model,
        metrics_path=snakemake.output.metrics,
        steps_path=snakemake.output.steps,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    log.info("best epoch %d of %s: %s", summary["best_epoch"], snakemake.wildcards.model, summary)
