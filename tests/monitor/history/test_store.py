"""Tests for monitor.history.store: round trips, sparse layout, last-write-wins, atomic writes under failure and SIGKILL,
concept-space identity, compaction, retention, checkpoints."""

from __future__ import annotations

import json
import math
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
import monitor.history.store as history
from monitor.errors import ConfigError
from monitor.history.store import SCHEMA_VERSION, HistoryStore, parse_time
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary

NAMES = [f"concept{i}" for i in range(40)]
SPACE = "test-space-v1"
T0 = parse_time("2026-03-01")


def make_window(stream: str, start: float, rng: np.random.Generator, c: int = len(NAMES), n: int = 50) -> WindowSummary:
    presence = rng.binomial(n, rng.uniform(0, 0.3, c) * (rng.random(c) < 0.5))
    weight_sum = presence * rng.uniform(0.05, 0.5, c)
    return WindowSummary(
        stream=stream,
        start=start,
        end=start + 3600.0,
        n_images=n,
        weight_sum=weight_sum,
        weight_sq_sum=weight_sum * 0.3,
        presence=presence.astype(np.int64),
        fidelity_sum=0.8 * n,
        fidelity_sq_sum=0.65 * n,
        fidelity_min=0.5,
        fidelity_max=0.95,
        l0_sum=12.0 * n,
        l0_sq_sum=150.0 * n,
        concept_space=SPACE,
    )


def assert_same_window(a: WindowSummary, b: WindowSummary) -> None:
    assert (a.stream, a.start, a.end, a.n_images) == (b.stream, b.start, b.end, b.n_images)
    np.testing.assert_array_equal(a.presence, b.presence)
    np.testing.assert_array_equal(a.weight_sum, b.weight_sum)
    np.testing.assert_array_equal(a.weight_sq_sum, b.weight_sq_sum)
    for f in ("fidelity_sum", "fidelity_sq_sum", "fidelity_min", "fidelity_max", "l0_sum", "l0_sq_sum"):
        assert getattr(a, f) == getattr(b, f), f


@pytest.fixture
def store(tmp_path: Path) -> HistoryStore:
    return HistoryStore(tmp_path / "hist", concept_space=SPACE, concept_names=NAMES)


def test_windows_round_trip_across_streams_and_days(store: HistoryStore) -> None:
    rng = np.random.default_rng(1)
    windows = [make_window(s, T0 + h * 3600.0, rng) for s in ("cam/7", "cam-8") for h in range(0, 60, 5)]
    assert store.write_windows(windows) == len(windows)
    got = store.read_windows()
    expected = sorted(windows, key=lambda w: (w.stream, w.start))
    assert len(got) == len(expected)
    for a, b in zip(expected, got):
        assert_same_window(a, b)
        assert b.concept_space == SPACE
    # partitioned by stream (escaped) and UTC date
    days = sorted(p.name for p in (store.root / "windows" / "stream=cam%2F7").iterdir())
    assert days == ["date=2026-03-01", "date=2026-03-02", "date=2026-03-03"]
    # time range [start, end) on window start, and the stream filter
    sub = store.read_windows("cam-8", T0 + 10 * 3600, T0 + 30 * 3600)
    assert [w.start for w in sub] == [T0 + h * 3600.0 for h in (10, 15, 20, 25)]
    assert {w.stream for w in sub} == {"cam-8"}


def test_only_present_concepts_are_stored(store: HistoryStore) -> None:
    rng = np.random.default_rng(2)
    windows = [make_window("s", T0 + h * 3600.0, rng) for h in range(5)]
    store.write_windows(windows)
    rows = sum(pq.read_metadata(f).num_rows for f in (store.root / "window_concepts").rglob("*.parquet"))
    assert rows == sum(int((w.presence > 0).sum()) for w in windows)
    assert rows < 5 * len(NAMES) * 0.8


def test_rewritten_window_replaces_the_old_one_before_and_after_compaction(store: HistoryStore) -> None:
    rng = np.random.default_rng(3)
    first = [make_window("s", T0 + h * 3600.0, rng) for h in range(3)]
    store.write_windows(first)
    again = make_window("s", T0 + 3600.0, rng, n=99)
    store.write_windows([again])
    got = store.read_windows()
    assert len(got) == 3
    assert_same_window(got[1], again)
    assert_same_window(got[0], first[0])
    stats = store.compact()
    assert stats["partitions_compacted"] == 1
    assert len(list((store.root / "windows").rglob("*.parquet"))) == 1
    got2 = store.read_windows()
    for a, b in zip(got, got2):
        assert_same_window(a, b)


