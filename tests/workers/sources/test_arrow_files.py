"""Parquet/Arrow sources carry timestamps, streams and metadata, resume after the last acknowledged row and never
skip a batch acknowledged late; a bad timestamp is one dead-letter item, not an error for the run."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.errors import ConfigError
from tests.workers.helpers import drain, jpeg_bytes
from workers.sources import ParquetSource, open_source


def _table(n=7, with_null=True):
    images = [jpeg_bytes(i) for i in range(n)]
    if with_null:
        images[3] = None
    return pa.table({
        "image": pa.array(images, pa.binary()),
        "ts": pa.array([1_700_000_000_000 + 1000 * i for i in range(n)], pa.timestamp("ms", tz="UTC")),
        "camera": [f"cam{i % 2}" for i in range(n)],
        "label": [i % 3 for i in range(n)],
    })


def test_parquet_source_carries_timestamps_streams_metadata_and_flags_null_payloads(tmp_path):
    path = tmp_path / "frames.parquet"
    pq.write_table(_table(), path, row_group_size=3)
    src = open_source(f"parquet://{path}?image_column=image&timestamp_column=ts&stream_column=camera"
                      "&metadata=camera,label&read_batch=2")
    items = [it for b in drain(src, size=4) for it in b.items]
    assert [it.meta.id for it in items] == [f"frames.parquet#{i}" for i in range(7)]
    assert [it.meta.timestamp for it in items] == [1_700_000_000.0 + i for i in range(7)]
    assert [it.meta.stream for it in items] == [f"cam{i % 2}" for i in range(7)]
    assert items[5].meta.metadata == {"camera": "cam1", "label": 2}
    assert items[3].error == ("bad_record", "image is null") and items[2].error is None
    assert items[4].ref.endswith("frames.parquet#row=4")
    assert src.checkpoint() == {"file": 0, "row": 7}


def test_parquet_source_resumes_after_last_acknowledged_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(with_null=False), path, row_group_size=2)
    src = ParquetSource(str(path), image_column="image", read_batch=2)
    b1 = src.read(3)
    assert len(b1) == 2  # a batch stops at a row-group boundary
    src.ack(b1)
    src.read(3)  # read but never acknowledged: must come again after a resume
    again = ParquetSource(str(path), image_column="image", read_batch=2)
    again.resume(src.checkpoint())
    assert [it.meta.id for b in drain(again) for it in b.items] == [f"t.parquet#{i}" for i in range(2, 7)]


def test_parquet_text_column_and_arrow_ipc_file(tmp_path):
    table = pa.table({"caption": ["a dog", "a cat", ""], "id": ["x", "y", "z"]})
    path = tmp_path / "caps.arrow"
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    items = [it for b in drain(open_source(f"arrow://{path}?text_column=caption&id_column=id")) for it in b.items]
    assert [(it.meta.id, it.kind, it.payload) for it in items] == [
        ("x", "text", "a dog"), ("y", "text", "a cat"), ("z", "text", "")]


def test_parquet_missing_column_error_lists_the_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(), path)
    with pytest.raises(ConfigError, match=r"timestamp_column='when' is not a column.*'camera'"):
        open_source(f"parquet://{path}?timestamp_column=when")


def test_checkpoint_never_skips_a_batch_acknowledged_late(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(with_null=False), path)
    src = ParquetSource(str(path), image_column="image")
    b1, b2, b3 = src.read(2), src.read(2), src.read(2)
    src.ack(b1)
    src.ack(b3)  # b2 is being retried on another worker
    assert src.checkpoint() == {"file": 0, "row": 2}
    src.ack(b2)
    assert src.checkpoint() == {"file": 0, "row": 6}


def test_bad_timestamps_are_dead_letter_items_and_the_rest_is_read(tmp_path):
    """The probe: one NaN/inf/1e400 timestamp stopped the whole run ("event times must be finite")."""
    values = [1_700_000_000.0, float("nan"), float("inf"), 1_700_000_003.0, -1.0]
    strings = ["2023-11-14T22:13:20Z", "1e400", "9999-12-31T23:59:59", "nan", "1700000004"]
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": [f"c{i}" for i in range(5)], "ts": values, "ts_str": strings}), path)
    for column, good in (("ts", {0: 1_700_000_000.0, 3: 1_700_000_003.0}), ("ts_str", {0: 1_700_000_000.0,
                                                                                      4: 1_700_000_004.0})):
        items = [it for b in drain(open_source(f"parquet://{path}?text_column=text&timestamp_column={column}"))
                 for it in b.items]
        assert len(items) == 5
        assert {i: it.meta.timestamp for i, it in enumerate(items) if it.error is None} == good
        assert all(it.error[0] == "bad_timestamp" and it.error[1].startswith(f"{column}: ")
                   for i, it in enumerate(items) if i not in good)


def test_arrow_timestamps_beyond_python_datetime_are_one_bad_row_not_a_crash(tmp_path):
    seconds = [1_700_000_000, 400_000_000_000, 1_700_000_002]  # the middle one is in the year 14645
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"text": ["a", "b", "c"], "ts": pa.array(seconds, pa.timestamp("s"))}), path)
    items = [it for b in drain(open_source(f"parquet://{path}?text_column=text&timestamp_column=ts")) for it in b.items]
    assert [it.error is None for it in items] == [True, False, True]
    assert items[1].error[0] == "bad_timestamp"
    assert [items[0].meta.timestamp, items[2].meta.timestamp] == [1_700_000_000.0, 1_700_000_002.0]


def test_a_plain_parquet_with_a_timestamp_column_is_read_by_event_time_and_says_so(tmp_path, capsys):
    """A user's own file: `timestamp` (Arrow timestamp) and `camera` columns, no options in the path."""
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({
        "text": ["a cat on a sofa", "snow on a road", "a red bus"],
        "timestamp": pa.array([1_700_000_000_000, 1_700_000_060_000, 1_700_000_120_000], pa.timestamp("ms")),
        "camera": ["cam-7", "cam-7", "cam-2"],
    }), path)
    items = [it for b in drain(open_source(str(path))) for it in b.items]
    assert [it.meta.timestamp for it in items] == [1_700_000_000.0, 1_700_000_060.0, 1_700_000_120.0]
    assert [it.meta.stream for it in items] == ["cam-7", "cam-7", "cam-2"]
    err = capsys.readouterr().err
    assert "using column 'timestamp' as timestamp_column" in err and "using column 'camera' as stream_column" in err


