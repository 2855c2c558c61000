"""Choose a split's subset (the count was fixed at parse time) -> data/subset/{split}.json (rule subset)."""
import json

import pandas as pd

from alfred_edge import atomic
from alfred_edge.data.subset import subset_document
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    rows = pd.read_parquet(snakemake.input[0]).to_dict("records")
    for row in rows:
        row["repeat_idx"] = [int(r) for r in row["repeat_idx"]]
    doc = subset_document(rows, snakemake.wildcards.split, int(snakemake.params.n_trajectories), int(snakemake.params.seed))
    atomic.write_text(snakemake.output[0], json.dumps(doc, indent=1))
    problems = sum(bool(t["problem"]) for t in doc["trajectories"])
    log.info("%s: %d of %d trajectories (%d with missing files)", doc["split"], doc["count"], doc["available"], problems)