def test_compaction_merges_small_files_and_keeps_every_row(store: HistoryStore) -> None:
    rng = np.random.default_rng(4)
    windows = [make_window("s", T0 + h * 1800.0, rng) for h in range(20)]
    for w in windows:
        store.write_windows([w])
    assert len(list((store.root / "window_concepts").rglob("*.parquet"))) == 20
    alarms = [_alarm("s", T0 + i * 60) for i in range(4)]
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


def _alarm(stream: str, start: float, concept: str = "concept3") -> Alarm:
    return Alarm(
        stream=stream, kind="prevalence", direction="up", concept_index=3, concept=concept,
        reference_prevalence=0.02, current_prevalence=0.19, reference_mean=0.01, current_mean=0.08,
        effect_size=0.6, score=12.0, p_value=1e-9, window_start=start, window_end=start + 3600,
    )


def test_alarms_round_trip_and_time_filter(store: HistoryStore) -> None:
    alarms = [_alarm("a", T0 + i * 7200.0) for i in range(30)]
    store.write_alarms(alarms)
    assert list(map(repr, store.read_alarms())) == list(map(repr, alarms))  # repr: NaN fields compare equal
    assert list(map(repr, store.read_alarms("a", T0 + 7200.0, T0 + 3 * 7200.0))) == list(map(repr, alarms[1:3]))
    assert store.read_alarms("other") == []


def test_codes_round_trip_with_metadata_slices_and_id_dedup(store: HistoryStore) -> None:
    rng = np.random.default_rng(5)
    n = 300
    dense = (rng.random((n, len(NAMES))) < 0.1) * rng.uniform(0.1, 1, (n, len(NAMES)))
    codes = SparseCodes.from_dense(dense, rng.uniform(0.5, 1, n), 0.25)
    items = [
        ItemMeta(f"img{i}", T0 + i * 600.0, "cam", {"label": "A" if i % 3 else "B", "k": i % 2})
        for i in range(n)
    ]
    assert store.write_codes(codes, items) == n
    got, got_items = store.read_codes()
    np.testing.assert_allclose(got.to_dense(), dense.astype(np.float32))
    np.testing.assert_allclose(got.fidelity, codes.fidelity)
    assert [i.id for i in got_items] == [i.id for i in items]
    assert got_items[4].metadata == {"label": "A", "k": "0"}  # values come back as text
    sub, sub_items = store.read_codes(where={"label": "B", "k": 1})
    expect = [i for i, it in enumerate(items) if it.metadata["label"] == "B" and it.metadata["k"] == 1]
    assert [it.id for it in sub_items] == [items[i].id for i in expect]
    np.testing.assert_allclose(sub.to_dense(), dense[expect].astype(np.float32))
    # writing an id again (a resumed backfill) replaces it
    store.write_codes(codes.take([0]), [ItemMeta("img0", T0, "cam", {"label": "Z"})])
    _, again = store.read_codes()
    assert len(again) == n and again[0].metadata == {"label": "Z"}
    assert store.has_codes() and not store.has_codes("other")


def test_reopen_with_another_concept_space_names_both(store: HistoryStore) -> None:
    with pytest.raises(ConfigError, match=r"'test-space-v1'.*'other-space'"):
        HistoryStore(store.root, concept_space="other-space", concept_names=NAMES)
    with pytest.raises(ConfigError, match="differs first at index 7"):
        HistoryStore(store.root, concept_space=SPACE, concept_names=NAMES[:7] + ["x"] + NAMES[8:])
    reopened = HistoryStore.open(store.root)
    assert reopened.concept_space == SPACE and reopened.concept_names == NAMES
    with pytest.raises(ConfigError, match="no history store"):
        HistoryStore.open(store.root / "missing")


def test_window_from_another_space_or_size_is_refused(store: HistoryStore) -> None:
    rng = np.random.default_rng(6)
    w = make_window("s", T0, rng)
    w.concept_space = "clip-b32/other-vocab"
    with pytest.raises(ConfigError, match=r"'clip-b32/other-vocab'.*'test-space-v1'"):
        store.write_windows([w])
    short = make_window("s", T0, rng, c=len(NAMES) - 1)
    with pytest.raises(ConfigError, match=r"shape \(39,\).*40 concepts"):
        store.write_windows([short])
    assert store.read_windows() == []


