"""Path payloads: only regular files are read, up to a size limit, under an optional root; devices, FIFOs and
directories are refused at once (the probe's /dev/zero read without limit and its FIFO blocked forever)."""

from __future__ import annotations

import os
import threading
import time

import pytest

from monitor.errors import BadInput
from workers.sources import read_path_payload


def _refused(path, **kwargs) -> tuple[str, str, float]:
    t0 = time.monotonic()
    with pytest.raises(BadInput) as info:
        read_path_payload(str(path), **kwargs)
    return info.value.reason, info.value.detail, time.monotonic() - t0


def test_a_regular_file_is_read_whole(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"x" * 1000)
    assert read_path_payload(str(tmp_path / "a.jpg"), max_bytes=1000) == b"x" * 1000


def test_dev_zero_is_refused_without_reading():
    reason, detail, took = _refused("/dev/zero")
    assert reason == "bad_path" and "character device" in detail and took < 1.0


def test_a_fifo_without_writer_is_refused_at_once(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    result = {}
    reader = threading.Thread(target=lambda: result.update(zip(("reason", "detail", "took"), _refused(fifo))),
                              daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert result["reason"] == "bad_path" and "a FIFO" in result["detail"] and result["took"] < 1.0


def test_directories_missing_files_and_empty_paths_are_bad_paths(tmp_path):
    assert _refused(tmp_path)[:2] == ("bad_path", f"payload path {str(tmp_path)!r} is a directory; only regular "
                                                  f"files are read")
    reason, detail, _ = _refused(tmp_path / "missing.jpg")
    assert reason == "bad_path" and "missing.jpg" in detail and "No such file" in detail
    assert _refused("")[0] == "bad_path"


def test_a_file_above_the_limit_is_payload_too_large_naming_both_sizes(tmp_path):
    (tmp_path / "big.jpg").write_bytes(b"x" * 1001)
    reason, detail, _ = _refused(tmp_path / "big.jpg", max_bytes=1000)
    assert reason == "payload_too_large" and "1001 bytes" in detail and "limit of 1000" in detail


def test_paths_outside_the_allowed_root_are_refused_even_through_a_symlink(tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (tmp_path / "secret.txt").write_bytes(b"s")
    (root / "ok.jpg").write_bytes(b"i")
    (root / "link.jpg").symlink_to(tmp_path / "secret.txt")
    assert read_path_payload(str(root / "ok.jpg"), root=str(root)) == b"i"
    for path in (tmp_path / "secret.txt", root / "link.jpg", root / ".." / "secret.txt"):
        reason, detail, _ = _refused(path, root=str(root))
        assert reason == "bad_path" and "outside the allowed root" in detail
