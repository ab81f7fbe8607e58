"""The oracle scans of the drift benchmark: their ratios are the binomial likelihood ratios of each window, the
one-pass restart simulation equals a scan that really restarts, the calibration reaches an exactly computable run
length, and a big planted shift is found and named."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from scipy.stats import binom

from workers.benchmarks import oracle
from workers.benchmarks.oracle import (WindowScan, alarms_with_restarts, calibrate, count_batches, null_pass,
                                       reference_rates, split_reference)


def _direct_llr(history: list[tuple[np.ndarray, int]], p: np.ndarray, factor: float, max_batches: int):
    """Each window's ratio from the raw batches: log Binom(k; n, q) − log Binom(k; n, p), windows summed afresh."""
    q = np.maximum(np.minimum(factor * p, 0.95), p)
    rows = []
    for length in range(1, min(len(history), max_batches) + 1):
        k = sum(c for c, _ in history[-length:])
        n = sum(m for _, m in history[-length:])
        rows.append(binom.logpmf(k, n, q) - binom.logpmf(k, n, p))
    return np.array(rows)


def test_scan_ratios_equal_the_binomial_ratio_of_every_window_computed_directly():
    rng = np.random.default_rng(3)
    p = np.array([0.001, 0.01, 0.015, 0.1, 0.3, 0.4])  # 0.4: the alternative is capped at 0.95
    scan = WindowScan(p, factor=3.0, max_batches=5)
    history: list[tuple[np.ndarray, int]] = []
    for step in range(40):
        if step == 23:  # a restart forgets everything seen
            scan.reset()
            history = []
        size = int(rng.integers(1, 70))
        counts = rng.binomial(size, np.minimum(p * rng.choice([1.0, 3.0]), 0.95))
        history.append((counts, size))
        got = scan.update(counts, size)
        want = _direct_llr(history, p, 3.0, 5)
        assert got.shape == (min(len(history), 5), len(p))
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(oracle.binomial_llr(np.array(7), np.array(50), np.array(0.05), 3.0),
                               binom.logpmf(7, 50, 0.15) - binom.logpmf(7, 50, 0.05), rtol=1e-12)


def _null_counts(rng, p, n_batches, size):
    return [(rng.binomial(size, p), size, (t + 1) * size) for t in range(n_batches)]


def _really_restarting_alarms(p, batches, planted, c, variant, max_batches):
    scan = WindowScan(p, factor=3.0, max_batches=max_batches)
    out = []
    for t, (counts, size, _) in enumerate(batches):
        llr = scan.update(counts, size)
        top = np.sort(llr, axis=1)[:, -len(planted):].sum(axis=1).max()
        stat = {"scan": llr.max(), "top": top, "told": llr[:, planted].max(),
                "told_joint": llr[:, planted].sum(axis=1).max()}
        if stat[variant] >= c:
            out.append(t)
            scan.reset()
    return out


@pytest.mark.parametrize("variant", oracle.VARIANTS)
def test_the_restart_simulation_of_one_pass_equals_a_scan_that_really_restarts(variant):
    rng = np.random.default_rng(5)
    p = np.exp(rng.uniform(np.log(0.002), np.log(0.05), 60))
    planted = np.array([3, 17, 42])
    batches = _null_counts(rng, p, 1500, 20)
    upto, items = null_pass(WindowScan(p, factor=3.0, max_batches=6), batches, planted)
    assert items == 1500 * 20 and upto[variant].shape == (1500, 6)
    for c in np.quantile(upto[variant][:, -1], [0.5, 0.9, 0.99]):
        got = alarms_with_restarts(upto[variant], c).tolist()
        want = _really_restarting_alarms(p, batches, planted, c, variant, 6)
        assert len(want) > 5 and got == want


def test_calibration_reaches_the_run_length_computed_exactly_for_one_batch_windows():
    """With windows of one batch the scan alarms at each batch independently, with probability
    1 − Π_j P(ratio_j(K_j) < c), K_j ~ Binomial(m, p_j): the run length m / P(alarm) is exact."""
    rng = np.random.default_rng(11)
    p = np.exp(rng.uniform(np.log(0.005), np.log(0.08), 200))
    m, ert = 25, 400.0
    batches = _null_counts(rng, p, 80_000, m)
    upto, items = null_pass(WindowScan(p, factor=3.0, max_batches=1), batches, np.array([0]))
    cal = calibrate(upto["scan"], items, ert)
    c = cal["threshold_nats"]
    assert cal["alarms"] >= 1000 and cal["run_length_items"] >= ert

    k = np.arange(m + 1)[:, None]
    quiet = binom.pmf(k, m, p) * (oracle.binomial_llr(k, m, p, 3.0) < c)
    exact_run_length = m / (1.0 - np.prod(quiet.sum(axis=0)))
    # the sample's run length has a relative standard error of ~1/sqrt(5,000 alarms); allow 4 of those
    assert exact_run_length == pytest.approx(ert, rel=0.06)
    # and just below the threshold the sample no longer reaches the ERT (it is the smallest that does)
    below = len(alarms_with_restarts(upto["scan"], c - 1e-6))
    assert items / below < ert


