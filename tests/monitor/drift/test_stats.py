"""Streaming statistics: each against numpy on the same data, merge == sequential for every statistic, and
pickle-free save/load round trips."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import monitor.drift.stats as stats_mod
from monitor.synthetic.codes import synthetic_stream
from monitor.records import SparseCodes
from monitor.drift import state
from monitor.drift.stats import ConceptMoments, Moments, WindowStats

C = 400


def _batches(n_images=3000, seed=0, batch=250):
    return list(synthetic_stream(C, n_images, seed=seed, mean_l0=12, batch_size=batch))


def _dense(batches):
    return np.concatenate([codes.to_dense().astype(np.float64) for codes, _ in batches])


def _split(batches, k, seed=0):
    """Assign whole batches to k partials at random (several workers' share of the same stream)."""
    rng = np.random.default_rng(seed)
    owner = rng.integers(0, k, len(batches))
    return [[b for b, o in zip(batches, owner) if o == i] for i in range(k)]


def test_moments_match_numpy():
    x = np.random.default_rng(1).normal(size=1000)
    m = Moments()
    for chunk in np.array_split(x, 7):
        m.update(chunk)
    got = m.get()
    assert got["n"] == 1000
    assert got["mean"] == pytest.approx(x.mean(), rel=1e-12)
    assert got["var"] == pytest.approx(x.var(), rel=1e-9)
    assert (got["min"], got["max"]) == (x.min(), x.max())


def test_concept_moments_match_numpy_on_dense_codes():
    batches = _batches()
    dense = _dense(batches)
    cm = ConceptMoments(C)
    for codes, _ in batches:
        cm.update(codes)
    got = cm.get()
    assert got["n_images"] == len(dense)
    np.testing.assert_allclose(got["weight_sum"], dense.sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got["weight_sq_sum"], (dense ** 2).sum(0), rtol=1e-10, atol=1e-12)
    np.testing.assert_array_equal(got["presence"], (dense > 0).sum(0))
    np.testing.assert_array_equal(got["weight_max"], dense.max(0))
    np.testing.assert_allclose(got["prevalence"], (dense > 0).mean(0))
    np.testing.assert_allclose(got["mean"], dense.mean(0), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got["var"], dense.var(0), rtol=1e-6, atol=1e-12)


def test_window_stats_match_numpy_including_fidelity_l0_and_time():
    batches = _batches()
    ws = WindowStats(C)
    for codes, items in batches:
        ws.update(codes, np.array([it.timestamp for it in items]))
    fid = np.concatenate([codes.fidelity for codes, _ in batches]).astype(np.float64)
    l0 = np.concatenate([codes.l0 for codes, _ in batches]).astype(np.float64)
    ts = np.array([it.timestamp for _, items in batches for it in items])
    got = ws.get()
    assert got["fidelity"]["mean"] == pytest.approx(fid.mean(), rel=1e-12)
    assert got["fidelity"]["var"] == pytest.approx(fid.var(), rel=1e-8)
    assert (got["fidelity"]["min"], got["fidelity"]["max"]) == (fid.min(), fid.max())
    assert got["l0"]["mean"] == pytest.approx(l0.mean(), rel=1e-12)
    assert (got["time"]["min"], got["time"]["max"]) == (ts.min(), ts.max())
    summary = ws.to_summary("cam", concept_space="space-1")
    dense = _dense(batches)
    np.testing.assert_allclose(summary.prevalence, (dense > 0).mean(0))
    np.testing.assert_allclose(summary.mean_activation, dense.mean(0), rtol=1e-10, atol=1e-15)
    assert summary.fidelity_sum == pytest.approx(fid.sum(), rel=1e-12)
    assert summary.l0_sq_sum == pytest.approx((l0 ** 2).sum(), rel=1e-12)
    assert summary.start == ts.min() and summary.end > ts.max() and summary.concept_space == "space-1"


def test_row_selection_equals_updating_the_taken_rows():
    codes, _ = _batches(500)[0]
    mask = np.random.default_rng(3).random(len(codes)) < 0.4
    a, b, c = ConceptMoments(C), ConceptMoments(C), ConceptMoments(C)
    a.update(codes, rows=mask)
    b.update(codes.take(np.flatnonzero(mask)))
    c.update(codes, rows=np.flatnonzero(mask))
    assert a == b == c


@pytest.mark.parametrize("k", [2, 3, 5])
def test_merge_equals_sequential_for_every_statistic(k):
    batches = _batches(seed=k)
    seq = {"moments": Moments(), "concepts": ConceptMoments(C), "window": WindowStats(C)}
    for codes, items in batches:
        seq["moments"].update(codes.fidelity)
        seq["concepts"].update(codes)
        seq["window"].update(codes, np.array([it.timestamp for it in items]))
    parts = []
    for share in _split(batches, k, seed=k):
        p = {"moments": Moments(), "concepts": ConceptMoments(C), "window": WindowStats(C)}
        for codes, items in share:
            p["moments"].update(codes.fidelity)
            p["concepts"].update(codes)
            p["window"].update(codes, np.array([it.timestamp for it in items]))
        parts.append(p)
    for name in seq:
        merged = parts[0][name].copy()
        for p in parts[1:]:
            merged += p[name]  # in-place merge
        summed = parts[0][name]
        for p in parts[1:]:
            summed = summed + p[name]  # new object each time
        for candidate in (merged, summed):
            _assert_state_close(candidate.state_dict(), seq[name].state_dict())


def _assert_state_close(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            _assert_state_close(a[key], b[key])
        elif isinstance(a[key], np.ndarray) and a[key].dtype.kind == "f":
            np.testing.assert_allclose(a[key], b[key], rtol=1e-12, atol=1e-15)  # float sums differ only in order
        elif isinstance(a[key], float):
            assert a[key] == pytest.approx(b[key], rel=1e-12)
        else:
            np.testing.assert_array_equal(a[key], b[key])  # counts, min, max: exact


def test_plus_leaves_operands_untouched():
    a, b = ConceptMoments(C), ConceptMoments(C)
    a.update(_batches(250)[0][0])
    before = a.copy()
    _ = a + b
    assert a == before


def test_merge_rejects_other_concept_space_and_types():
    with pytest.raises(ValueError, match="has 401 concepts, these statistics have 400"):
        ConceptMoments(C).merge(ConceptMoments(C + 1))
    with pytest.raises(TypeError, match="Moments"):
        ConceptMoments(C).merge(Moments())
    codes = SparseCodes.from_dense(np.ones((2, 3)), fidelity=[1, 1], l1=0.25)
    with pytest.raises(ValueError, match="codes has 3 concepts"):
        ConceptMoments(C).update(codes)


@pytest.mark.parametrize("cls", [Moments, ConceptMoments, WindowStats])
def test_save_load_round_trip_without_pickle(tmp_path, cls):
    stat = cls() if cls is Moments else cls(C)
    for codes, items in _batches(1000):
        if cls is Moments:
            stat.update(codes.fidelity)
        elif cls is ConceptMoments:
            stat.update(codes)
        else:
            stat.update(codes, np.array([it.timestamp for it in items]))
    path = tmp_path / "stat.npz"
    stat.save(path)
    back = cls.load(path)
    assert back == stat
    with np.load(path, allow_pickle=False) as npz:  # the file needs no pickle to read
        assert all(npz[k].dtype != object for k in npz.files)


def test_empty_statistics_round_trip_and_load_checks_class(tmp_path):
    m = Moments()
    m.save(tmp_path / "m.npz")
    back = Moments.load(tmp_path / "m.npz")
    assert back.n == 0 and math.isinf(back.min) and back == m
    with pytest.raises(ValueError, match="expected 'ConceptMoments'"):
        ConceptMoments.load(tmp_path / "m.npz")


def test_state_bytes_keep_nested_types():
    blob = {"a": 1, "b": 2.5, "c": "x", "d": None, "e": [1, "two"], "f": {"g": np.arange(3), "h": {}},
            "i": True, "names": np.array(["snow", "beach"])}
    back = state.decode(state.encode(blob))
    assert back["a"] == 1 and back["b"] == 2.5 and back["c"] == "x" and back["d"] is None
    assert back["e"] == [1, "two"] and back["f"]["h"] == {} and back["i"] is True
    np.testing.assert_array_equal(back["f"]["g"], np.arange(3))
    assert back["names"].tolist() == ["snow", "beach"]


def test_summary_round_trip_keeps_the_shared_fields():
    ws = WindowStats(C)
    for codes, items in _batches(1000):
        ws.update(codes, np.array([it.timestamp for it in items]))
    summary = ws.to_summary("s", 10.0, 20.0)
    back = WindowStats.from_summary(summary).to_summary("s", 10.0, 20.0)
    for f in ("n_images", "fidelity_sum", "fidelity_sq_sum", "fidelity_min", "fidelity_max", "l0_sum", "l0_sq_sum"):
        assert getattr(back, f) == getattr(summary, f)
    np.testing.assert_array_equal(back.presence, summary.presence)
    # without a stored max the bound sqrt(sum of squares) stands in, which is never below the true max
    assert np.all(WindowStats.from_summary(summary).concepts.weight_max >= ws.concepts.weight_max - 1e-12)


def test_update_cost_does_not_touch_untouched_concepts():
    # O(nonzeros): concepts absent from the batch keep exactly their previous arrays' values (and a huge concept
    # space is cheap to update)
    big = ConceptMoments(2_000_000)
    codes = SparseCodes(indptr=np.array([0, 1, 2, 2]), indices=np.array([5, 1_999_999], dtype=np.int32),
                        values=np.array([0.5, 0.25], dtype=np.float32), fidelity=np.ones(3, np.float32),
                        l1=np.ones(3, np.float32), n_concepts=2_000_000)
    big.update(codes)
    assert big.n_images == 3 and big.presence.sum() == 2 and big.weight_sum[1_999_999] == 0.25


def test_module_docstring_examples_run():
    assert doctest.testmod(stats_mod).failed == 0
