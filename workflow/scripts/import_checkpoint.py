"""The init_from checkpoint as it is -> models/{model}/fp32.pt (rule import_checkpoint, epochs: 0)."""
from pathlib import Path

from alfred_edge.joblog import job_logging
from alfred_edge.train import import_model

with job_logging(snakemake) as log:
    import_model(snakemake.params.settings, Path(snakemake.input.vocab).parent, snakemake.output.model)
    log.info("%s: %s as it is, no training", snakemake.output.model, snakemake.input.checkpoint)
