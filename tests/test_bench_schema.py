"""The results schema: every column has a type and a unit, rows map onto it, typos are caught."""
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from alfred_edge.bench import schema


def test_schema_file_is_valid_yaml_and_json_alike():
    as_yaml = yaml.safe_load(schema.SCHEMA_PATH.read_text())
    assert as_yaml == schema.load_schema()


@pytest.mark.parametrize("table", ["cells", "roofline", "capacity"])
def test_columns_are_unique_typed_and_units_match_suffixes(table):
    cols = schema.columns(table)
    names = [c.name for c in cols]
    assert len(names) == len(set(names))
    suffix_units = {"_ms": "ms", "_mb": "MB", "_s": "s", "_w": "W", "_j": "J", "_gbps": "GB/s", "_gflops": "GFLOP/s"}
    for col in cols:
        if col.name.endswith("_per_s"):
            assert col.unit.endswith("/s"), col
            continue
        for suffix, unit in suffix_units.items():
            if col.name.endswith(suffix):
                assert col.unit is not None and col.unit.startswith(unit), col


def test_rows_fill_missing_columns_with_null_and_reject_unknown_ones():
    table = schema.to_arrow("cells", [{"status": "skipped", "error": "no cuda", "batch_size": 2}])
    assert isinstance(table, pa.Table)
    assert table.column("batch_size").to_pylist() == [2]
    assert table.column("latency_p50_ms").to_pylist() == [None]
    assert table.schema.field("latency_p50_ms").metadata[b"unit"] == b"ms"
    with pytest.raises(KeyError, match="latency_p50"):
        schema.to_arrow("cells", [{"status": "ok", "latency_p50": 1.0}])
    with pytest.raises(ValueError, match="status"):
        schema.to_arrow("cells", [{"status": "fine"}])


def test_a_file_written_with_the_parquet_options_reads_back_in_the_schemas_types(tmp_path):
    """The files store no Arrow schema: Parquet's own types must give back every column's type."""
    row = {"status": "ok", "host": "h", "batch_size": 2, "latency_p50_ms": 1.5, "leak_flag": True,
           "latencies_ms": [1.0, 2.0]}
    table = schema.to_arrow("cells", [row])
    pq.write_table(table, tmp_path / "b2.parquet", **schema.PARQUET_OPTIONS)
    back = pq.read_table(tmp_path / "b2.parquet")
    assert back.schema.equals(schema.arrow_schema("cells"), check_metadata=False)
    assert back.to_pylist() == table.to_pylist()
