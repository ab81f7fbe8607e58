"""Parquet/Arrow batches are descriptors: the driver hands out (file, row range) read from the footers only, and a
worker reads and checks the rows itself. Counts are exact across row groups of uneven size and files shorter than a
batch, bad rows are dead-lettered with the same reasons as before, and the pipeline on real Ray counts every row
once with the payloads never passing through the driver."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from workers.sources import ParquetSource, open_source
from workers.sources.arrow_files import RowRange
from workers.sources.timestamps import EpochSeconds, timestamp_error


def _write_uneven(path, sizes, first_id=0, payload_bytes=64):
    """One Parquet file whose row groups have exactly ``sizes`` rows; ids ``first_id``.. in order."""
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("ts", pa.float64())])
    k = first_id
    with pq.ParquetWriter(path, schema) as writer:
        for n in sizes:
            ids = [f"r{k + j}" for j in range(n)]
            payloads = [bytes([(k + j) % 251]) * payload_bytes + str(k + j).encode() for j in range(n)]
            writer.write_table(pa.table({"id": ids, "image": payloads,
                                         "ts": 1_700_000_000.0 + np.arange(k, k + n, dtype=np.float64)},
                                        schema=schema))
            k += n
    return k


def test_descriptors_follow_uneven_row_groups_and_short_files_and_carry_no_payload(tmp_path):
    root = tmp_path / "files"
    root.mkdir()
    end = _write_uneven(root / "a.parquet", [5, 1, 13, 7], payload_bytes=4096)
    total = _write_uneven(root / "b.parquet", [3], first_id=end, payload_bytes=4096)  # shorter than a batch
    src = open_source(f"parquet://{root}?id_column=id&image_column=image&timestamp_column=ts")
    batches = []
    while (b := src.read(6, timeout_s=0)) is not None:
        batches.append(b)
    # cut at every row-group boundary, never across files, never above the batch size
    assert [len(b) for b in batches] == [5, 1, 6, 6, 1, 6, 1, 3]
    assert all(isinstance(b.work, RowRange) for b in batches)
    assert [b.seq for b in batches] == list(range(1, 9))
    # what the driver sends is the descriptor: a few hundred bytes whatever the payloads weigh
    assert max(len(pickle.dumps(b.payload())) for b in batches) < 1_000
    loaded = [b.work.load() for b in batches]
    ids = [i for batch in loaded for i in batch.columns.ids]
    assert ids == [f"r{i}" for i in range(total)]
    assert all(p == bytes([i % 251]) * 4096 + str(i).encode()
               for i, p in zip(range(total), (p for batch in loaded for p in batch.payloads)))
    assert np.array_equal(np.concatenate([b.columns.timestamps for b in loaded]),
                          1_700_000_000.0 + np.arange(total))
    assert all(not b.errors for b in loaded)
    for b in batches:
        src.ack(b)
    assert src.checkpoint() == {"file": 1, "row": 3}


def test_bad_rows_carry_the_same_reasons_and_details_as_a_row_by_row_check(tmp_path):
    ts = [1_700_000_000.0, float("nan"), None, 1e400, -5.0, 1_700_000_005_000.0, 1_700_000_006.0, 1_700_000_007.0]
    table = pa.table({
        "id": ["a", None, "c", "d", "e", "f", None, "h"],
        "image": [b"x", b"y", b"z", b"w", b"v", b"u", b"t", None],
        "ts": pa.array(ts, pa.float64()),
        "stamp": pa.array([1_700_000_000, None, 400_000_000_000, 1_700_000_003, 1_700_000_004, 1_700_000_005,
                           1_700_000_006, 1_700_000_007], pa.timestamp("s")),
    })
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path, row_group_size=3)
    for column in ("ts", "stamp"):
        src = ParquetSource(str(path), id_column="id", image_column="image", timestamp_column=column)
        items = [it for b in iter(lambda: src.read(8), None) for it in b.items]
        if column == "stamp":  # an Arrow timestamp is already in seconds: checked as such, never rescaled
            values = [None if v is None else EpochSeconds(float(v))
                      for v in table.column(column).cast(pa.int64()).to_pylist()]
        else:
            values = table.column(column).to_pylist()
        expected = {}
        for j in range(8):
            if j in (1, 6):
                expected[j] = ("bad_record", "id is null")  # the id is checked first
                continue
            err = timestamp_error(values[j], where=column)[1]
            if err is not None:
                expected[j] = err
            elif j == 7:
                expected[j] = ("bad_record", "image is null")
        assert {j: it.error for j, it in enumerate(items) if it.error is not None} == expected
        good = [j for j in range(8) if j not in expected]
        assert all(items[j].meta.id == table.column("id")[j].as_py() for j in good)
        assert [items[j].meta.id for j in (1, 6)] == ["bad.parquet#1", "bad.parquet#6"]
    assert items[5].error is None and items[5].meta.timestamp == 1_700_000_005.0


def test_a_checkpoint_skip_list_removes_exactly_those_rows(tmp_path):
    _write_uneven(tmp_path / "t.parquet", [10])
    src = ParquetSource(str(tmp_path / "t.parquet"), id_column="id", image_column="image")
    batch = src.read(10)
    refs = batch.refs()
    assert len(refs) == 10 and refs[3].endswith("t.parquet#row=3")
    kept = batch.without({refs[3], refs[7], "elsewhere.parquet#row=4"})
    assert len(kept) == 8 and kept.seq == batch.seq and kept.token == batch.token
    assert kept.work.load().columns.ids == [f"r{i}" for i in range(10) if i not in (3, 7)]


def test_pipeline_counts_every_row_of_uneven_files_once_with_bad_rows_dead_lettered(ray_local, tmp_path):
    """Real Ray, two workers, the null encoder: the workers read the rows; counts and dead letters are exact."""
    from monitor.drift.monitor import MonitorConfig, WindowConfig
    from workers.config import PipelineConfig
    from workers.core import WorkerConfig
    from workers.driver import run_pipeline

    root = tmp_path / "files"
    root.mkdir()
    end = _write_uneven(root / "a.parquet", [40, 7, 90, 1, 33])
    schema = pa.schema([("id", pa.string()), ("image", pa.binary()), ("ts", pa.float64())])
    bad = pa.table({"id": ["b0", None, "b2", "b3", "b0"], "image": [b"p0", b"p1", None, b"p3", b"p4"],
                    "ts": [1_700_000_000.0, 1_700_000_001.0, 1_700_000_002.0, float("nan"), 1_700_000_004.0]},
                   schema=schema)
    pq.write_table(bad, root / "b.parquet")
    end2 = _write_uneven(root / "c.parquet", [3], first_id=end)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(f"concept {i}" for i in range(300)) + "\n")
    sent = {}

    def after_submit(seq, workers):
        sent[seq] = True

    config = PipelineConfig(
        source=f"parquet://{root}?id_column=id&image_column=image&timestamp_column=ts",
        worker=WorkerConfig(model="null:32", vocab=str(vocab), solver="off", device="cpu", cache_dir=str(tmp_path)),
        workers=2, batch_size=32, monitor=MonitorConfig(window=WindowConfig(kind="count", size=50)))
    summary = run_pipeline(config, hooks={"after_submit": after_submit})
    # 174 good rows of a.parquet and c.parquet, b0 once (its repeat is a duplicate), b.parquet's three bad rows
    assert end2 == 174
    assert summary.images == 174 + 1
    assert summary.dead_letters == {"bad_record": 2, "bad_timestamp": 1}
    assert summary.duplicates == 1
    # batches cut at row groups: 32+8, 7, 32+32+26, 1, 32+1, then b.parquet (5) and c.parquet (3)
    assert summary.batches == len(sent) == 11 and summary.retries == 0 and summary.duplicate_batches == 0


def test_a_row_group_too_large_to_decode_whole_is_streamed_and_reads_the_same_rows(tmp_path, monkeypatch):
    """A writer's default (one huge row group) must not make every worker decode the whole group: above the size
    limit a worker streams the group from a kept position; any order of requests still reads exactly its rows."""
    from workers.sources import arrow_files

    total = _write_uneven(tmp_path / "big.parquet", [3000])
    monkeypatch.setattr(arrow_files, "_open_files", arrow_files._OpenFiles(max_group_bytes=0))
    src = ParquetSource(str(tmp_path / "big.parquet"), id_column="id", image_column="image")
    batches = []
    while (b := src.read(256)) is not None:
        batches.append(b)
    assert [len(b) for b in batches] == [256] * 11 + [184]
    order = [0, 2, 1, 3, 5, 4, 6, 7, 9, 8, 11, 10]  # two workers taking turns, one running behind the other
    got = {k: batches[k].work.load().columns.ids for k in order}
    assert [i for k in range(len(batches)) for i in got[k]] == [f"r{i}" for i in range(total)]
    assert arrow_files._open_files.streams and not arrow_files._open_files.groups  # streamed, never decoded whole
