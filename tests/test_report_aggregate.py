"""Aggregation of benchmark files from several hosts into reports/results.parquet."""
from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alfred_edge.report import aggregate, discover
from alfred_edge.report import synthetic as fx


@pytest.fixture(scope="module")
def two_hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("aggregate")
    bench = root / "reports" / "bench"
    cells = fx.write_host(bench, fx.LAPTOP) + fx.write_host(bench, fx.JETSON, seed=1)
    evals, *_ = fx.write_model_tables(root / "models")
    return bench, evals, cells


def test_one_row_per_cell_with_the_documented_columns(two_hosts):
    bench, evals, count = two_hosts
    files = discover.bench_files(bench)
    table = aggregate.aggregate(files, bench, evals)
    assert table.schema.equals(aggregate.results_schema(), check_metadata=False)
    rows = table.to_pandas()
    assert len(files) == count == len(rows) == 3 * 2 * len(fx.LAPTOP.variants) * 4  # devices × models × variants × batches
    assert not rows.duplicated(aggregate.key_columns()).any()
    assert set(rows["host"]) == {fx.LAPTOP.name, fx.JETSON.name}
    assert "latencies_ms" not in rows and "settings_json" not in rows
    # Failures are rows with their message; the accuracy of each variant is joined in.
    oom = rows[rows["status"] == "oom"]
    assert len(oom) == 2 and (oom["error"] == fx.EVIL_ERROR).all()
    assert (rows["status"] == "skipped").sum() == 8
    lstm_fp32 = rows[(rows["model"] == "lstm") & (rows["variant"] == "fp32")]
    assert np.allclose(lstm_fp32["accuracy_valid_seen"], 0.93)
    assert np.allclose(lstm_fp32["accuracy_valid_unseen"], 0.88)
    assert rows["source_file"].str.match(r"^(laptop|orin)/cells/.*\.parquet$").all()


def test_the_newest_row_of_a_repeated_cell_wins(tmp_path):
    bench = tmp_path / "bench"
    host = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32",), batches=(1,))
    fx.write_host(bench, host)
    rng = np.random.default_rng(3)
    later = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)
    rerun = fx.cell_row(host, "cpu", "lstm", "fp32", 1, rng, later) | {"latency_p50_ms": 123.0}
    fx.write("cells", rerun, bench / "laptop" / "cells" / "copy" / "b1.parquet")
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas()
    assert len(rows) == 1
    assert rows["latency_p50_ms"].iloc[0] == 123.0
    assert rows["source_file"].iloc[0] == "laptop/cells/copy/b1.parquet"


def test_a_damaged_file_becomes_an_error_row_naming_it(tmp_path):
    bench = tmp_path / "bench"
    host = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32",), batches=(1, 2))
    fx.write_host(bench, host)
    damaged = bench / "board" / "cells" / "lstm" / "fp32" / "cpu" / "mmap" / "b1.parquet"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"PAR1 truncated")
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas()
    error = rows[rows["host"] == "board"]
    assert len(error) == 1 and error["status"].iloc[0] == "error"
    assert "board/cells/lstm/fp32/cpu/mmap/b1.parquet" in error["error"].iloc[0]
    assert (rows[rows["host"] == "laptop"]["status"] == "ok").all()


def test_an_older_harness_file_gets_nulls_and_unknown_columns_are_dropped(tmp_path):
    bench = tmp_path / "bench"
    path = bench / "old-board" / "cells" / "b1.parquet"
    path.parent.mkdir(parents=True)
    pq.write_table(pa.table({"host": ["old-board"], "device": ["cpu"], "model": ["lstm"], "variant": ["fp32"],
                             "batch_size": [1], "status": ["ok"], "latency_p50_ms": [900.0],
                             "a_future_column": ["x"], "source_file": ["elsewhere.parquet"]}), path)
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas()
    assert rows["latency_p50_ms"].iloc[0] == 900.0
    assert rows["source_file"].iloc[0] == "old-board/cells/b1.parquet"  # the path it was read from
    assert rows["peak_rss_mb"].isna().all() and "a_future_column" not in rows


def test_columns_of_another_type_are_cast_and_a_file_whose_columns_do_not_cast_is_an_error_row(tmp_path):
    bench = tmp_path / "bench"
    key = {"device": ["cpu"], "model": ["lstm"], "variant": ["fp32"], "status": ["ok"]}
    for host, batch, latency in (("ints", 1, [900]), ("foreign", 2, ["fast"])):
        path = bench / host / "cells" / f"b{batch}.parquet"
        path.parent.mkdir(parents=True)
        pq.write_table(pa.table({**key, "batch_size": [batch], "latency_p50_ms": latency}), path)
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas().set_index("host")
    assert rows.loc["ints", "latency_p50_ms"] == 900.0 and rows.loc["ints", "status"] == "ok"
    assert rows.loc["foreign", "status"] == "error"
    assert "foreign/cells/b2.parquet" in rows.loc["foreign", "error"]


def test_discovery_skips_the_temporary_files_of_unfinished_writes(tmp_path):
    cells = tmp_path / "host" / "cells" / "lstm"
    cells.mkdir(parents=True)
    (cells / "b1.parquet").write_bytes(b"")
    (cells / ".b2.parquet.tmp-abc.parquet").write_bytes(b"")
    (tmp_path / "host" / "capacity").mkdir()
    (tmp_path / "host" / "capacity" / "lstm.parquet").write_bytes(b"")
    assert [p.name for p in discover.bench_files(tmp_path)] == ["b1.parquet"]
    assert [p.name for p in discover.bench_files(tmp_path, "capacity")] == ["lstm.parquet"]


