"""A cost-only model: random weights at the configured sizes -> models/{model}/fp32.pt (rule untrained_model)."""
from pathlib import Path

from alfred_edge.joblog import job_logging
from alfred_edge.train import untrained_model

with job_logging(snakemake) as log:
    untrained_model(snakemake.params.architecture, snakemake.params.settings, Path(snakemake.input.vocab).parent,
                    snakemake.output.model)
    log.info("%s: random %s weights, cost only", snakemake.output.model, snakemake.params.architecture)
