"""Snakemake entry of the roofline of this host and one device."""
from alfred_edge.bench import runner
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    row = runner.run_roofline(dict(snakemake.params.spec), snakemake.output[0])
    log.info("%s: %s %s", snakemake.output[0], row["status"], row.get("error") or "")