def test_the_cache_gives_the_same_table_and_follows_changed_and_removed_files(tmp_path):
    bench, cache = tmp_path / "bench", tmp_path / "cache" / "cells.parquet"
    host = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32", "int8_dynamic"), batches=(1, 2))
    fx.write_host(bench, host)
    files = discover.bench_files(bench)
    fresh = aggregate.aggregate(files, bench)
    assert aggregate.aggregate(files, bench, cache_path=cache).equals(fresh)
    assert cache.exists()
    assert aggregate.aggregate(files, bench, cache_path=cache).equals(fresh)  # served from the cache
    # A file rewritten with new content is read again; a removed file leaves the table.
    changed = fx.cell_row(host, "cpu", "lstm", "fp32", 1, np.random.default_rng(9),
                          dt.datetime(2026, 11, 28, 10, tzinfo=dt.timezone.utc)) | {"latency_p50_ms": 77.0}
    fx.write("cells", changed, files[0])
    files[-1].unlink()
    rows = aggregate.aggregate(discover.bench_files(bench), bench, cache_path=cache).to_pandas()
    assert len(rows) == len(files) - 1
    assert 77.0 in set(rows["latency_p50_ms"])
    # A damaged cache is ignored.
    cache.write_bytes(b"not parquet")
    assert aggregate.aggregate(discover.bench_files(bench), bench, cache_path=cache).num_rows == len(files) - 1


def test_the_cache_parses_only_the_files_written_since_it_was_made(tmp_path, monkeypatch):
    bench, cache = tmp_path / "bench", tmp_path / "cache" / "cells.parquet"
    host = dataclasses.replace(fx.LAPTOP, models=("lstm",), variants=("fp32", "int8_dynamic"), batches=(1, 2))
    fx.write_host(bench, host)
    files = discover.bench_files(bench)
    parsed = []
    scan = aggregate.scan_files
    monkeypatch.setattr(aggregate, "scan_files", lambda paths, *args: parsed.extend(paths) or scan(paths, *args))
    aggregate.aggregate(files, bench, cache_path=cache)
    assert parsed == files
    parsed.clear()
    aggregate.aggregate(files, bench, cache_path=cache)
    assert parsed == []
    # Rewritten with the same bytes and given back its old modification time (as `cp -p` or
    # rsync would): the change time still tells, so it is parsed again; the others are not.
    before = files[1].stat()
    files[1].write_bytes(files[1].read_bytes())
    os.utime(files[1], ns=(before.st_atime_ns, before.st_mtime_ns))
    aggregate.aggregate(files, bench, cache_path=cache)
    assert parsed == [files[1]]


def test_the_scan_of_many_files_gives_the_rows_that_reading_them_one_by_one_gives(two_hosts):
    bench, _, _ = two_hosts
    files, schema = discover.bench_files(bench), aggregate.results_schema()
    one_by_one = pa.concat_tables([aggregate.read_file(path, schema, bench) for path in files])
    scanned = pa.concat_tables(aggregate.scan_files(files, schema, bench))
    assert scanned.num_rows == len(files)
    assert scanned.select(one_by_one.column_names).equals(one_by_one)


def test_a_damaged_file_among_many_is_read_alone_and_the_others_in_bulk(two_hosts, tmp_path, monkeypatch):
    bench = tmp_path / "bench"
    shutil.copytree(two_hosts[0], bench)
    files = discover.bench_files(bench)
    good = aggregate.aggregate(files, bench).to_pandas()
    damaged = files[len(files) // 3].with_name("damaged.parquet")
    damaged.write_bytes(b"PAR1 truncated")
    read_alone = []
    read_file = aggregate.read_file
    monkeypatch.setattr(aggregate, "read_file", lambda path, *args: read_alone.append(path) or read_file(path, *args))
    rows = aggregate.aggregate(discover.bench_files(bench), bench).to_pandas()
    assert read_alone == [damaged]
    is_damaged = rows["source_file"] == str(damaged.relative_to(bench))
    assert is_damaged.sum() == 1 and rows[is_damaged]["status"].item() == "error"
    pd.testing.assert_frame_equal(rows[~is_damaged].reset_index(drop=True), good)


def test_each_cell_gets_the_accuracy_of_its_own_backends_eval_table(tmp_path):
    """int8_dynamic's eager and onnxruntime builds are evaluated apart: each cell joins its own
    backend's table; a cell file without a backend (an older board's) is eager's."""
    bench, models = tmp_path / "bench", tmp_path / "models" / "lstm"
    models.mkdir(parents=True)
    for name, accuracy in (("int8_dynamic.eval.parquet", 0.9), ("int8_dynamic.onnxruntime.eval.parquet", 0.8)):
        pd.DataFrame({"accuracy_valid_seen": [accuracy]}).to_parquet(models / name)
    for host, backend in (("a", "eager"), ("b", "onnxruntime"), ("old", None)):
        path = bench / host / "cells" / "b1.parquet"
        path.parent.mkdir(parents=True)
        columns = {"host": [host], "device": ["cpu"], "model": ["lstm"], "variant": ["int8_dynamic"],
                   "batch_size": [1], "status": ["ok"], **({"backend": [backend]} if backend else {})}
        pq.write_table(pa.table(columns), path)
    rows = aggregate.aggregate(discover.bench_files(bench), bench, sorted(models.glob("*.eval.parquet")))
    accuracy = rows.to_pandas().set_index("host")["accuracy_valid_seen"]
    assert accuracy.to_dict() == {"a": 0.9, "b": 0.8, "old": 0.9}
