"""Goal: `.ci/run` (the README's test command: install, then the whole test suite) in
≤ 20 min on the 2-core development machine, from a fresh clone in a folder with nothing
beside it (no ../shared), as a user or CI gets it.

    python benchmarks/ci_time.py                                     # the whole suite
    python benchmarks/ci_time.py --tests tests/test_bench_schema.py  # quick form: only these tests

The clone gets a virtual environment of its own that sees this machine's installed packages
(--system-site-packages), so that .ci/run's `pip install -e` installs the clone there and
leaves this checkout's installation alone, while pip finds everything else already installed.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from host_load import host_load

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tests", nargs="+", help="run only these test files or node ids (PYTEST_ADDOPTS)")
    args = parser.parse_args()
    clone = Path(tempfile.mkdtemp(prefix="alfred-edge-ci-")) / "p"
    venv = Path(tempfile.mkdtemp(prefix="alfred-edge-ci-venv-"))
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = {**os.environ, "VIRTUAL_ENV": str(venv), "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    if args.tests:
        env["PYTEST_ADDOPTS"] = " ".join(args.tests)
    print(f"{host_load()} (before the run)", flush=True)
    start = time.perf_counter()
    done = subprocess.run([".ci/run"], cwd=clone, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    summary = [line for line in output.splitlines() if re.match(r"=+ .* in [\d.]+s", line)]
    if done.returncode or not summary:
        print(output[-5000:])
    print(f"pytest: {summary[-1] if summary else '(no summary line)'}")
    print(f".ci/run{' (' + ' '.join(args.tests) + ' only)' if args.tests else ''}: {seconds:7.1f} s, exit "
          f"status {done.returncode}   (goal <= 1200 s for the whole suite)")
    print(f"{host_load()} (after the run)")
    shutil.rmtree(clone.parent, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
