"""Tests for monitor.history.fs: stores behind URIs (file:// with both commit rules), roots that look like URIs, and
unreachable object stores as config errors naming the URI."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

import monitor.history.store as history
from monitor.errors import ConfigError
from monitor.history.store import HistoryStore
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary
from tests.monitor.history.helpers import NAMES, SPACE, T0, assert_same_window, make_alarm, make_window


def _fill(store: HistoryStore, rng: np.random.Generator) -> tuple[list[WindowSummary], list[Alarm], SparseCodes, list]:
    """Two days of windows written one file per window (so compaction has work), alarms and per-image codes."""
    windows = [make_window(s, T0 + h * 3600.0, rng) for s in ("cam/7", "b") for h in range(0, 48, 6)]
    for w in windows:
        store.write_windows([w])
    alarms = [make_alarm("cam/7", T0 + i * 3600.0) for i in range(3)]
    for a in alarms:
        store.write_alarms([a])
    dense = (rng.random((20, len(NAMES))) < 0.2) * rng.uniform(0.1, 1, (20, len(NAMES)))
    codes = SparseCodes.from_dense(dense, rng.uniform(0.5, 1, 20), 0.25)
    items = [ItemMeta(f"i{i}", T0 + i * 4000.0, "b", {"label": "x" if i % 2 else "y"}) for i in range(20)]
    store.write_codes(codes.take(list(range(10))), items[:10])
    store.write_codes(codes.take(list(range(10, 20))), items[10:])
    return sorted(windows, key=lambda w: (w.stream, w.start)), alarms, codes, items


@pytest.mark.parametrize("commit", ["rename", "put"])
def test_file_uri_round_trip_through_pyarrow_fs(tmp_path: Path, commit: str) -> None:
    # "rename" is the local rule; "put" is the object-store rule (write the final key in one go), run on a real disk
    root = tmp_path / "uri store"  # a space: the URI must be percent-encoded, the store must decode it
    uri = root.as_uri()
    assert uri.startswith("file:///") and "%20" in uri
    store = HistoryStore(history.StoreFS.from_root(uri, commit=commit), concept_space=SPACE, concept_names=NAMES)
    assert store.filesystem.commit == commit and store.root == root and store.location == str(root)
    windows, alarms, codes, items = _fill(store, np.random.default_rng(20))

    def check(s: HistoryStore) -> None:
        got = s.read_windows()
        assert len(got) == len(windows)
        for a, b in zip(windows, got):
            assert_same_window(a, b)
        assert list(map(repr, s.read_alarms())) == list(map(repr, alarms))
        got_codes, got_items = s.read_codes()
        assert [i.id for i in got_items] == [i.id for i in items]
        np.testing.assert_allclose(got_codes.to_dense(), codes.to_dense())
        _, ys = s.read_codes(where={"label": "y"})
        assert [i.id for i in ys] == [f"i{i}" for i in range(0, 20, 2)]
        ref = s.merged_window("b", T0, T0 + 2 * 86400)
        assert ref.n_images == sum(w.n_images for w in windows if w.stream == "b")

    check(store)
    store.set_checkpoint("job-1", {"row": 7})
    store.write_checkpoint_file("job-1.state.npz", b"\x00state\xff")
    assert store.get_checkpoint("job-1") == {"row": 7} and store.list_checkpoints() == ["job-1"]
    assert store.read_checkpoint_file("job-1.state.npz") == b"\x00state\xff"
    assert store.read_checkpoint_file("absent.npz") is None
    with pytest.raises(ValueError, match="not ending in .json"):
        store.write_checkpoint_file("job-1.json", b"{}")
    stats = store.compact()
    # windows: 2 streams x 2 days; alarms: 1 partition; codes: 1 partition holding both writes
    assert stats["partitions_compacted"] == 6 and stats["files_written"] == 4 * 3 + 2
    assert len(list((root / "window_concepts").rglob("*.parquet"))) == 4
    check(store)
    again = store.compact()
    assert again["partitions_compacted"] == 0 and again["files_written"] == 0 and again["files_removed"] == 0
    store.delete_checkpoint_file("job-1.state.npz")
    store.clear_checkpoint("job-1")
    assert store.get_checkpoint("job-1") is None and store.read_checkpoint_file("job-1.state.npz") is None
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    # the same files open as a plain local path, and the other way round: one layout, one code path
    check(HistoryStore.open(root))
    check(HistoryStore.open(uri))
    assert store.describe()["root"] == str(root)


def test_local_paths_with_a_colon_need_a_dot_slash(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"unknown scheme 'run:'.*\./run:3/h"):
        HistoryStore("run:3/h", concept_space=SPACE, concept_names=NAMES)
    store = HistoryStore("./run:3/h", concept_space=SPACE, concept_names=NAMES)
    assert (tmp_path / "run:3" / "h" / "store.json").is_file() and store.root == tmp_path / "run:3" / "h"


@pytest.mark.parametrize(
    "root, message",
    [
        ("s3:/bucket/prefix", r"'s3:/bucket/prefix' is not a valid s3:// URI"),
        ("s3:", r"'s3:' is not a valid s3:// URI"),
        (Path("s3://bucket/prefix"), r"'s3:/bucket/prefix' is not a valid s3:// URI.*pass URIs as strings"),
        ("gs:bucket", r"not a valid gs:// URI"),
        ("s3://", r"'s3://': pyarrow cannot open it here|names no bucket"),
        ("s3://bucket/p?no_such_option=1", r"pyarrow cannot open it here.*no_such_option"),
        ("file:relative/dir", r"'file:relative/dir': pyarrow cannot open it here"),
        ("mem://x", r"unknown scheme 'mem:'.*s3://bucket/prefix"),
        ("ftp://host/dir", r"unknown scheme 'ftp:'.*gs://bucket/prefix"),
        ("S3X://bucket", r"unknown scheme 's3x:'"),
    ],
)
def test_uri_like_roots_are_config_errors_never_local_folders(tmp_path: Path, monkeypatch, root, message) -> None:
    monkeypatch.chdir(tmp_path)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=message):
        HistoryStore(root, concept_space=SPACE, concept_names=NAMES)
    with pytest.raises(ConfigError):
        HistoryStore.open(root)
    assert time.monotonic() - start < 5
    assert list(tmp_path.iterdir()) == [], "a URI-like root must never create a local folder"


def test_unreachable_s3_store_is_a_config_error_naming_the_uri(tmp_path: Path, monkeypatch) -> None:
    import socket

    # A closed local port as the endpoint: offline, deterministic, refused at once (pyarrow still retries ~3 times).
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")  # no instance-metadata lookups
    monkeypatch.chdir(tmp_path)
    uri = (f"s3://AKIAEXAMPLE:not-a-real-secret@splice-bucket/history"
           f"?region=us-east-1&scheme=http&endpoint_override=127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(ConfigError) as info:
        HistoryStore(uri, concept_space=SPACE, concept_names=NAMES)
    assert time.monotonic() - start < 10
    msg = str(info.value)
    assert "s3://***@splice-bucket/history" in msg and "cannot read it" in msg and "AWS_ACCESS_KEY_ID" in msg
    assert "not-a-real-secret" not in msg, "credentials in the URI must not leak into messages"
    assert list(tmp_path.iterdir()) == []
