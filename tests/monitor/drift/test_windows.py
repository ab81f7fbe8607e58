"""Tumbling windows by count and by event time, the late-event rule, sliding views and the reference modes."""

from __future__ import annotations

import math

import numpy as np
import pytest

from monitor.synthetic.codes import synthetic_stream
from monitor.records import SparseCodes
from monitor.drift.stats import WindowStats
from monitor.errors import ConfigError
from monitor.drift.windows import (
    ClosedWindow,
    Reference,
    ReferenceConfig,
    TumblingWindows,
    WindowConfig,
    WindowRing,
)

C = 200


def _stream(n=2000, batch=300, seed=0, rate=10.0):
    return [(codes, np.array([it.timestamp for it in items]))
            for codes, items in synthetic_stream(C, n, seed=seed, mean_l0=8, batch_size=batch, rate=rate)]


def _all(batches):
    codes = [c for c, _ in batches]
    dense = np.concatenate([c.to_dense() for c in codes])
    ts = np.concatenate([t for _, t in batches])
    return dense, ts


def _codes_at(times, n_concepts=C, concept=0):
    """One image per timestamp, each with concept ``concept`` at weight 1."""
    n = len(times)
    dense = np.zeros((n, n_concepts), np.float32)
    dense[:, concept] = 1.0
    return SparseCodes.from_dense(dense, fidelity=np.ones(n), l1=0.25), np.asarray(times, dtype=np.float64)


def test_count_windows_close_every_n_images_with_exact_statistics():
    batches = _stream(2000, batch=300)
    tw = TumblingWindows(C, WindowConfig(kind="count", size=500))
    closed = []
    for codes, ts in batches:
        closed += tw.add(codes, ts)
    assert [w.stats.n_images for w in closed] == [500] * 4
    assert [w.index for w in closed] == [0, 1, 2, 3]
    dense, ts = _all(batches)
    for w in closed:
        part = dense[500 * w.index: 500 * (w.index + 1)]
        np.testing.assert_array_equal(w.stats.concepts.presence, (part > 0).sum(0))
        np.testing.assert_allclose(w.stats.concepts.weight_sum, part.sum(0, dtype=np.float64), rtol=1e-10)
        assert w.start == ts[500 * w.index] and w.end > ts[500 * w.index + 499]
    assert tw.flush() == []


def test_flush_closes_the_partial_count_window():
    batches = _stream(1200, batch=400)
    tw = TumblingWindows(C, WindowConfig(kind="count", size=500))
    for codes, ts in batches:
        tw.add(codes, ts)
    rest = tw.flush()
    assert [w.stats.n_images for w in rest] == [200] and math.isfinite(rest[0].end)


def test_time_windows_group_by_event_time_not_arrival():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=10.0, origin=0.0))
    codes, ts = _codes_at([1.0, 12.0, 3.0, 15.0])  # out of order inside one batch: not late
    closed = tw.add(codes, ts)  # the batch's watermark (15) passes the end of [0, 10)
    assert [(w.start, w.end, w.stats.n_images) for w in closed] == [(0.0, 10.0, 2)]
    closed = tw.add(*_codes_at([25.0]))
    assert [(w.start, w.end, w.stats.n_images) for w in closed] == [(10.0, 20.0, 2)]
    assert tw.n_late == 0
    assert [(w.start, w.stats.n_images) for w in tw.flush()] == [(20.0, 1)]


def test_late_event_goes_to_oldest_open_window_and_is_counted():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=10.0))
    tw.add(*_codes_at([1.0, 2.0]))
    closed = tw.add(*_codes_at([11.0]))  # watermark 11 closes [0, 10)
    assert [w.stats.n_images for w in closed] == [2]
    tw.add(*_codes_at([5.0]))  # its window is closed: late
    assert tw.n_late == 1 and tw.n_dropped == 0
    rest = tw.flush()
    assert [(w.start, w.stats.n_images, w.n_late) for w in rest] == [(10.0, 2, 1)]


def test_late_event_drop_policy_counts_but_leaves_statistics():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=10.0, late_policy="drop"))
    tw.add(*_codes_at([1.0]))
    tw.add(*_codes_at([11.0]))
    tw.add(*_codes_at([5.0]))
    assert (tw.n_late, tw.n_dropped, tw.n_images) == (1, 1, 2)
    assert [w.stats.n_images for w in tw.flush()] == [1]


def test_allowed_lateness_keeps_a_window_open():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=10.0, allowed_lateness=5.0))
    tw.add(*_codes_at([1.0]))
    assert tw.add(*_codes_at([12.0])) == []  # watermark 7: [0, 10) still open
    assert tw.add(*_codes_at([9.0])) == [] and tw.n_late == 0
    closed = tw.add(*_codes_at([16.0]))  # watermark 11
    assert [(w.start, w.stats.n_images) for w in closed] == [(0.0, 2)]


