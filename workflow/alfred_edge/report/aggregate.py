"""Aggregation: every benchmark file under reports/bench/<host>/ (this host's and any copied
in from other hosts) plus the quantization tables → reports/results.parquet, one row per
cell in the columns of workflow/schemas/results_table.schema.yaml, and
reports/capacity.parquet, every host's capacity rows."""
from __future__ import annotations

import json
import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alfred_edge.atomic import write_parquet
from alfred_edge.bench import schema as bench_schema
from alfred_edge.report import discover, inputs
from alfred_edge.report.tables import DEFAULT_BACKEND

log = logging.getLogger("alfred_edge.report")

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "results_table.schema.yaml"
ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_()}


@lru_cache(maxsize=1)
def table_doc() -> dict:
    return json.loads(SCHEMA_PATH.read_text())


def key_columns() -> list[str]:
    return list(table_doc()["key"])


@lru_cache(maxsize=1)
def results_schema() -> pa.Schema:
    """The Arrow schema of reports/results.parquet: the benchmark's cells columns without
    the dropped ones, then the added ones (units and descriptions as field metadata)."""
    doc = table_doc()
    dropped = {column["name"] for column in doc["dropped_columns"]}
    fields = [field for field in bench_schema.arrow_schema("cells") if field.name not in dropped]
    for column in doc["added_columns"]:
        metadata = {"unit": column["unit"] or "", "description": column["description"]}
        fields.append(pa.field(column["name"], ARROW_TYPES[column["type"]], metadata=metadata))
    return pa.schema(fields, metadata={"table": "results", "schema_version": str(doc["version"])})


FOLDER_HOST = "_folder_host"
SOURCE_PATH = "_source_path"  # the path a row was read from, until source_file and FOLDER_HOST replace it
CACHE_KEY = "_file_key"  # the cache's column of file_key()
ADDED_PER_FILE = {"source_file", FOLDER_HOST, CACHE_KEY}  # never read from a file: added for where it lies


def readable_columns(schema: pa.Schema) -> pa.Schema:
    """The columns of `schema` that a benchmark file may give: all but ADDED_PER_FILE."""
    return pa.schema([field for field in schema if field.name not in ADDED_PER_FILE])


def scan_files(files: list[Path], schema: pa.Schema, bench_dir: Path) -> list[pa.Table]:
    """The files' rows in order, each table in the columns of `schema` (but ADDED_PER_FILE)
    that its files have, plus SOURCE_PATH. One polars scan reads thousands of small files in
    a few threads, where pyarrow would read them one by one, but fails as a whole on one
    damaged or foreign file: the files are then halved until each failing file is read alone
    by read_file."""
    if not files:
        return []
    readable = readable_columns(schema)
    # polars advises the kernel (madvise WILLNEED) of each column chunk it will read: system
    # calls that buy nothing for files of a few KB, which are read whole anyway.
    os.environ.setdefault("POLARS_MEMORY_PREFETCH", "no_prefetch")  # read at the first scan
    try:
        frame = pl.scan_parquet(
            [str(path) for path in files], schema=pl.from_arrow(readable.empty_table()).schema,
            missing_columns="insert", extra_columns="ignore", include_file_paths=SOURCE_PATH,
            glob=False, hive_partitioning=False,  # host folders may hold [ * = ]
        ).collect(engine="streaming")  # less CPU than the in-memory engine for many small files
        # A chunk per file: polars joins them in its threads, not to_arrow in this one.
        return [frame.rechunk().to_arrow().cast(readable.append(pa.field(SOURCE_PATH, pa.string())))]
    except Exception:  # polars raises several types for a damaged or foreign file
        if len(files) == 1:
            return [read_file(files[0], schema, bench_dir)]
        half = len(files) // 2
        return scan_files(files[:half], schema, bench_dir) + scan_files(files[half:], schema, bench_dir)


