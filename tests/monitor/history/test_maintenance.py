"""Tests for monitor.history.maintenance: compaction merges and keeps every row, orphans and temporaries of a crash
(SIGKILL mid-write, counted exactly) are removed, retention drops only whole old partitions."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import monitor.atomic as atomic
from monitor.history.store import HistoryStore
from monitor.records import ItemMeta, SparseCodes
from tests.monitor.history.helpers import NAMES, SPACE, T0, assert_same_window, make_alarm, make_window


def test_compaction_merges_small_files_and_keeps_every_row(store: HistoryStore) -> None:
    rng = np.random.default_rng(4)
    windows = [make_window("s", T0 + h * 1800.0, rng) for h in range(20)]
    for w in windows:
        store.write_windows([w])
    assert len(list((store.root / "window_concepts").rglob("*.parquet"))) == 20
    alarms = [make_alarm("s", T0 + i * 60) for i in range(4)]
    for a in alarms:
        store.write_alarms([a])
    stats = store.compact()
    assert stats["partitions_compacted"] == 2  # one windows partition, one alarms partition
    assert len(list((store.root / "window_concepts").rglob("*.parquet"))) == 1
    assert len(list((store.root / "alarms").rglob("*.parquet"))) == 1
    for a, b in zip(windows, store.read_windows()):
        assert_same_window(a, b)
    assert list(map(repr, store.read_alarms())) == list(map(repr, alarms))  # repr: NaN fields compare equal
    f = next((store.root / "window_concepts").rglob("*.parquet"))
    ids = pq.read_table(f)["concept_index"].to_numpy()
    assert np.all(np.diff(ids) >= 0), "compacted concept rows must stay sorted by concept for row-group pruning"


def test_crash_between_concepts_and_header_hides_the_batch(store: HistoryStore, monkeypatch) -> None:
    rng = np.random.default_rng(9)
    real_commit = atomic._commit
    calls = []

    def second_fails(temp, final):
        calls.append(final)
        if len(calls) == 2:  # the windows file that commits the batch
            raise KeyboardInterrupt
        real_commit(temp, final)

    monkeypatch.setattr(atomic, "_commit", second_fails)
    with pytest.raises(KeyboardInterrupt):
        store.write_windows([make_window("s", T0, rng)])
    monkeypatch.setattr(atomic, "_commit", real_commit)
    assert "window_concepts" in str(calls[0])
    assert store.read_windows() == []  # the orphan concept file is invisible
    assert store.compact()["orphans_removed"] == 1
    assert not list((store.root / "window_concepts").rglob("*.parquet"))


WRITER = textwrap.dedent(
    """
    import sys, numpy as np
    from monitor.history.store import HistoryStore
    from monitor.records import WindowSummary
    root, c = sys.argv[1], 15000
    store = HistoryStore(root, concept_space="kill", concept_names=[f"c{i}" for i in range(c)])
    print("ready", flush=True)
    for b in range(10_000):
        ws = []
        for j in range(24):  # one UTC day: one partition, committed as a unit
            k = b * 24 + j
            presence = np.full(c, k % 7 + 1, dtype=np.int64)
            ws.append(WindowSummary("s", 3600.0 * k, 3600.0 * (k + 1), 100, presence * 0.5, presence * 0.25,
                                    presence, concept_space="kill"))
        store.write_windows(ws)
    """
)


def test_sigkill_mid_write_never_exposes_a_partial_window(tmp_path: Path) -> None:
    root = tmp_path / "kill"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(root)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        store = HistoryStore.open(root)
        deadline = time.monotonic() + 60
        seen = 0
        # read concurrently with the writer: every visible window must be whole
        while time.monotonic() < deadline and seen < 48:
            windows = store.read_windows()
            for w in windows:
                k = int(round(w.start / 3600))
                assert w.n_images == 100
                assert np.all(w.presence == k % 7 + 1), "a window was read with missing concept rows"
            seen = len(windows)
        time.sleep(0.05 * (seen % 5))  # vary the instant of the kill
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    windows = store.read_windows()
    assert len(windows) >= 48 and len(windows) % 24 == 0  # whole batches only
    for w in windows:
        assert np.all(w.presence == int(round(w.start / 3600)) % 7 + 1)
        np.testing.assert_array_equal(w.weight_sum, w.presence * 0.5)
    # what the kill left behind, counted from the files themselves: temporaries, concept files and rollups whose
    # batch never got its windows file (the writer commits concepts, then rollup, then windows)
    temps = [p for p in root.rglob("*") if ".tmp-" in p.name]
    headers = {(p.parent.parent.name, p.parent.name, p.name) for p in (root / "windows").rglob("*.parquet")}
    orphans = [p for table in ("window_concepts", "window_rollups") for p in (root / table).rglob("*.parquet")
               if not p.name.startswith(".") and (p.parent.parent.name, p.parent.name, p.name) not in headers]
    stats = store.compact(temp_age_s=0)
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert stats["temps_removed"] == len(temps)
    assert stats["orphans_removed"] == len(orphans)
    assert stats["partitions_compacted"] == 0  # one file per day: nothing to merge
    assert len(store.read_windows()) == len(windows)


def test_retention_drops_only_partitions_older_than_the_cutoff(tmp_path: Path) -> None:
    store = HistoryStore(tmp_path / "r", concept_space=SPACE, concept_names=NAMES, codes_retention_days=2)
    rng = np.random.default_rng(10)
    dense = (rng.random((5, len(NAMES))) < 0.2) * 1.0
    codes = SparseCodes.from_dense(dense, np.ones(5), 0.25)
    items = [ItemMeta(f"i{d}", T0 + d * 86400.0 + 100, "cam") for d in range(5)]
    store.write_codes(codes, items)
    store.write_windows([make_window("cam", T0 + d * 86400.0, rng) for d in range(5)])
    now = T0 + 5 * 86400.0 + 3600  # day 5, 01:00: days 0..2 ended more than 2 days ago
    stats = store.compact(now=now)
    assert stats["codes_partitions_expired"] == 3
    _, kept = store.read_codes()
    assert [i.id for i in kept] == ["i3", "i4"]
    assert len(store.read_windows()) == 5  # windows keep forever unless asked
    assert store.apply_retention(windows_days=4, now=now)["windows"] == 1
    assert len(store.read_windows()) == 4


def test_readers_ignore_temporary_and_foreign_files(store: HistoryStore) -> None:
    rng = np.random.default_rng(14)
    w = make_window("s", T0, rng)
    store.write_windows([w])
    part = next((store.root / "windows").glob("stream=s/date=*"))
    real = next(part.glob("*.parquet"))
    # a half-written temporary (truncated copy of a real file) and an editor's backup file
    (part / f".{real.name}.tmp-deadbeef").write_bytes(real.read_bytes()[: real.stat().st_size // 2])
    (part / "notes.txt").write_text("not parquet")
    cpart = store.root / "window_concepts" / part.parent.name / part.name
    (cpart / ".zzz.parquet.tmp-0000").write_bytes(b"PAR1garbage")
    got = store.read_windows()
    assert len(got) == 1
    assert_same_window(got[0], w)
    assert store.compact(temp_age_s=0)["temps_removed"] == 2
