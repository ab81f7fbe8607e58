"""Sources hand out every item once per delivery, in order, with the metadata the URI asks for, and redeliver what
was not acknowledged; dead-letter sinks persist letters atomically."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.errors import ConfigError
from workers.core import DeadLetter
from tests.workers.helpers import jpeg_bytes
from workers.deadletter import open_sink, read_parquet_dead_letters
from workers.sources import DirectorySource, ParquetSource, RedisSource, open_source, parse_uri


def _drain(source, size=3):
    out = []
    while True:
        batch = source.read(size, timeout_s=0.05)
        if batch is None:
            return out
        source.ack(batch)
        out.append(batch)


def test_plain_paths_pick_dir_or_parquet_scheme(tmp_path):
    assert parse_uri(str(tmp_path))[0] == "dir"
    assert parse_uri(str(tmp_path / "a.parquet"))[0] == "parquet"
    scheme, path, opts, _ = parse_uri(f"dir://{tmp_path}?glob=*.png&follow=1")
    assert (scheme, path, opts) == ("dir", str(tmp_path), {"glob": "*.png", "follow": "1"})


def test_unknown_option_error_names_it_and_the_allowed_ones(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown dir source option\(s\) \['colour'\].*allowed"):
        open_source(f"dir://{tmp_path}?colour=red")
    with pytest.raises(ConfigError, match="scheme"):
        open_source("ftp://host/x")


def test_directory_source_reads_matching_images_oldest_first_then_ends(tmp_path):
    for i, name in enumerate(["b.jpg", "a.jpg", "c.png", "notes.txt"]):
        p = tmp_path / name
        p.write_bytes(jpeg_bytes(i) if name != "notes.txt" else b"hello")
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)
    src = open_source(f"dir://{tmp_path}?glob=*.jpg&stream=cam1")
    batches = _drain(src, size=1)
    ids = [it.meta.id for b in batches for it in b.items]
    assert ids == ["b.jpg", "a.jpg"]  # by mtime, not name
    assert [b.seq for b in batches] == [1, 2]
    item = batches[0].items[0]
    assert item.meta.stream == "cam1" and item.kind == "image" and item.payload == (tmp_path / "b.jpg").read_bytes()
    assert item.meta.timestamp == pytest.approx(1_700_000_000.0)
    # default glob takes image suffixes only
    assert sorted(it.meta.id for b in _drain(open_source(str(tmp_path))) for it in b.items) == [
        "a.jpg", "b.jpg", "c.png"]


def test_directory_follow_picks_up_new_files_and_resumes_from_checkpoint(tmp_path):
    (tmp_path / "1.jpg").write_bytes(jpeg_bytes(1))
    old = time.time() - 10
    os.utime(tmp_path / "1.jpg", (old, old))
    src = DirectorySource(str(tmp_path), follow=True, poll_s=0.05, settle_s=0.0)
    assert not src.finite
    b1 = src.read(10, timeout_s=0.2)
    assert [it.meta.id for it in b1.items] == ["1.jpg"]
    src.ack(b1)
    assert src.read(10, timeout_s=0.1).items == []  # nothing new: an empty batch, not the end
    (tmp_path / "2.jpg").write_bytes(jpeg_bytes(2))
    b2 = src.read(10, timeout_s=1.0)
    assert [it.meta.id for it in b2.items] == ["2.jpg"]
    cp = src.checkpoint()
    assert cp is not None and cp["name"] == "1.jpg"  # b2 is not acknowledged yet
    again = DirectorySource(str(tmp_path))
    again.resume(cp)
    assert [it.meta.id for b in _drain(again) for it in b.items] == ["2.jpg"]


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
    items = [it for b in _drain(src, size=4) for it in b.items]
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
    src.ack(b1)
    src.read(3)  # read but never acknowledged: must come again after a resume
    again = ParquetSource(str(path), image_column="image", read_batch=2)
    again.resume(src.checkpoint())
    assert [it.meta.id for b in _drain(again) for it in b.items] == [f"t.parquet#{i}" for i in range(3, 7)]


def test_parquet_text_column_and_arrow_ipc_file(tmp_path):
    table = pa.table({"caption": ["a dog", "a cat", ""], "id": ["x", "y", "z"]})
    path = tmp_path / "caps.arrow"
    with pa.ipc.new_file(path, table.schema) as writer:
        writer.write_table(table)
    items = [it for b in _drain(open_source(f"arrow://{path}?text_column=caption&id_column=id")) for it in b.items]
    assert [(it.meta.id, it.kind, it.payload) for it in items] == [
        ("x", "text", "a dog"), ("y", "text", "a cat"), ("z", "text", "")]


def test_parquet_missing_column_error_lists_the_columns(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(_table(), path)
    with pytest.raises(ConfigError, match=r"timestamp_column='when' is not a column.*'camera'"):
        open_source(f"parquet://{path}?timestamp_column=when")


def _add(client, key, n, start=0):
    return [client.xadd(key, {"image": jpeg_bytes(i), "ts": str(1_700_000_000 + i), "camera": f"c{i % 2}"})
            for i in range(start, start + n)]


def test_redis_source_acks_only_what_it_is_told_and_drains(redis_url, redis_client):
    ids = _add(redis_client, "frames", 5)
    src = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&stream_field=camera")
    b1 = src.read(3, timeout_s=0.1)
    assert [it.meta.id for it in b1.items] == [i.decode() for i in ids[:3]]
    assert b1.items[1].meta.stream == "c1" and b1.items[1].meta.timestamp == 1_700_000_001.0
    assert b1.items[0].meta.metadata == {"camera": "c0"}
    assert redis_client.xpending("frames", "g")["pending"] == 3
    src.ack(b1)
    assert redis_client.xpending("frames", "g")["pending"] == 0
    rest = _drain(src)
    assert [it.meta.id for b in rest for it in b.items] == [i.decode() for i in ids[3:]]


def test_redis_restart_under_same_consumer_rereads_its_unacknowledged_entries(redis_url, redis_client):
    ids = _add(redis_client, "frames", 4)
    first = RedisSource(redis_url, stream="frames", group="g", consumer="worker-1")
    taken = first.read(4, timeout_s=0.1)
    assert len(taken) == 4
    first.ack(type(taken)(seq=0, items=taken.items[:1], token=taken.token[:1]))
    first.close()  # dies with three entries unacknowledged
    again = RedisSource(redis_url, stream="frames", group="g", consumer="worker-1", drain=True)
    got = [it.meta.id for b in _drain(again) for it in b.items]
    assert got == [i.decode() for i in ids[1:]]


def test_redis_xautoclaim_takes_over_a_dead_consumers_pending_entries(redis_url, redis_client):
    ids = _add(redis_client, "frames", 3)
    dead = RedisSource(redis_url, stream="frames", group="g", consumer="dead")
    assert len(dead.read(3, timeout_s=0.1)) == 3  # never acknowledged
    heir = RedisSource(redis_url, stream="frames", group="g", consumer="heir", claim_idle_ms=50, drain=True)
    time.sleep(0.1)
    got = [it.meta.id for b in _drain(heir) for it in b.items]
    assert got == [i.decode() for i in ids]
    assert redis_client.xpending("frames", "g")["pending"] == 0


def test_redis_entry_without_payload_is_a_bad_record(redis_url, redis_client):
    redis_client.xadd("frames", {"camera": "c0"})
    redis_client.xadd("frames", {"text": "a caption"})
    items = [it for b in _drain(open_source(f"{redis_url}?stream=frames&drain=1")) for it in b.items]
    assert items[0].error[0] == "bad_record" and "payload fields" in items[0].error[1]
    assert items[1].kind == "text" and items[1].payload == b"a caption" and items[1].error is None


def test_redis_uri_without_stream_is_a_config_error(redis_url):
    with pytest.raises(ConfigError, match=r"\?stream="):
        open_source(redis_url)


def _letters(n):
    return [DeadLetter(item_id=f"i{k}", stream="s", timestamp=1.0 + k, reason="truncated", detail=f"d{k}",
                       ref=f"/x/{k}.jpg") for k in range(n)]


def test_parquet_dead_letter_sink_writes_complete_parts_only(tmp_path):
    sink = open_sink(f"parquet://{tmp_path / 'dl'}?flush_every=2")
    letters = _letters(3)
    sink.write(letters[:1])  # buffered, not yet visible
    assert read_parquet_dead_letters(tmp_path / "dl").num_rows == 0
    sink.write(letters[1:2])  # reaches flush_every: one part file
    assert read_parquet_dead_letters(tmp_path / "dl").num_rows == 2
    sink.write(letters[2:])
    sink.close()
    table = read_parquet_dead_letters(tmp_path / "dl")
    assert table.column("item_id").to_pylist() == ["i0", "i1", "i2"]
    assert set(table.column("reason").to_pylist()) == {"truncated"}
    assert not [p for p in (tmp_path / "dl").iterdir() if p.name.startswith(".")]
    assert sink.counts == {"truncated": 3}


def test_redis_dead_letter_sink_appends_entries(redis_url, redis_client):
    sink = open_sink(f"{redis_url}?stream=dead")
    sink.write(_letters(2))
    entries = redis_client.xrange("dead")
    assert [e[1][b"reason"] for e in entries] == [b"truncated", b"truncated"]
    assert entries[1][1][b"ref"] == b"/x/1.jpg"


def test_dead_letter_reason_outside_the_closed_set_is_rejected():
    with pytest.raises(ValueError, match="reason must be one of"):
        DeadLetter(item_id="x", stream="s", timestamp=0.0, reason="weird", detail="")


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
