"""The results schema (workflow/schemas/results.schema.yaml): column names, types and units of
the benchmark tables, the path pattern of each table's files, and the Arrow tables built
from it. The file is written in JSON syntax (valid YAML) so that the standalone runner needs
only the standard library to read it, and pyarrow is imported only to build a table, so
that the workflow reads the paths when it parses at no cost."""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pyarrow as pa

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "results.schema.yaml"
STATUSES = ("ok", "oom", "oom_killed", "timeout", "error", "skipped")

# A benchmark file holds a row or a few, and the aggregation parses thousands of them:
# dictionary pages and column statistics tell a reader nothing at that size and only
# lengthen each parse. Nor is the Arrow schema stored: Parquet's own types read back as the
# same Arrow types, and the units and descriptions it carried are in the schema file (and
# in results.parquet), so a copy in every file would be bytes to write and parse for nothing.
PARQUET_OPTIONS = {"use_dictionary": False, "write_statistics": False, "store_schema": False}


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    unit: str | None
    description: str


@lru_cache(maxsize=None)
def load_schema(path: str = str(SCHEMA_PATH)) -> dict:
    with open(path) as stream:
        return json.load(stream)


def schema_version() -> int:
    return load_schema()["version"]


def columns(table: str) -> list[Column]:
    """Every column of `table`: the shared ones first, then the table's own."""
    doc = load_schema()
    if table not in doc["tables"]:
        raise KeyError(f"no table {table!r} in {SCHEMA_PATH} (tables: {', '.join(doc['tables'])})")
    return [Column(**c) for c in doc["shared_columns"] + doc["tables"][table]["columns"]]


def path_pattern(table: str) -> str:
    """Where the files of `table` go, relative to the repository root, with the fields the
    rows key them by: reports/bench/{host}/cells/{model}/{variant}/{device}/{features}/b{batch}.parquet"""
    return load_schema()["tables"][table]["path"]


def arrow_schema(table: str) -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<float64>": pa.list_(pa.float64()), "list<int64>": pa.list_(pa.int64())}
    fields = []
    for col in columns(table):
        metadata = {"unit": col.unit or "", "description": col.description}
        fields.append(pa.field(col.name, types[col.type], nullable=True, metadata=metadata))
    return pa.schema(fields, metadata={"table": table, "schema_version": str(schema_version())})


def to_arrow(table: str, rows: list[dict]) -> pa.Table:
    """Rows (dicts) → an Arrow table with exactly the schema's columns; a missing key is null.
    A key the schema does not know, or a status outside STATUSES, is an error: a typo must not
    silently become an empty column."""
    import pyarrow as pa

    schema = arrow_schema(table)
    known = set(schema.names)
    for row in rows:
        unknown = sorted(set(row) - known)
        if unknown:
            raise KeyError(f"columns not in the {table!r} table of {SCHEMA_PATH.name}: {unknown}")
        if row.get("status") not in STATUSES:
            raise ValueError(f"status {row.get('status')!r} is not one of {STATUSES}")
    data = {name: [row.get(name) for row in rows] for name in schema.names}
    return pa.Table.from_pydict(data, schema=schema)
