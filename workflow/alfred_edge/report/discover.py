"""Finding benchmark files on disk: cheap (pathlib only), so the workflow calls it at parse
time to pick up files copied in from other hosts."""
from __future__ import annotations

from pathlib import Path

# Sub-folder of reports/bench/<host>/ per benchmark table (the paths in results.schema.yaml).
TABLE_FOLDERS = {"cells": "cells", "capacity": "capacity", "roofline": "roofline"}


def bench_files(bench_dir: str | Path, table: str = "cells") -> list[Path]:
    """Every Parquet of one benchmark table under bench_dir/<host>/<table folder>/, without the
    hidden temporary files that atomic writes leave while a job is still running."""
    bench_dir = Path(bench_dir)
    return sorted(
        path
        for path in bench_dir.glob(f"*/{TABLE_FOLDERS[table]}/**/*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(bench_dir).parts)
    )


def host_of(path: str | Path, bench_dir: str | Path) -> str:
    """The host folder a benchmark file lies in."""
    return Path(path).relative_to(bench_dir).parts[0]

