"""Tests for monitor.atomic, the project's one atomic write: replace or keep, never a part, no temporaries left."""

from __future__ import annotations

import re
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest

import monitor.atomic as atomic
from monitor.atomic import atomic_put, atomic_write_bytes, atomic_write_text, is_temp_name, temp_path

REPO = Path(__file__).resolve().parents[2]


def test_write_creates_parents_and_replaces_the_content(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "f.bin"
    assert atomic_write_bytes(path, b"first") == path
    atomic_write_bytes(path, bytearray(b"second, longer"))
    assert path.read_bytes() == b"second, longer"
    atomic_write_bytes(path, pa.py_buffer(b"third"))  # any buffer: pyarrow's serialisers hand these out
    assert path.read_bytes() == b"third"
    atomic_write_text(path, "caf\u00e9")
    assert path.read_bytes() == "caf\u00e9".encode()
    assert sorted(p.name for p in path.parent.iterdir()) == ["f.bin"]


def test_a_failed_commit_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "state.npz"
    atomic_write_bytes(path, b"old")
    seen = []

    def fail(temp: Path, final: Path) -> None:
        seen.append(temp.read_bytes())  # the temporary was complete when the commit was attempted
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_commit", fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_bytes(path, b"new")
    assert seen == [b"new"]
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]


def test_a_concurrent_reader_sees_only_whole_versions(tmp_path: Path) -> None:
    path = tmp_path / "big.bin"
    versions = [bytes([v]) * 2_000_000 for v in range(4)]
    atomic_write_bytes(path, versions[0])
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            atomic_write_bytes(path, versions[i % 4], durable=False)

    t = threading.Thread(target=writer)
    t.start()
    reads = 0
    try:
        for _ in range(200):
            got = path.read_bytes()
            assert got in versions, f"read {len(got)} bytes that are no whole version"
            reads += 1
    finally:
        stop.set()
        t.join()
    assert reads == 200
    assert not [p for p in tmp_path.iterdir() if is_temp_name(p.name)]


def test_temp_names_are_hidden_and_recognised(tmp_path: Path) -> None:
    t = temp_path(tmp_path / "x.parquet")
    assert t.parent == tmp_path and t.name.startswith(".x.parquet.tmp-")
    assert is_temp_name(t.name) and not is_temp_name("x.parquet") and not is_temp_name(".hidden")


def test_atomic_put_uploads_once_and_a_failed_fresh_put_leaves_nothing(tmp_path: Path) -> None:
    fs = pafs.SubTreeFileSystem(str(tmp_path), pafs.LocalFileSystem())
    atomic_put(fs, "obj.bin", b"payload", fresh=True)
    assert (tmp_path / "obj.bin").read_bytes() == b"payload"
    with pytest.raises(TypeError):
        atomic_put(fs, "other.bin", 12345, fresh=True)  # not a buffer: the upload fails after the key was opened
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.bin"]


def test_no_other_module_renames_files_into_place() -> None:
    # one atomic write for the whole project: any other os.replace / os.rename / fsync is a second copy of it
    offenders = []
    for package in ("monitor", "workers", "dashboards"):
        for path in (REPO / package).rglob("*.py"):
            if path.name == "atomic.py" and path.parent.name == "monitor":
                continue
            text = path.read_text(encoding="utf-8")
            if re.search(r"\bos\.(replace|rename|fsync)\(|\.rename\(|\.replace\(\s*[\w.]*(tmp|temp)", text):
                offenders.append(str(path.relative_to(REPO)))
    assert offenders == []
