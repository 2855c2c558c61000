"""Goals: the dry run of the default plan (`snakemake -n`) in ≤ 5 s, the default main job
(`snakemake --cores 4 reports/summary.html`) in ≤ 10 min and a no-op rerun in ≤ 5 s on the
2-core development machine, timed in one run from a fresh clone.

    python benchmarks/pipeline_time.py                  # clones HEAD into a temporary folder
    python benchmarks/pipeline_time.py --here           # uses this checkout (outputs must be absent)
    python benchmarks/pipeline_time.py --dry-run-only   # quick form: the dry run alone
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
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
        full, _ = timed(["snakemake", "--cores", "4", TARGET], workdir)
        print(f"default main job            : {full:7.1f} s   (goal <= 600 s)", flush=True)
        noop, out = timed(["snakemake", "--cores", "4", TARGET], workdir)
        print(f"no-op rerun                 : {noop:7.1f} s   (goal <= 5 s; 'Nothing to be done': "
              f"{'Nothing to be done' in out})")
    print(f"{host_load()} (after the run)")


if __name__ == "__main__":
    main()
