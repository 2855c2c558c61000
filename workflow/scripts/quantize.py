"""Snakemake entry point of the quantize, evaluate_fp32 and export_onnx rules: one (model,
variant, backend)."""
import torch

from alfred_edge.joblog import job_logging
from alfred_edge.quantize import quantize_job

with job_logging(snakemake) as log:
    torch.set_num_threads(snakemake.threads)
    settings = snakemake.params.settings
    row = quantize_job(
        fp32_path=snakemake.input.model,
        variant=settings["variant"],
        store_dir=snakemake.params.store_dir,
        splits=settings["splits"],
        variant_path=snakemake.output.get("variant"),
        table_path=snakemake.output.table,
        batch_size=settings["eval_batch"],
        backend=snakemake.params.backend,
        parent_path=snakemake.input.parent,
        settings=settings["steps"],
        train_store=snakemake.input.get("train"),
    )
    log.info("%s", row)
