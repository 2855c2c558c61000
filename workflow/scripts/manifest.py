"""Scan one split of the json_feat tree (splits file + os.stat only) into data/manifest/{split}.parquet (rule manifest)."""
import pandas as pd

from alfred_edge import atomic
from alfred_edge.data.manifest import COLUMNS, scan_tree
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    p = snakemake.params
    rows = scan_tree(p.root, p.splits_file, [snakemake.wildcards.split])
    atomic.write_parquet(pd.DataFrame(rows, columns=COLUMNS), snakemake.output[0])
    log.info("%d trajectories, %d with problems", len(rows), sum(bool(r["problem"]) for r in rows))
