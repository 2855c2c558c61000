"""The data rules under Snakemake: numeric disk_mb in the dry run, and reruns scoped to what
a setting or the code affects."""
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO_ROOT

pytestmark = pytest.mark.slow
DATA_TARGETS = ["data/store/train", "data/store/valid_seen", "data/store/valid_unseen", "reports/storage_plan.md"]


def write_config(path: Path, **data_changes) -> Path:
    config = yaml.safe_load((REPO_ROOT / "config" / "config.yaml").read_text())
    config["data"]["synthetic"].update(trajectories={"train": 6, "valid_seen": 3, "valid_unseen": 3},
                                       annotations_per_trajectory=2, nav_steps=[1, 2])
    for key, value in data_changes.items():
        config["data"][key] = value
    path.write_text(yaml.safe_dump(config))
    return path


def snakemake(workdir: Path, config: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "snakemake", "-s", str(REPO_ROOT / "Snakefile"), "-d", str(workdir),
           "--configfile", str(config), "--workflow-profile", str(REPO_ROOT / "workflow/profiles/default"),
           *args, *DATA_TARGETS]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def planned_jobs(output: str) -> list[tuple[str, str]]:
    """(rule, split or '') of each job a dry run lists."""
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", output):
        match = re.match(r"(?:local)?rule (\w+):", block)
        if match:
            split = re.search(r"wildcards: split=(\w+)", block)
            jobs.append((match.group(1), split.group(1) if split else ""))
    return sorted(jobs)


def test_dry_run_disk_mb_and_scoped_reruns(tmp_path):
    config = write_config(tmp_path / "config.yaml")
    out = snakemake(tmp_path, config, "-n")
    assert len(planned_jobs(out)) == 12  # synthesize, storage plan, vocab; manifest, subset, preprocess per split
    disk = re.findall(r"disk_mb=(\S+?),", out)
    assert len(disk) == 12 and all(d.isdigit() for d in disk), disk
    assert "<TBD>" not in out

    snakemake(tmp_path, config, "--cores", "2")
    assert (tmp_path / "data/store/train/frames.npy").exists()
    assert planned_jobs(snakemake(tmp_path, config, "-n")) == []
    # a touch of the package code changes nothing (content digests, not mtimes)
    (REPO_ROOT / "workflow/alfred_edge/data/preprocess.py").touch()
    assert planned_jobs(snakemake(tmp_path, config, "-n")) == []
    # one split's subset size: that split's jobs only
    changed = write_config(tmp_path / "changed.yaml", subset={"mode": "count", "seed": 0, "valid_seen": 2})
    assert planned_jobs(snakemake(tmp_path, changed, "-n")) == [
        ("preprocess", "valid_seen"), ("storage_plan", ""), ("subset", "valid_seen")]
    # the store dtype: the three stores only
    changed = write_config(tmp_path / "changed.yaml", store_dtype="uint8")
    assert planned_jobs(snakemake(tmp_path, changed, "-n")) == [
        ("preprocess", "train"), ("preprocess", "valid_seen"), ("preprocess", "valid_unseen"), ("storage_plan", "")]
