"""Goals: the dry run of the default plan (`snakemake -n`) in ≤ 5 s, the default main job
(`snakemake --cores 4 reports/summary.html`) in ≤ 10 min and a no-op rerun in ≤ 5 s on the
2-core development machine, timed in one run from a fresh clone.

    python benchmarks/pipeline_time.py                  # clones HEAD into a temporary folder
    python benchmarks/pipeline_time.py --here           # uses this checkout (outputs must be absent)
    python benchmarks/pipeline_time.py --dry-run-only   # quick form: the dry run alone
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

from host_load import host_load

REPO = Path(__file__).resolve().parents[1]
TARGET = "reports/summary.html"


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def rule_totals(log: str) -> dict[str, tuple[int, float]]:
    """{rule: (jobs, seconds summed over its jobs)} from Snakemake's log of a run: a job's
    seconds run from the timestamp above its "rule NAME:" block to the one above its
    "Finished jobid" line (whole seconds: Snakemake's timestamps have no finer grain)."""
    stamp = r"\[(\w{3} \w{3} +\d+ [\d:]+ \d{4})\]\n"
    when = lambda text: datetime.strptime(re.sub(" +", " ", text), "%a %b %d %H:%M:%S %Y")  # noqa: E731
    started = {job: when(t) for t, job in re.findall(stamp + r"(?:local)?rule \w+:\n(?:.*\n)*?\s+jobid: (\d+)", log)}
    totals = defaultdict(lambda: [0, 0.0])
    for t, job, rule in re.findall(stamp + r"Finished jobid: (\d+) \(Rule: (\w+)\)", log):
        totals[rule][0] += 1
        totals[rule][1] += (when(t) - started[job]).total_seconds()
    return {rule: tuple(v) for rule, v in sorted(totals.items(), key=lambda item: -item[1][1])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--here", action="store_true", help="run in this checkout instead of a fresh clone")
    parser.add_argument("--dry-run-only", action="store_true", help="time the dry run alone")
    args = parser.parse_args()
    if args.here:
        workdir = REPO
    else:
        workdir = Path(tempfile.mkdtemp(prefix="alfred-edge-bench-")) / "p"
        subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    print(f"workdir: {workdir}")
    print(f"{host_load()} (before the run)")
    dry, _ = timed(["snakemake", "-n", TARGET], workdir)
    print(f"dry run of the default plan : {dry:7.1f} s   (goal <= 5 s)", flush=True)
    if not args.dry_run_only:
        full, log = timed(["snakemake", "--cores", "4", TARGET], workdir)
        print(f"default main job            : {full:7.1f} s   (goal <= 600 s)", flush=True)
        print(f"{host_load()} (after the main job)")
        for rule, (jobs, seconds) in rule_totals(log).items():
            print(f"    {rule:<16} {jobs:3d} jobs {seconds:7.0f} s summed ({seconds / jobs:5.1f} s a job)")
        noop, out = timed(["snakemake", "--cores", "4", TARGET], workdir)
        print(f"no-op rerun                 : {noop:7.1f} s   (goal <= 5 s; 'Nothing to be done': "
              f"{'Nothing to be done' in out})")
    print(f"{host_load()} (after the run)")


if __name__ == "__main__":
    main()
