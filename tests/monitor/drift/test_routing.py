"""Routing a batch held as columns: rows grouped by stream in order of first appearance (a name table that lists a
stream twice is one stream), and a monitor fed columns computing exactly what per-stream monitors fed directly do."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import monitor.drift.routing as routing
from monitor.drift.monitor import ConceptMonitor, DriftConfig, MonitorConfig, ReferenceConfig, StreamMonitor, \
    WindowConfig
from monitor.drift.routing import stream_groups
from monitor.records import SparseCodes
from monitor.synthetic.codes import Shift, concept_profile, synthetic_stream


def test_docstring_examples_run():
    assert doctest.testmod(routing, raise_on_error=True).attempted > 0


@pytest.mark.parametrize("seed", range(5))
def test_groups_match_a_row_by_row_grouping(seed):
    rng = np.random.default_rng(seed)
    names = ["a", "b", "c", "b", "d"]  # "b" listed twice: rows of index 1 and 3 are one stream
    index = rng.integers(0, len(names), size=int(rng.integers(1, 60)))
    expected: dict[str, list[int]] = {}
    for r, k in enumerate(index.tolist()):
        expected.setdefault(names[k], []).append(r)
    got = stream_groups(index, names)
    assert [s for s, _ in got] == list(expected)
    for stream, rows in got:
        assert (list(range(len(index))) if rows is None else rows.tolist()) == expected[stream]
    assert stream_groups(np.zeros(0, dtype=np.int32), names) == []


def test_columns_fed_monitor_equals_each_stream_fed_alone():
    c = 300
    names = [f"concept{j}" for j in range(c)]
    config = MonitorConfig(window=WindowConfig(size=400), reference=ReferenceConfig(n_images=1500),
                           drift=DriftConfig(ert=20_000))
    a = list(synthetic_stream(c, 4000, [Shift(7, 2500, "prevalence", 5.0)], seed=1, mean_l0=12, batch_size=200,
                              stream="a", profile=concept_profile(c, 12, seed=0)))
    b = list(synthetic_stream(c, 4000, seed=2, mean_l0=12, batch_size=200, stream="b"))
    mixed = ConceptMonitor(names, config)
    alone = {"a": StreamMonitor(names, config, stream="a"), "b": StreamMonitor(names, config, stream="b")}
    got, want = [], []
    rng = np.random.default_rng(3)
    for (ca, ia), (cb, ib) in zip(a, b):
        order = rng.permutation(len(ca) + len(cb))
        codes = SparseCodes.concat([ca, cb]).take(order)
        ts = np.array([m.timestamp for m in ia + ib])[order]
        index = np.array([0] * len(ca) + [2] * len(cb))[order]  # one table names "b" twice
        got += mixed.update_columns(codes, ts, index, ["a", "b", "b"] if rng.random() < 0.5 else ["a", "x", "b"])
        for stream, cs, items in (("a", ca, ia), ("b", cb, ib)):
            mask = np.isin(order, np.arange(len(ca)) if stream == "a" else np.arange(len(ca), len(order)))
            rows = order[mask] - (0 if stream == "a" else len(ca))  # this stream's rows, in batch order
            want += alone[stream].update(cs.take(rows), [items[r] for r in rows.tolist()])
    assert sorted(mixed.streams()) == ["a", "b"]
    assert any(x.stream == "a" and x.concept == "concept7" for x in got)
    assert sorted(got, key=repr) == sorted(want, key=repr)
    for stream in ("a", "b"):
        assert mixed.monitors[stream].to_bytes() == alone[stream].to_bytes()
