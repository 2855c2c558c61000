"""Preprocess one split into data/store/{split}/ (rule preprocess)."""
from pathlib import Path

from alfred_edge.data.preprocess import preprocess_split
from alfred_edge.joblog import job_logging

with job_logging(snakemake):
    p = snakemake.params
    preprocess_split(
        split=snakemake.wildcards.split, subset_path=Path(snakemake.input.subset),
        vocab_path=Path(snakemake.input.vocab), root=Path(p.root), out_dir=Path(snakemake.output[0]),
        dtype=p.dtype, on_bad_input=p.on_bad_input, planned_bytes=int(p.planned_bytes),
        budget_bytes=int(p.budget_bytes),
    )
