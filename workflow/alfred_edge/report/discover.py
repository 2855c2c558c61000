"""Finding benchmark files on disk: cheap (pathlib, and the schema for where each table goes),
so the workflow calls it at parse time to pick up files copied in from other hosts."""
from __future__ import annotations

from pathlib import Path

from alfred_edge.bench import schema


def bench_files(bench_dir: str | Path, table: str = "cells") -> list[Path]:
    """Every Parquet of one benchmark table under bench_dir/<host>/<table folder>/, without the
    hidden temporary files that atomic writes leave while a job is still running."""
    bench_dir = Path(bench_dir)
    return sorted(
        path
        for path in bench_dir.glob(f"*/{table_folder(table)}/**/*.parquet")
        if not any(part.startswith(".") for part in path.relative_to(bench_dir).parts)
    )


def table_folder(table: str) -> str:
    """The folder of a table's files in reports/bench/<host>/, from its path in results.schema.yaml."""
    return schema.path_pattern(table).split("{host}/", 1)[1].split("/", 1)[0]


def host_of(path: str | Path, bench_dir: str | Path) -> str:
    """The host folder a benchmark file lies in."""
    return Path(path).relative_to(bench_dir).parts[0]