def test_open_windows_are_bounded_whatever_the_lateness():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=1.0, allowed_lateness=1e9, max_open=4))
    closed = []
    for t in range(20):
        closed += tw.add(*_codes_at([t + 0.5]))
    assert len(tw.open_windows()) <= 4 and len(closed) == 16


def test_a_clock_far_ahead_does_not_close_every_window():
    tw = TumblingWindows(C, WindowConfig(kind="time", size=10.0, max_skew=3600.0))
    closed = tw.add(*_codes_at([1.0, 2.0, 4_000_000_000.0, 3.0]))  # one bad clock in the batch
    assert closed == [] and tw.n_skewed == 1 and tw.n_late == 0
    closed = tw.add(*_codes_at([12.0, 13.0]))
    assert [(w.start, w.stats.n_images) for w in closed] == [(0.0, 4)]  # counted where its batch was
    # a genuine jump moves the whole batch: nothing is skewed
    closed = tw.add(*_codes_at([90_000.0, 90_001.0]))
    assert tw.n_skewed == 1 and [w.start for w in closed] == [10.0]


def test_window_state_round_trip_mid_window_continues_identically():
    batches = _stream(2000, batch=300)
    cfg = WindowConfig(kind="time", size=30.0)
    a = TumblingWindows(C, cfg)
    closed_a = []
    for codes, ts in batches:
        closed_a += a.add(codes, ts)
    b = TumblingWindows(C, cfg)
    closed_b = []
    for i, (codes, ts) in enumerate(batches):
        closed_b += b.add(codes, ts)
        if i == 3:
            b = TumblingWindows.from_state(b.state_dict())
    assert [(w.index, w.stats) for w in closed_a] == [(w.index, w.stats) for w in closed_b]


def test_ring_view_merges_the_newest_windows():
    ring = WindowRing(3)
    stats = []
    for i, (codes, ts) in enumerate(_stream(1500, batch=300)):
        ws = WindowStats(C)
        ws.update(codes, ts)
        stats.append(ws)
        ring.push(ClosedWindow(i, float(ts.min()), float(ts.max()), ws))
    assert len(ring) == 3
    merged, start, end = ring.view(2)
    assert merged == stats[3] + stats[4]
    merged, _, _ = ring.view(1, skip=1)
    assert merged == stats[3]
    assert ring.view(1, skip=3) is None


def test_fixed_reference_is_exactly_the_first_n_images():
    batches = _stream(2000, batch=300)
    ref = Reference(C, ReferenceConfig(mode="fixed", n_images=700))
    taken = [ref.offer(codes, ts) for codes, ts in batches]
    assert taken == [300, 300, 100, 0, 0, 0, 0]
    dense, _ = _all(batches)
    np.testing.assert_array_equal(ref.fixed.concepts.presence, (dense[:700] > 0).sum(0))
    assert ref.get(WindowRing(1), 1)[0] is ref.fixed


def test_trailing_reference_is_the_windows_before_the_view():
    ring = WindowRing(4)
    stats = []
    for i, (codes, ts) in enumerate(_stream(1500, batch=300)):
        ws = WindowStats(C)
        ws.update(codes, ts)
        stats.append(ws)
        ring.push(ClosedWindow(i, float(ts.min()), float(ts.max()), ws))
    ref = Reference(C, ReferenceConfig(mode="trailing", trailing_windows=3))
    got, _, _ = ref.get(ring, view=1)
    assert got == stats[1] + stats[2] + stats[3]
    assert ref.get(ring, view=2) is None  # needs 5 windows


def test_switching_reference_mode_keeps_every_reference():
    batches = _stream(1000, batch=250)
    ref = Reference(C, ReferenceConfig(mode="trailing", n_images=500, trailing_windows=2))
    for codes, ts in batches:
        ref.offer(codes, ts)  # the fixed reference accumulates even while trailing is in use
    fixed_before = ref.fixed.copy()
    loaded = fixed_before.to_summary("s", 0.0, 1.0)
    ref.load(loaded)
    assert ref.mode == "history" and ref.get(WindowRing(1), 1)[1:] == (0.0, 1.0)
    ref.set_mode("fixed")
    assert ref.get(WindowRing(1), 1)[0] == fixed_before
    ref.set_mode("history")
    assert ref.get(WindowRing(1), 1)[0].concepts.presence.tolist() == fixed_before.concepts.presence.tolist()
    back = Reference.from_state(ref.state_dict())
    assert back.fixed == ref.fixed and back.history == ref.history and back.mode == "history"


@pytest.mark.parametrize("kwargs, match", [
    ({"kind": "hourly"}, "kind must be one of"),
    ({"size": 0}, "size must be a positive"),
    ({"kind": "count", "size": 2.5}, "positive integer"),
    ({"late_policy": "keep"}, "late_policy must be one of"),
    ({"allowed_lateness": -1}, "allowed_lateness"),
])
def test_window_config_names_the_bad_parameter(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WindowConfig(**kwargs)


def test_reference_config_names_the_bad_parameter():
    with pytest.raises(ConfigError, match="mode must be one of"):
        ReferenceConfig(mode="rolling")
