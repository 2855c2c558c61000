"""Write the synthetic json_feat tree and its splits file (rule synthesize)."""
import json

from alfred_edge import atomic
from alfred_edge.data import synthetic
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    cfg = snakemake.params.synthetic
    nav_steps = tuple(cfg["nav_steps"])
    specs = synthetic.trajectory_specs(cfg["seed"], cfg["trajectories"], cfg["annotations_per_trajectory"], nav_steps)
    with atomic.atomic_path(snakemake.output.root, directory=True) as tmp:
        synthetic.write_tree(specs, nav_steps, tmp, None)  # the splits file lives beside the tree
    atomic.write_text(snakemake.output.splits, json.dumps(synthetic.splits_file(specs), indent=1))
    log.info("wrote %d trajectories under %s", len(specs), snakemake.output.root)