def test_newer_schema_version_is_refused(store: HistoryStore) -> None:
    meta = json.loads((store.root / "store.json").read_text())
    assert meta["schema_version"] == SCHEMA_VERSION
    meta["schema_version"] = SCHEMA_VERSION + 1
    (store.root / "store.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="schema_version"):
        HistoryStore.open(store.root)


def test_files_carry_schema_version_and_concept_space(store: HistoryStore) -> None:
    store.write_windows([make_window("s", T0, np.random.default_rng(7))])
    for f in store.root.rglob("*.parquet"):
        md = pq.read_schema(f).metadata
        assert md[b"splice_monitor.schema_version"] == str(SCHEMA_VERSION).encode()
        assert md[b"splice_monitor.concept_space"] == SPACE.encode()


def test_failure_before_commit_leaves_nothing_visible(store: HistoryStore, monkeypatch) -> None:
    rng = np.random.default_rng(8)
    store.write_windows([make_window("s", T0, rng)])
    real_commit = atomic._commit

    def fail(temp, final):
        assert temp.exists() and temp.stat().st_size > 0  # the temporary file was fully written
        raise OSError("disk full")

    monkeypatch.setattr(atomic, "_commit", fail)
    with pytest.raises(OSError, match="disk full"):
        store.write_windows([make_window("s", T0 + 3600, rng)])
    monkeypatch.setattr(atomic, "_commit", real_commit)
    assert [w.start for w in store.read_windows()] == [T0]
    assert not [p for p in store.root.rglob("*") if ".tmp-" in p.name], "failed writes must clean their temp files"


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
    stats = store.compact(temp_age_s=0)
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    assert stats["temps_removed"] + stats["orphans_removed"] >= 0
    assert len(store.read_windows()) == len(windows)


def test_checkpoints_round_trip_atomically(store: HistoryStore) -> None:
    assert store.get_checkpoint("backfill-archive") is None
    store.set_checkpoint("backfill-archive", {"file": 3, "row": 1200})
    store.set_checkpoint("backfill-archive", {"file": 4, "row": 0})
    assert store.get_checkpoint("backfill-archive") == {"file": 4, "row": 0}
    assert store.list_checkpoints() == ["backfill-archive"]
    assert not list((store.root / "checkpoints").glob(".*"))
    store.clear_checkpoint("backfill-archive")
    assert store.get_checkpoint("backfill-archive") is None
    with pytest.raises(ValueError, match="job_id='../evil'"):
        store.set_checkpoint("../evil", {})
    with pytest.raises(ValueError, match="JSON-serialisable"):
        store.set_checkpoint("job", {"x": object()})


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


def test_parse_time_accepts_iso_unix_and_rejects_garbage() -> None:
    assert parse_time("2026-03-01T01:00:00Z") == T0 + 3600
    assert parse_time("2026-03-01T02:00:00+01:00") == T0 + 3600
    assert parse_time(T0) == T0
    with pytest.raises(ValueError, match="start='yesterday-ish'"):
        parse_time("yesterday-ish", name="start")


def test_describe_counts_streams_windows_and_images(store: HistoryStore) -> None:
    rng = np.random.default_rng(11)
    store.write_windows([make_window("a", T0 + h * 3600.0, rng) for h in range(3)])
    store.write_windows([make_window("b", T0, rng)])
    info = store.describe()
    assert info["streams"]["a"]["windows"] == 3 and info["streams"]["a"]["images"] == 150
    assert info["streams"]["b"]["windows"] == 1
    assert info["concept_space"] == SPACE and info["schema_version"] == SCHEMA_VERSION


def test_sum_windows_agrees_with_window_rows_whether_or_not_rollups_apply(store: HistoryStore) -> None:
    rng = np.random.default_rng(12)
    store.write_windows([make_window("s", T0 + h * 3600.0, rng) for h in range(72)])  # 3 fresh days: rollups
    store.write_windows([make_window("s", T0 + 86400 + 7 * 3600.0, rng, n=77)])  # day 2 now has 2 files
    store.write_windows([make_window("t", T0 + h * 3600.0, rng) for h in range(0, 72, 2)])

    def direct(stream, start, end):
        ws = store.read_windows(stream, start, end)
        return (sum(w.n_images for w in ws), sum(w.presence for w in ws), sum(w.weight_sum for w in ws),
                sum(w.weight_sq_sum for w in ws))

    ranges = [(None, None), (T0, T0 + 3 * 86400), (T0 + 5 * 3600, T0 + 2 * 86400 + 3600), (T0 + 86400, T0 + 2 * 86400)]
    for compacted in (False, True):
        for stream in (None, "s", "t"):
            for start, end in ranges:
                header, presence, wsum, wsq = store.sum_windows(streams=stream, start=start, end=end)
                n, p, w, w2 = direct(stream, start, end)
                assert int(np.sum(header["n_images"].to_numpy())) == n
                np.testing.assert_array_equal(presence, p)
                np.testing.assert_allclose(wsum, w, rtol=1e-12)
                np.testing.assert_allclose(wsq, w2, rtol=1e-12)
        valid = [
            r for r in (store.root / "window_rollups").rglob("*.parquet")
            if [f.name for f in store._files(store.root / "windows" / r.parent.parent.name / r.parent.name)] == [r.name]
        ]
        assert len(valid) == (5 if not compacted else 6)  # day 2 of "s" gets a valid rollup again when compacted
        store.compact()


def test_merged_window_sums_a_range_into_one_reference(store: HistoryStore) -> None:
    rng = np.random.default_rng(13)
    windows = [make_window("s", T0 + h * 3600.0, rng) for h in range(30)]
    store.write_windows(windows)
    ref = store.merged_window("s", T0 + 2 * 3600, T0 + 26 * 3600)
    part = windows[2:26]
    assert (ref.start, ref.end, ref.n_images) == (T0 + 2 * 3600, T0 + 26 * 3600, sum(w.n_images for w in part))
    np.testing.assert_array_equal(ref.presence, sum(w.presence for w in part))
    np.testing.assert_allclose(ref.weight_sq_sum, sum(w.weight_sq_sum for w in part))
    assert ref.l0_sum == pytest.approx(sum(w.l0_sum for w in part)) and ref.concept_space == SPACE
    with pytest.raises(history.NoDataError, match="no images"):
        store.merged_window("s", T0 - 86400, T0)


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


def test_docstring_examples_run() -> None:
    import doctest

    import monitor.history.analysis

    for module in (history, monitor.history.analysis):
        result = doctest.testmod(module)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_bench_history_small_run_reports_its_documented_keys(capsys) -> None:
    from monitor.cli.main import main

    assert main(["bench", "history", "--json", "--images", "20000", "--concepts", "300", "--days", "4",
                 "--repeats", "1"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["windows"] == 96 and result["planted_concept_rank"] == 1
    doc = (Path(__file__).parents[3] / "docs" / "benchmarks.md").read_text()
    section = doc.split("<!-- section: history -->")[1].split("<!-- section:")[0]
    undocumented = [k for k in result if f"`{k}`" not in section]
    assert not undocumented, f"keys missing from docs/benchmarks.md: {undocumented}"


# ---------------------------------------------------------------------- object-store roots (pyarrow.fs)


def _fill(store: HistoryStore, rng: np.random.Generator) -> tuple[list[WindowSummary], list[Alarm], SparseCodes, list]:
    """Two days of windows written one file per window (so compaction has work), alarms and per-image codes."""
    windows = [make_window(s, T0 + h * 3600.0, rng) for s in ("cam/7", "b") for h in range(0, 48, 6)]
    for w in windows:
        store.write_windows([w])
    alarms = [_alarm("cam/7", T0 + i * 3600.0) for i in range(3)]
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


def test_alarms_keep_when_they_fired_and_older_files_read_back_without_it(store: HistoryStore) -> None:
    import dataclasses

    fired = dataclasses.replace(_alarm("a", T0), event_time=T0 + 12.5, item_offset=20_350)
    store.write_alarms([fired])
    back = store.read_alarms("a")
    assert [(a.event_time, a.item_offset) for a in back] == [(T0 + 12.5, 20_350)]
    # a file written before the two columns existed: the same alarm without them
    f = next((store.root / "alarms").rglob("*.parquet"))
    old = pq.read_table(f)
    pq.write_table(old.drop_columns(["event_time", "item_offset"]), f)
    again = store.read_alarms("a")
    assert len(again) == 1 and math.isnan(again[0].event_time) and again[0].item_offset == -1
