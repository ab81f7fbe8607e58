"""Sequential concept tests: the no-drift run length respects ERT (analytic threshold) and lands near it once
calibrated, a planted shift is named within a few batches of its onset, and the state survives a restart."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import monitor.drift.sequential as seq_mod
from monitor.drift import DriftConfig, MonitorConfig, ReferenceConfig, StreamMonitor, WindowConfig
from monitor.drift.sequential import SequentialConceptTest
from monitor.drift.stats import WindowStats
from monitor.synthetic.codes import Shift, concept_profile, synthetic_stream

C = 400
PROFILE = concept_profile(C, 12, seed=1)
BATCH = 100


def _batches(n, shifts=(), seed=0):
    return list(synthetic_stream(C, n, shifts, seed=seed, mean_l0=12, batch_size=BATCH, profile=PROFILE))


def _reference(n=10_000, seed=0) -> WindowStats:
    ref = WindowStats(C)
    for codes, _ in _batches(n, seed=seed):
        ref.update(codes)
    return ref


def _null_alarms(test: SequentialConceptTest, batches) -> int:
    alarms = 0
    for codes, _ in batches:
        if test.update(codes).fire.any():
            alarms += 1
            test.reset()
    return alarms


def test_analytic_threshold_keeps_the_no_drift_run_length_above_ert():
    ert = 500.0
    test = SequentialConceptTest(C, DriftConfig(ert=ert, calibrate=False))
    test.set_reference(_reference())
    batches = _batches(40_000, seed=11)
    alarms = _null_alarms(test, batches)
    # E[run length] >= ERT: with 40,000 items at most ~80 alarms are allowed on average; the analytic threshold
    # leaves the run length several times longer (that slack is what calibrate() spends)
    assert alarms < 40_000 / ert
    assert test.threshold == pytest.approx(np.log(ert * test.n_hypotheses))


def test_calibration_spends_the_budget_without_going_under_ert():
    ert = 1000.0
    ref = _reference()
    analytic = SequentialConceptTest(C, DriftConfig(ert=ert, calibrate=False))
    analytic.set_reference(ref)
    test = SequentialConceptTest(C, DriftConfig(ert=ert))
    test.set_reference(ref)
    spend = test.calibrate(BATCH, seed=3)
    assert spend > 0 and test.threshold == pytest.approx(analytic.threshold - spend)
    assert test.calibration["alarms"] >= 50 and test.calibration["ratio"] > 1.0
    batches = _batches(60_000, seed=12)
    alarms = _null_alarms(test, batches)
    ratio = 60_000 / max(alarms, 1) / ert
    # aimed at 1.3 x ERT; at ~45 expected alarms the Poisson spread is about 15 %
    assert 0.9 <= ratio <= 2.5, (alarms, ratio, test.calibration)
    assert _null_alarms(analytic, batches) < alarms  # the analytic threshold is the conservative one


def test_shift_is_named_within_a_few_batches_of_its_onset_with_when_it_fired():
    j = int(np.argsort(PROFILE.prevalence)[-3])  # a frequent concept: ~8 % of images
    onset = 10_000 + 2_050
    mon = StreamMonitor([f"c{k}" for k in range(C)], MonitorConfig(
        window=WindowConfig(size=1000), reference=ReferenceConfig(n_images=10_000),
        drift=DriftConfig(ert=100_000)))
    fired = []
    for codes, items in _batches(16_000, [Shift(j, onset, "prevalence", 3.0)], seed=4):
        fired += [a for a in mon.update(codes, items) if a.state == "firing"]
    assert {(a.concept_index, a.direction) for a in fired} == {(j, "up")}
    first = min(fired, key=lambda a: a.item_offset)
    # the alarm sits inside the batch that crossed: its offset is a batch end, its event time that batch's last one
    assert first.item_offset % BATCH == 0 and onset < first.item_offset <= onset + 5 * BATCH
    assert first.event_time == pytest.approx(1_700_000_000.0 + (first.item_offset - 1) / 10.0)
    assert first.window_start <= first.event_time < first.window_end
    assert mon.status().steps == (16_000 - 10_000) // BATCH  # one test per batch after the reference


def test_activation_shift_is_named_by_the_activation_test():
    j = int(np.argsort(PROFILE.prevalence)[-2])
    mon = StreamMonitor([f"c{k}" for k in range(C)], MonitorConfig(
        window=WindowConfig(size=1000), reference=ReferenceConfig(n_images=10_000),
        drift=DriftConfig(ert=100_000, kinds=("activation",))))
    fired = []
    for codes, items in _batches(16_000, [Shift(j, 11_000, "activation", 3.0)], seed=5):
        fired += [a for a in mon.update(codes, items) if a.state == "firing"]
    assert {(a.concept_index, a.kind, a.direction) for a in fired} == {(j, "activation", "up")}


def test_restart_mid_stream_continues_exactly():
    j = int(np.argsort(PROFILE.prevalence)[-4])
    batches = _batches(14_000, [Shift(j, 12_000, "prevalence", 3.0)], seed=6)
    cfg = MonitorConfig(window=WindowConfig(size=1000), reference=ReferenceConfig(n_images=10_000),
                        drift=DriftConfig(ert=100_000))
    names = [f"c{k}" for k in range(C)]
    whole = StreamMonitor(names, cfg)
    expected = [a for codes, items in batches for a in whole.update(codes, items)]
    first = StreamMonitor(names, cfg)
    got = [a for codes, items in batches[:115] for a in first.update(codes, items)]
    again = StreamMonitor.from_bytes(first.to_bytes())
    got += [a for codes, items in batches[115:] for a in again.update(codes, items)]
    assert got == expected and expected
    np.testing.assert_array_equal(again.status().concept_scores, whole.status().concept_scores)


def test_update_before_a_reference_is_refused():
    with pytest.raises(ValueError, match="set_reference must be called before update"):
        SequentialConceptTest(C).update(_batches(100)[0][0])


def test_module_docstring_example_runs():
    assert doctest.testmod(seq_mod).failed == 0
