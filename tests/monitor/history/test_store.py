"""Tests for monitor.history.store: window, alarm and code round trips, sparse layout, last-write-wins, refused
windows, atomic writes under failure, summed and merged reads, describe, the docstrings and the history bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

import monitor.atomic as atomic
import monitor.history.store as history
from monitor.errors import ConfigError
from monitor.history.store import SCHEMA_VERSION, HistoryStore
from monitor.records import ItemMeta, SparseCodes
from tests.monitor.history.helpers import NAMES, SPACE, T0, assert_same_window, make_alarm, make_window


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


def test_alarms_round_trip_and_time_filter(store: HistoryStore) -> None:
    alarms = [make_alarm("a", T0 + i * 7200.0) for i in range(30)]
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


def test_docstring_examples_run() -> None:
    import doctest

    import monitor.history
    import monitor.history.analysis
    import monitor.history.schema

    for module in (history, monitor.history.analysis, monitor.history.schema, monitor.history):
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


def test_alarms_keep_when_they_fired_and_older_files_read_back_without_it(store: HistoryStore) -> None:
    import dataclasses
    import math

    fired = dataclasses.replace(make_alarm("a", T0), event_time=T0 + 12.5, item_offset=20_350)
    store.write_alarms([fired])
    back = store.read_alarms("a")
    assert [(a.event_time, a.item_offset) for a in back] == [(T0 + 12.5, 20_350)]
    # a file written before the two columns existed: the same alarm without them
    f = next((store.root / "alarms").rglob("*.parquet"))
    old = pq.read_table(f)
    pq.write_table(old.drop_columns(["event_time", "item_offset"]), f)
    again = store.read_alarms("a")
    assert len(again) == 1 and math.isnan(again[0].event_time) and again[0].item_offset == -1
