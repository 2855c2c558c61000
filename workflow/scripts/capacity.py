"""Snakemake entry of the RAM capacity of (model, variant, device): the fit over the sweep's
cells, and the measured search when this variant is in bench.capacity.variants."""
from alfred_edge.bench import capacity
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    spec = dict(snakemake.params.spec)
    if "model" in snakemake.input.keys():
        spec.update(model_path=snakemake.input.model, store_dir=snakemake.input.store, fp32_path=None)
    rows = capacity.run_capacity(spec, list(snakemake.input.cells), snakemake.output[0])
    for row in rows:
        log.info("%s %s: predicted %s, measured %s (%s)", row["budget_name"], row["status"],
                 row["predicted_max_batch"], row.get("measured_max_batch"), row.get("error") or "")
