"""Times the three pipeline goals on this machine, in one run, from a fresh clone:
the dry run of the default plan (goal <= 5 s), the default main job
(`snakemake --cores 4 reports/summary.html`, goal <= 10 min) and a no-op rerun (goal <= 5 s).

    python benchmarks/bench_pipeline.py            # clones HEAD into a temporary folder
    python benchmarks/bench_pipeline.py --here     # uses this checkout (outputs must be absent)
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout + done.stderr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--here", action="store_true", help="run in this checkout instead of a fresh clone")
    args = parser.parse_args()
    if args.here:
        workdir = REPO
    else:
        workdir = Path(tempfile.mkdtemp(prefix="alfred-edge-bench-")) / "p"
        subprocess.run(["git", "clone", "-q", str(REPO), str(workdir)], check=True)
    target = "reports/summary.html"
    dry, _ = timed(["snakemake", "-n", target], workdir)
    full, _ = timed(["snakemake", "--cores", "4", target], workdir)
    noop, out = timed(["snakemake", "--cores", "4", target], workdir)
    nothing = "Nothing to be done" in out
    print(f"workdir: {workdir}")
    print(f"dry run of the default plan : {dry:7.1f} s   (goal <= 5 s)")
    print(f"default main job            : {full:7.1f} s   (goal <= 600 s)")
    print(f"no-op rerun                 : {noop:7.1f} s   (goal <= 5 s; 'Nothing to be done': {nothing})")


if __name__ == "__main__":
    main()
