"""Train one model on the store (rule train): models/{model}/fp32.pt + train_metrics.parquet."""
from pathlib import Path

import torch

from alfred_edge.joblog import job_logging
from alfred_edge.train import train

with job_logging(snakemake) as log:
    torch.set_num_threads(snakemake.threads)
    summary = train(
        snakemake.wildcards.model,
        snakemake.params.settings,
        store_dir=Path(snakemake.input.vocab).parent,
        model_path=snakemake.output.model,
        metrics_path=snakemake.output.metrics,
        device="cuda" if torch.cuda.is_available() else "cpu",
    )
    log.info("best epoch %d of %s: %s", summary["best_epoch"], snakemake.wildcards.model, summary)
