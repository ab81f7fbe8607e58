"""Drift tests: the tail bounds are valid (never below the exact p-value), stationary streams stay quiet, planted
shifts are named with the right direction, hysteresis does not flap."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from monitor.errors import ConfigError
from scipy.spatial.distance import jensenshannon
from scipy.stats import hypergeom

import monitor.drift.detectors as drift_mod
from monitor.synthetic.codes import Shift, concept_profile, synthetic_stream
from monitor.drift.detectors import (
    HYPOTHESES,
    AlarmBook,
    ConceptDriftTest,
    DriftConfig,
    StepResult,
    activation_evidence,
    js_divergence,
    prevalence_evidence,
)
from monitor.drift.stats import WindowStats


@pytest.mark.parametrize("n_ref, n_cur", [(10_000, 1_000), (2_000, 2_000), (500, 50)])
def test_prevalence_bound_is_never_below_the_exact_hypergeometric_tail(n_ref, n_cur):
    rng = np.random.default_rng(n_cur)
    x_ref = rng.integers(0, n_ref // 5, 400)
    x_cur = rng.integers(0, n_cur // 3, 400)
    up, down = prevalence_evidence(x_ref, n_ref, x_cur, n_cur)
    s = x_ref + x_cur
    exact_up = hypergeom.sf(x_cur - 1, n_ref + n_cur, s, n_cur)
    exact_down = hypergeom.cdf(x_cur, n_ref + n_cur, s, n_cur)
    assert np.all(np.exp(-up) >= exact_up * (1 - 1e-9))
    assert np.all(np.exp(-down) >= exact_down * (1 - 1e-9))
    assert np.all((up == 0) | (down == 0))  # one direction at a time


def test_activation_bound_holds_under_random_splits():
    # Conditional on the pooled values, a stationary current window is a random subset: the fraction of splits
    # with evidence >= L must not exceed exp(-L).
    rng = np.random.default_rng(0)
    n_ref, n_cur = 1000, 100
    pooled = np.where(rng.random(n_ref + n_cur) < 0.05, rng.gamma(2.0, 0.05, n_ref + n_cur), 0.0)
    evid = []
    for _ in range(4000):
        perm = rng.permutation(len(pooled))
        cur, ref = pooled[perm[:n_cur]], pooled[perm[n_cur:]]
        up, down = activation_evidence([ref.sum()], [(ref ** 2).sum()], n_ref, [ref.max()],
                                       [cur.sum()], [(cur ** 2).sum()], n_cur, [cur.max()])
        evid.append(max(up[0], down[0]))
    evid = np.array(evid)
    for level in (0.5, 1.0, 2.0, 3.0):
        assert np.mean(evid >= level) <= math.exp(-level)
    assert evid.max() > 0  # the test is not vacuous


def test_activation_evidence_grows_with_the_shift_and_points_the_right_way():
    n_ref, n_cur = 5000, 1000
    rng = np.random.default_rng(1)
    ref = np.where(rng.random(n_ref) < 0.05, rng.gamma(2.0, 0.05, n_ref), 0.0)
    evidence = []
    for factor in (1.0, 2.0, 4.0):
        cur = np.where(rng.random(n_cur) < 0.05, factor * rng.gamma(2.0, 0.05, n_cur), 0.0)
        up, down = activation_evidence([ref.sum()], [(ref ** 2).sum()], n_ref, [ref.max()],
                                       [cur.sum()], [(cur ** 2).sum()], n_cur, [cur.max()])
        evidence.append(up[0])
        assert down[0] == 0 or factor == 1.0
    # the bound pays for the range (the shifted window's largest weight), so it grows slowly: see docs/drift.md
    assert evidence[0] < 1 < evidence[1] < evidence[2] and evidence[2] > 10


def _window(codes_iter):
    ws = WindowStats(codes_iter[0][0].n_concepts)
    for codes, items in codes_iter:
        ws.update(codes, np.array([it.timestamp for it in items]))
    return ws


def test_refined_prevalence_evidence_is_the_exact_tail_near_the_threshold():
    c = 300
    batches = list(synthetic_stream(c, 6000, [Shift(4, 5000, "prevalence", 6.0)], seed=2, mean_l0=10,
                                    batch_size=1000))
    ref, cur = _window(batches[:5]), _window(batches[5:])
    res = ConceptDriftTest(DriftConfig(ert=100)).run(ref, cur)
    j = 4
    exact = -hypergeom.logsf(cur.concepts.presence[j] - 1, 6000, ref.concepts.presence[j] + cur.concepts.presence[j],
                             1000)
    assert res.evidence[0, j] == pytest.approx(exact, rel=1e-6)
    assert res.fire[0, j] and not res.fire[1, j]


def test_threshold_is_log_of_ert_times_tested_hypotheses():
    t = ConceptDriftTest(DriftConfig(ert=500))
    assert t.threshold(40_000) == pytest.approx(math.log(500 * 40_000))


def _run_stream(c, n_images, shifts, *, ert, ref_n=10_000, window=1000, seed=0, mean_l0=20):
    ref = WindowStats(c)
    book = AlarmBook("s", [f"c{j}" for j in range(c)], DriftConfig(ert=ert))
    tester = ConceptDriftTest(DriftConfig(ert=ert))
    alarms, results = [], []
    for i, (codes, items) in enumerate(synthetic_stream(c, n_images, shifts, seed=seed, mean_l0=mean_l0,
                                                        batch_size=window)):
        ts = np.array([it.timestamp for it in items])
        if (i + 1) * window <= ref_n:
            ref.update(codes, ts)
            continue
        cur = WindowStats(c)
        cur.update(codes, ts)
        res = tester.run(ref, cur)
        results.append(res)
        alarms += book.step(res, (ts[0], ts[-1]), (0.0, 1.0))
    return alarms, results


def test_stationary_stream_raises_no_alarm_within_the_bound():
    # 3000 concepts, 60 steps at ERT 10,000: a false alarm has probability <= 60/10,000 here
    alarms, results = _run_stream(3000, 70_000, [], ert=10_000, seed=5)
    assert alarms == []
    assert len(results) == 60 and all(r.n_hypotheses > 4000 for r in results)
    assert max(float(r.concept_scores.max()) for r in results) < results[0].threshold


def test_shifted_stream_alarms_exactly_on_the_planted_concepts_with_direction():
    c = 3000
    prof = concept_profile(c, 20, seed=6)
    order = np.argsort(prof.prevalence)[::-1]
    up, down, act = int(order[10]), int(order[20]), int(order[30])  # well-supported concepts
    shifts = [Shift(up, 14_000, "prevalence", 4.0), Shift(down, 14_000, "prevalence", 0.1),
              Shift(act, 14_000, "activation", 4.0)]
    alarms, _ = _run_stream(c, 20_000, shifts, ert=10_000, seed=6)
    firing = {(a.concept_index, a.kind, a.direction) for a in alarms if a.state == "firing"}
    assert {j for j, _, _ in firing} == {up, down, act}
    assert (up, "prevalence", "up") in firing and (down, "prevalence", "down") in firing
    assert (act, "activation", "up") in firing and (act, "prevalence", "up") not in firing
    assert all(d == "up" for j, _, d in firing if j in (up, act))
    assert all(d == "down" for j, _, d in firing if j == down)
    first = next(a for a in alarms if a.concept_index == up)
    assert first.current_prevalence > 2 * first.reference_prevalence and first.effect_size > 0
    assert first.p_value == pytest.approx(math.exp(-first.score)) and first.concept == f"c{up}"


def _result(evidence_row0: float, threshold: float = 15.0, c: int = 3) -> StepResult:
    ev = np.zeros((4, c))
    ev[0, 1] = evidence_row0
    z = np.full(c, 0.1)
    return StepResult(ev, ev > 0, ev >= threshold, threshold, 4 * c, z, z * 2, z, z, z, 0.0, 100, 10)


def test_hysteresis_fires_once_while_evidence_hovers_around_the_threshold():
    book = AlarmBook("s", ["a", "b", "c"], DriftConfig(ert=100, clear_ratio=0.5, clear_steps=2))
    states = []
    for ev in [16, 14, 16, 14, 16, 8, 16, 14]:  # hovers: never twice in a row under 7.5
        states += [(a.concept, a.state) for a in book.step(_result(ev), (0, 1), (0, 1))]
    assert states == [("b", "firing")]
    assert [a.concept for a in book.active] == ["b"]


def test_hysteresis_resolves_after_consecutive_quiet_steps_then_can_fire_again():
    book = AlarmBook("s", ["a", "b", "c"], DriftConfig(ert=100, clear_ratio=0.5, clear_steps=2))
    states = []
    for ev in [20, 5, 20, 5, 5, 3, 20]:
        states += [a.state for a in book.step(_result(ev), (0, 1), (0, 1))]
    assert states == ["firing", "resolved", "firing"]


def test_book_state_round_trip_keeps_active_alarms():
    book = AlarmBook("s", ["a", "b", "c"], DriftConfig(ert=100))
    book.step(_result(20), (0, 1), (0, 1))
    other = AlarmBook("s", ["a", "b", "c"], DriftConfig(ert=100))
    other.load_state_dict(book.state_dict())
    assert other.active == book.active and other.step(_result(20), (0, 1), (0, 1)) == []


def _counts(n_images: int, presence: list[int], weight: float = 0.5) -> WindowStats:
    st = WindowStats(len(presence))
    idx = np.repeat(np.arange(len(presence)), presence)
    st.concepts.update_arrays(n_images, idx, np.full(len(idx), weight))
    return st


def test_min_prevalence_change_mutes_significant_but_tiny_prevalence_moves_only():
    # concept 0: 1.0% -> 1.3%, overwhelming evidence at these sizes but a 0.3-point move; concept 1: 10% -> 20%
    ref, cur = _counts(1_000_000, [10_000, 100_000]), _counts(200_000, [2_600, 40_000])
    plain = ConceptDriftTest(DriftConfig(ert=1000)).run(ref, cur)
    assert plain.fire[0, 0] and plain.fire[0, 1]
    floored = ConceptDriftTest(DriftConfig(ert=1000, min_prevalence_change=0.005)).run(ref, cur)
    assert not floored.fire[0, 0] and floored.fire[0, 1]
    np.testing.assert_array_equal(floored.evidence, plain.evidence)  # the floor gates alarms, not the evidence
    np.testing.assert_array_equal(floored.fire[2:], plain.fire[2:])  # activation rows are untouched
    assert ConceptDriftTest(DriftConfig(ert=1000, min_prevalence_change=0.002)).run(ref, cur).fire[0, 0]


def _moved(evidence_row0: float, ref_p: float, cur_p: float, threshold: float = 15.0) -> StepResult:
    res = _result(evidence_row0, threshold)
    res.ref_prevalence = np.full(3, ref_p)
    res.cur_prevalence = np.full(3, cur_p)
    return res


def test_prevalence_alarm_resolves_when_the_change_falls_under_the_floor_band():
    cfg = DriftConfig(ert=100, clear_ratio=0.5, clear_steps=2, min_prevalence_change=0.02)
    book = AlarmBook("s", ["a", "b", "c"], cfg)
    states = []
    # the evidence stays far above the threshold throughout; only the size of the move changes
    for ref_p, cur_p in [(0.10, 0.13), (0.10, 0.115), (0.10, 0.111), (0.10, 0.111), (0.10, 0.109),
                         (0.10, 0.105), (0.10, 0.13)]:
        res = _moved(40.0, ref_p, cur_p)
        res.fire[0, 1] = res.fire[0, 1] and abs(cur_p - ref_p) >= cfg.min_prevalence_change
        states += [a.state for a in book.step(res, (0, 1), (0, 1))]
    # 0.015 and 0.011 sit inside the band [0.01, 0.02): kept, not re-fired; 0.009 and 0.005 clear it
    assert states == ["firing", "resolved", "firing"]
    # without a floor the same sequence never resolves
    plain = AlarmBook("s", ["a", "b", "c"], DriftConfig(ert=100, clear_ratio=0.5, clear_steps=2))
    assert [a.state for ev in range(5) for a in plain.step(_moved(40.0, 0.10, 0.105), (0, 1), (0, 1))] == \
        ["firing"]


def test_stream_score_is_jensen_shannon_in_bits():
    rng = np.random.default_rng(0)
    p, q = rng.random(50), rng.random(50)
    assert js_divergence(p, q) == pytest.approx(jensenshannon(p, q, base=2) ** 2, rel=1e-9)
    assert js_divergence(p, p) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)


def test_stream_alarm_fires_only_with_a_configured_threshold():
    res = _result(0)
    res.stream_score = 0.3
    assert AlarmBook("s", ["a", "b", "c"], DriftConfig()).step(res, (0, 1), (0, 1)) == []
    out = AlarmBook("s", ["a", "b", "c"], DriftConfig(stream_threshold=0.2)).step(res, (0, 1), (0, 1))
    assert [(a.kind, a.concept_index) for a in out] == [("stream", -1)]
    assert "drift score" in out[0].describe()


@pytest.mark.parametrize("kwargs, match", [
    ({"ert": 1}, "ert must be > 1"),
    ({"kinds": ("colour",)}, "kinds must be a non-empty subset"),
    ({"clear_ratio": 1.5}, "clear_ratio"),
    ({"clear_steps": 0}, "clear_steps"),
    ({"stream_threshold": -1.0}, "stream_threshold"),
    ({"min_prevalence_change": -0.01}, "min_prevalence_change must be a number in \\[0, 1\\)"),
    ({"min_prevalence_change": 1.0}, "min_prevalence_change"),
])
def test_drift_config_names_the_bad_parameter(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        DriftConfig(**kwargs)


def test_hypothesis_rows_are_kind_and_direction_pairs():
    assert HYPOTHESES == (("prevalence", "up"), ("prevalence", "down"), ("activation", "up"),
                          ("activation", "down"))


def test_module_docstring_examples_run():
    assert doctest.testmod(drift_mod).failed == 0
