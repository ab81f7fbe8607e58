"""Directory sources read every matching file once, oldest first, follow new files whatever their mtime, and turn
unreadable or implausible files into dead-letter items instead of errors."""

from __future__ import annotations

import os
import time

import pytest

from tests.workers.helpers import drain, jpeg_bytes
from workers.sources import DirectorySource, open_source


def test_directory_source_reads_matching_images_oldest_first_then_ends(tmp_path):
    for i, name in enumerate(["b.jpg", "a.jpg", "c.png", "notes.txt"]):
        p = tmp_path / name
        p.write_bytes(jpeg_bytes(i) if name != "notes.txt" else b"hello")
        os.utime(p, ns=(1_700_000_000_000_000_000 + i * 10**9,) * 2)
    src = open_source(f"dir://{tmp_path}?glob=*.jpg&stream=cam1")
    batches = drain(src, size=1)
    ids = [it.meta.id for b in batches for it in b.items]
    assert ids == ["b.jpg", "a.jpg"]  # by mtime, not name
    assert [b.seq for b in batches] == [1, 2]
    item = batches[0].items[0]
    assert item.meta.stream == "cam1" and item.kind == "image" and item.payload == (tmp_path / "b.jpg").read_bytes()
    assert item.meta.timestamp == pytest.approx(1_700_000_000.0)
    # default glob takes image suffixes only
    assert sorted(it.meta.id for b in drain(open_source(str(tmp_path))) for it in b.items) == [
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
    assert [it.meta.id for b in drain(again) for it in b.items] == ["2.jpg"]


def test_followed_directory_reads_files_moved_in_with_an_older_mtime(tmp_path):
    """mv, rsync -a, cp -p and tar keep the original mtime: such a file is new to the directory all the same."""
    watched, outside = tmp_path / "watched", tmp_path / "outside"
    watched.mkdir()
    outside.mkdir()
    (watched / "new.jpg").write_bytes(jpeg_bytes(1))
    src = DirectorySource(str(watched), follow=True, poll_s=0.05, settle_s=0.0)
    assert [it.meta.id for it in src.read(10, timeout_s=0.5).items] == ["new.jpg"]
    (outside / "old.jpg").write_bytes(jpeg_bytes(2))
    os.utime(outside / "old.jpg", (1_000_000_000, 1_000_000_000))  # 2001: older than everything read so far
    os.rename(outside / "old.jpg", watched / "old.jpg")
    got = []
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        got = [it.meta.id for it in src.read(10, timeout_s=0.2).items]
    assert got == ["old.jpg"]
    assert src.read(10, timeout_s=0.2).items == []  # and only once


def test_followed_directory_forgets_names_that_left_it(tmp_path):
    """Memory follows the files present, not every file ever seen."""
    src = DirectorySource(str(tmp_path), follow=True, poll_s=0.01, settle_s=0.0)
    for round_ in range(5):
        names = [f"r{round_}-{k}.jpg" for k in range(20)]
        for name in names:
            (tmp_path / name).write_bytes(b"x")
        got = []
        while len(got) < 20:
            got += [it.meta.id for it in src.read(50, timeout_s=0.2).items]
        assert sorted(got) == sorted(names)
        for name in names:
            (tmp_path / name).unlink()
    src.read(10, timeout_s=0.05)  # one more scan sees the directory empty
    assert len(src._seen) == 0


def test_unreadable_oversized_and_implausible_files_become_dead_letter_items(tmp_path):
    (tmp_path / "ok.jpg").write_bytes(jpeg_bytes(1))
    (tmp_path / "big.jpg").write_bytes(b"x" * 5000)
    (tmp_path / "future.jpg").write_bytes(jpeg_bytes(2))
    os.utime(tmp_path / "future.jpg", (253402300799, 253402300799))  # 9999-12-31
    os.mkfifo(tmp_path / "pipe.jpg")  # not a regular file: never listed, never opened
    items = {it.meta.id: it for b in drain(open_source(f"dir://{tmp_path}?max_bytes=4000")) for it in b.items}
    assert sorted(items) == ["big.jpg", "future.jpg", "ok.jpg"]
    assert items["ok.jpg"].error is None
    assert items["big.jpg"].error[0] == "payload_too_large" and items["big.jpg"].payload is None
    assert items["future.jpg"].error[0] == "bad_timestamp" and "outside" in items["future.jpg"].error[1]


def test_dir_max_bytes_must_be_a_positive_number(tmp_path):
    from monitor.errors import ConfigError

    with pytest.raises(ConfigError, match="max_bytes must be a number of bytes"):
        open_source(f"dir://{tmp_path}?max_bytes=lots")


def test_directory_batches_name_files_and_the_worker_reads_them(tmp_path):
    """The driver lists; a worker reads: a batch carries names, not bytes, and reads back with the same reasons."""
    import pickle

    from workers.sources.directory import FileList

    big = b"\xff" * 200_000
    for i in range(5):
        (tmp_path / f"f{i}.jpg").write_bytes(big if i != 3 else big * 2)  # f3 is over max_bytes
        os.utime(tmp_path / f"f{i}.jpg", ns=(1_700_000_000_000_000_000 + i, 1_700_000_000_000_000_000 + i))
    src = DirectorySource(str(tmp_path), max_bytes=300_000)
    batch = src.read(10)
    assert isinstance(batch.work, FileList) and len(batch) == 5
    assert len(pickle.dumps(batch.payload())) < 1_000  # five names, not a megabyte
    loaded = pickle.loads(pickle.dumps(batch.work)).load()
    assert loaded.columns.ids == [f"f{i}.jpg" for i in range(5)]
    assert [p == big for p in loaded.payloads] == [True, True, True, False, True]
    assert list(loaded.errors) == [3] and loaded.errors[3][0] == "payload_too_large"
    assert loaded.columns.timestamps.tolist() == [1_700_000_000.0 + i * 1e-9 for i in range(5)]
    kept = batch.without({str(tmp_path / "f1.jpg")})
    assert kept.work.load().columns.ids == ["f0.jpg", "f2.jpg", "f3.jpg", "f4.jpg"] and kept.token == batch.token
