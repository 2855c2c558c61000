"""Issue 21's fixed cost of a benchmark cell: where a cell's seconds go before its timed loop.
Every cell is a fresh process (bench/child.py), which starts Python, imports torch and the
measuring code, then the model's module (the transformer's imports transformers' BART
modules) and loads the model file. Each stage is timed as its own fresh process, the stages
taking turns round after round; prints the median wall time of each and the increments.

    python benchmarks/cell_fixed_cost.py [--rounds 5]
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from host_load import host_load

STAGES = {
    "python": "pass",
    "+ torch": "import torch",
    "+ measuring code": "import torch, alfred_edge.bench.child",
    "+ lstm module": "import torch, alfred_edge.bench.child, alfred_edge.models.lstm",
    "+ transformer module": "import torch, alfred_edge.bench.child, alfred_edge.models.transformer",
}


def wall(code: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(host_load(), "(before)")
    times = {stage: [] for stage in STAGES}
    for _ in range(args.rounds):
        for stage, code in STAGES.items():
            times[stage].append(wall(code))
    medians = {stage: statistics.median(t) for stage, t in times.items()}
    base = medians["+ measuring code"]
    for stage, median in medians.items():
        extra = f"   ({median - base:+.2f} s over the measuring code)" if "module" in stage else ""
        print(f"{stage:<22} {median:6.2f} s median of {args.rounds}{extra}")
    print(host_load(), "(after)")


if __name__ == "__main__":
    main()
