"""The benchmark's online MMD baseline: its score is the unbiased MMD^2 and its bootstrap threshold is calibrated."""

from __future__ import annotations

import numpy as np
import pytest

from workers.benchmarks.mmd import MMDDriftOnline


def _brute_mmd2(x, y, bw):
    def k(a, b):
        d = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
        return np.exp(-d / (2 * bw * bw))
    m, n = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
            - 2 * kxy.mean())


def test_mmd_score_matches_the_unbiased_estimator_and_detects_a_mean_shift():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((400, 8)).astype(np.float32)
    det = MMDDriftOnline(ref, window=100, ert=50, n_bootstraps=500, seed=0)
    same = rng.standard_normal((100, 8)).astype(np.float32)
    assert det.score(same) == pytest.approx(_brute_mmd2(ref.astype(np.float64), same.astype(np.float64),
                                                        det.bandwidth), abs=1e-5)
    shifted = same + 0.6
    assert det.test(shifted)[1] and det.p_value(det.score(shifted)) < 0.01
    # calibration: fresh stationary windows exceed the threshold at about 1/ERT
    fired = [det.test(rng.standard_normal((100, 8)).astype(np.float32))[1] for _ in range(200)]
    assert np.mean(fired) <= 0.06


def test_mmd_reference_must_hold_two_windows():
    with pytest.raises(ValueError, match=r"R >= 2 x window = 200"):
        MMDDriftOnline(np.zeros((150, 4)), window=100, ert=10)