def test_a_numeric_ts_column_is_taken_by_name_and_none_turns_detection_off(tmp_path, capsys):
    path = tmp_path / "mine.parquet"
    pq.write_table(pa.table({"text": ["one", "two"], "ts": [1_700_000_000.5, 1_700_000_001.5]}), path)
    items = [it for b in drain(open_source(str(path))) for it in b.items]
    assert [it.meta.timestamp for it in items] == [1_700_000_000.5, 1_700_000_001.5]
    assert "using column 'ts' as timestamp_column" in capsys.readouterr().err
    before = __import__("time").time()
    items = [it for b in drain(open_source(f"{path}?timestamp_column=none")) for it in b.items]
    assert all(it.meta.timestamp >= before - 1 for it in items), "timestamp_column=none means processing time"
    assert "using column" not in capsys.readouterr().err


def test_run_flags_name_the_columns_in_the_source_uri():
    from workers.cli.settings import _with_source_options

    assert _with_source_options("data.parquet", timestamp_column="when", stream_column=None) == \
        "data.parquet?timestamp_column=when"
    assert _with_source_options("parquet:///d.parquet?text_column=t", timestamp_column="when",
                                stream_column="cam") == "parquet:///d.parquet?text_column=t&timestamp_column=when" \
                                                        "&stream_column=cam"
    # the URI's own option wins over the flag
    assert _with_source_options("d.parquet?timestamp_column=ts", timestamp_column="when", stream_column=None) == \
        "d.parquet?timestamp_column=ts"