def _tiny_args(**over):
    args = argparse.Namespace(concepts=300, mean_l0=10.0, batch=32, reference=4000, ert=1000.0, seeds=2, planted=2,
                              horizon=1500, oracle_max_window=256, oracle_null_items=80_000,
                              oracle_rates="reference", ours=False)
    for key, value in over.items():
        setattr(args, key, value)
    return args


def test_a_big_planted_shift_is_found_and_named_by_every_variant():
    res = oracle.run_seed(_tiny_args(), seed=0, factor=6.0)
    planted = set(res["planted"])
    assert len(planted) == 2
    for v in oracle.VARIANTS:
        cal = res["calibration"][v]
        assert cal["alarms"] >= 30 and cal["run_length_items"] >= 1000 > cal["run_length_below_items"]
        found = res["scenario"][v]
        assert found["delay"] is not None and found["delay"] <= 256, (v, found)
        assert set(found["first_named"]) & planted and found["recall"] == 1.0
    # the told variants can only name planted concepts; the scan names them first
    assert res["scenario"]["told"]["precision"] == 1.0
    assert res["scenario"]["scan"]["first_alarm_precision"] == 1.0


def test_reference_counts_are_split_off_mid_batch():
    from monitor.synthetic.codes import synthetic_stream

    stream = synthetic_stream(50, 300, seed=2, mean_l0=5, batch_size=64)
    codes = [c for c, _ in synthetic_stream(50, 300, seed=2, mean_l0=5, batch_size=64)]
    ref, rest = split_reference(count_batches(stream, 32), 100, 50)
    rest = list(rest)
    all_idx = np.concatenate([c.indices for c in codes])
    indptr = np.concatenate([[0], np.cumsum([c.indptr[-1] for c in codes])])
    rows = np.concatenate([c.indptr[:-1] + off for c, off in zip(codes, indptr[:-1])] + [[len(all_idx)]])
    np.testing.assert_array_equal(ref, np.bincount(all_idx[:rows[100]], minlength=50))
    assert [(n, end) for _, n, end in rest] == [(28, 128)] + [(32, 128 + 32 * i) for i in range(1, 6)] + [(12, 300)]
    assert sum(c.sum() for c, _, _ in rest) + ref.sum() == len(all_idx)
    np.testing.assert_allclose(reference_rates(np.array([0, 10]), 99), [0.005, 0.105])


def test_entry_point_prints_one_json_object(capsys):
    rc = oracle.main(["--json", "--concepts", "300", "--mean-l0", "10", "--batch", "32", "--reference", "4000",
                      "--ert", "1000", "--seeds", "1", "--planted", "2", "--horizon", "1000",
                      "--oracle-max-window", "128", "--oracle-null-items", "20000"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    for v in oracle.VARIANTS:
        row = out["oracle"][v]
        assert len(row["delays"]) == 1 and row["null_alarms"][0] > 0 and len(row["threshold_nats"]) == 1
    assert out["oracle"]["window_items_max"] == 128 and "machine" in out and "load_1min" in out
    with pytest.raises(ValueError, match="--oracle-max-window"):
        oracle.run_scenarios(_tiny_args(oracle_max_window=100))


def test_the_module_docstring_example_runs():
    import doctest

    assert doctest.testmod(oracle).failed == 0


def test_bench_drift_adds_the_oracle_only_when_asked(capsys):
    from monitor.cli.main import main

    common = ["bench", "drift", "--json", "--concepts", "300", "--mean-l0", "10", "--batch", "32", "--window", "500",
              "--reference", "3000", "--ert", "1000", "--null-items", "3000", "--seeds", "1", "--target-seeds", "1", "--null-seeds", "1",
              "--horizon", "1000",
              "--planted", "2", "--throughput-images", "2000", "--no-captions", "--no-mmd"]
    assert main(common + ["--oracle", "--oracle-max-window", "128", "--oracle-null-items", "20000"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(oracle.VARIANTS) <= set(out["oracle"]) and len(out["oracle"]["scan"]["delays"]) == 1
    from workers.benchmarks import drift

    parser = argparse.ArgumentParser()
    drift.add_arguments(parser)
    assert parser.parse_args([]).oracle is False  # off by default: the default bench does not grow