def read_file(path: Path, schema: pa.Schema, bench_dir: Path) -> pa.Table:
    """One file's columns that `schema` has (but ADDED_PER_FILE), cast to its types (an older
    harness's int32, say), plus SOURCE_PATH; a file that cannot be read, or whose columns do
    not cast (a foreign file), becomes one `error` row naming it, so the report shows it."""
    try:
        table = pq.read_table(path)
        readable = readable_columns(schema)
        kept = [name for name in table.column_names if name in readable.names]
        table = table.select(kept).cast(pa.schema([readable.field(name) for name in kept]))
    except Exception as exc:  # pyarrow raises several types for a damaged or foreign file
        log.warning("could not read %s: %s", path, exc)
        message = f"could not read benchmark file {path.relative_to(bench_dir)}: {exc}"
        table = pa.table({"status": ["error"], "error": [message]})
    return table.append_column(SOURCE_PATH, pa.array([str(path)] * table.num_rows, pa.string()))


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows read from files (columns in the schema's types, FOLDER_HOST added) in the columns
    of `schema`: columns no file has are null, a missing host is its folder's."""
    columns = []
    for field in schema:
        if field.name == "host" and "host" in table.column_names:
            columns.append(pc.coalesce(table["host"], table[FOLDER_HOST]))
        elif field.name == "host":
            columns.append(table[FOLDER_HOST])
        elif field.name in table.column_names:
            columns.append(table[field.name])
        else:
            columns.append(pa.nulls(table.num_rows, field.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_tables(files: Iterable[str | Path], bench_dir: str | Path, schema: pa.Schema,
                cache_path: str | Path | None = None) -> pa.Table:
    """Every file conformed to `schema`. With cache_path, a file whose file_key() is that of a
    file read in an earlier run is taken from that cache instead of being parsed again (a
    stat instead of a parse per file), and the cache is rewritten with the rows of exactly
    these files."""
    bench_dir = Path(bench_dir)
    files = [Path(path) for path in files]
    if cache_path is None:
        return parse_files(files, bench_dir, schema)
    cache = read_cache(cache_path, schema)
    rows_of = {}  # key -> row indices in the cache (a file may hold several rows)
    for index, key in enumerate(cache[CACHE_KEY].to_pylist()):
        rows_of.setdefault(key, []).append(index)
    cached_rows, new_files, new_keys = [], [], []
    for path in files:
        key = file_key(path)
        if key in rows_of:
            cached_rows += rows_of[key]
        else:
            new_files.append(path)
            new_keys.append(key)
    parsed = parse_files(new_files, bench_dir, schema, new_keys)
    reused = cache.take(pa.array(cached_rows, pa.int64()))  # one take: per-file takes cost more than parsing
    combined = pa.concat_tables([reused, parsed]).combine_chunks()
    write_parquet(combined, cache_path)
    return combined.drop_columns([CACHE_KEY])


def file_key(path: Path) -> str:
    """What tells, without reading it, that a file is the one read before (as git's index
    does): its path, size, inode, and modification and change times. A write changes both
    times, and the change time cannot be set back (a copy that keeps the modification time
    still gets a new one); an atomic replace also brings a new inode. Hashing the bytes
    instead would read every file on every run, on a board's SD card too."""
    stat = path.stat()
    return f"{path}|{stat.st_size}|{stat.st_ino}|{stat.st_mtime_ns}|{stat.st_ctime_ns}"


def parse_files(files: list[Path], bench_dir: Path, schema: pa.Schema, keys: list[str] | None = None) -> pa.Table:
    """The files conformed to `schema` in order, with a CACHE_KEY column when keys are
    given: the per-file columns (source_file, FOLDER_HOST, key) looked up by SOURCE_PATH."""
    if keys is not None:
        schema = schema.append(pa.field(CACHE_KEY, pa.string()))
    tables = scan_files(files, schema, bench_dir)
    if not tables:
        return schema.empty_table()
    table = pa.concat_tables(tables, promote_options="default")  # a lone file's table has fewer columns
    per_file = {"source_file": [str(path.relative_to(bench_dir)) for path in files],
                FOLDER_HOST: [discover.host_of(path, bench_dir) for path in files]}
    if keys is not None:
        per_file[CACHE_KEY] = keys
    index_of = {str(path): index for index, path in enumerate(files)}
    file_of_row = pa.array([index_of[source] for source in table[SOURCE_PATH].to_pylist()], pa.int64())
    for name, values in per_file.items():
        table = table.append_column(name, pa.array(values, pa.string()).take(file_of_row))
    return conform(table, schema).combine_chunks()


def read_cache(cache_path: str | Path, schema: pa.Schema) -> pa.Table:
    """The cache of an earlier run; empty when it is absent, damaged or of another schema."""
    expected = schema.append(pa.field(CACHE_KEY, pa.string()))
    try:
        cache = pq.read_table(cache_path)
        if cache.schema.equals(expected, check_metadata=False):
            return cache
        log.info("cache %s has another schema: ignored", cache_path)
    except FileNotFoundError:
        pass
    except Exception as exc:
        log.warning("cache %s unreadable, ignored: %s", cache_path, exc)
    return expected.empty_table()


ACCURACY_KEY = ["model", "variant", "backend"]


def read_accuracy(eval_files: Iterable[str | Path]) -> pd.DataFrame:
    """(model, variant, backend) → teacher-forced action accuracy on valid_seen and
    valid_unseen, from models/<model>/<variant>[.<backend>].eval.parquet (the key from the path)."""
    rows = [dict(zip(ACCURACY_KEY, inputs.eval_key(path)), **inputs.accuracy_by_split(path))
            for path in map(Path, eval_files)]
    return pd.DataFrame(rows, columns=[*ACCURACY_KEY, "accuracy_valid_seen", "accuracy_valid_unseen"])


def newest_per_cell(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per key: the newest (by ts_utc, then by file path) where a cell repeats."""
    ordered = cells.sort_values(["ts_utc", "source_file"], na_position="first", kind="stable")
    newest = ordered.drop_duplicates(key_columns(), keep="last")
    return newest.sort_values(key_columns(), kind="stable", na_position="last").reset_index(drop=True)


def aggregate(cell_files, bench_dir, eval_files=(), cache_path=None) -> pa.Table:
    """The results table (Arrow, results_schema()) from cell files and quantization tables
    (cache_path: see read_tables)."""
    schema = results_schema()
    cells = read_tables(cell_files, bench_dir, schema, cache_path).to_pandas(types_mapper=nullable_type)
    accuracy = read_accuracy(eval_files)
    if not accuracy.empty and not cells.empty:
        # a cell file written before backends were recorded is eager's
        key = cells[ACCURACY_KEY].astype("string").fillna({"backend": DEFAULT_BACKEND})
        joined = cells.drop(columns=list(accuracy.columns[3:])).join(
            key.merge(accuracy.astype({c: "string" for c in ACCURACY_KEY}), on=ACCURACY_KEY, how="left")
            .drop(columns=ACCURACY_KEY).set_axis(cells.index))
        cells = joined[schema.names]
    cells = newest_per_cell(cells)
    return pa.Table.from_pandas(cells, schema=schema, preserve_index=False)


def aggregate_capacity(capacity_files, bench_dir) -> pa.Table:
    return read_tables(capacity_files, bench_dir, bench_schema.arrow_schema("capacity"))


def nullable_type(arrow_type: pa.DataType):
    """Pandas' nullable dtypes for integers, booleans and strings, so nulls stay nulls."""
    return {
        pa.int64(): pd.Int64Dtype(),
        pa.bool_(): pd.BooleanDtype(),
        pa.string(): pd.StringDtype(),
    }.get(arrow_type)


def read_results(path: str | Path) -> pd.DataFrame:
    """reports/results.parquet as a DataFrame with nullable dtypes."""
    return pq.read_table(path).to_pandas(types_mapper=nullable_type)
