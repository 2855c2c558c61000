"""Write reports/storage_plan.md from the parse-time plan and the free space now (rule storage_plan)."""
import shutil
from pathlib import Path

from alfred_edge import atomic
from alfred_edge.data.plan import storage_markdown
from alfred_edge.joblog import job_logging

with job_logging(snakemake) as log:
    target = Path("data") if Path("data").exists() else Path(".")
    text = storage_markdown(snakemake.params.plan, shutil.disk_usage(target).free, str(target))
    atomic.write_text(snakemake.output[0], text)
    log.info("wrote %s", snakemake.output[0])
