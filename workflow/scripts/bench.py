"""Snakemake entry of one benchmark cell: settings from params, paths from input."""
import json
from pathlib import Path

import pyarrow.parquet as pq

from alfred_edge.bench import runner
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    spec = dict(snakemake.params.spec)
    spec.update(model_path=snakemake.input.model, store_dir=snakemake.input.store)
    roofline = pq.read_table(snakemake.input.roofline).to_pylist()[0]
    spec["roofline_host"] = roofline if roofline["status"] == "ok" else None
    spec["flops"] = json.loads(Path(snakemake.input.flops).read_text())
    skip = runner.smaller_batch_oom_reason(list(snakemake.input.smaller_batch))
    reference = [pq.read_table(path).to_pylist()[0]["chosen_actions"] for path in snakemake.input.fp32_cell]
    row = runner.run_cell(spec, snakemake.output[0], skip_reason=skip, reference_actions=(reference or [None])[0])
    log.info("%s: %s %s", snakemake.output[0], row["status"], row.get("error") or "")
