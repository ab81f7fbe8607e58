"""The synthetic code stream: stationary prevalence matches the profile, planted shifts start at their onset and
change only what they say, and the dense view is normalised."""

from __future__ import annotations

import doctest

import numpy as np
import pytest

import monitor.synthetic.codes as codestream_mod
from monitor.synthetic.codes import Shift, concept_profile, embed_codes, random_dictionary, synthetic_stream

C = 2000


def _stack(batches):
    dense = np.concatenate([codes.to_dense() for codes, _ in batches])
    return dense, [it for _, items in batches for it in items]


def test_stationary_prevalence_matches_the_profile():
    prof = concept_profile(C, 20, seed=0)
    assert prof.prevalence.sum() == pytest.approx(20, rel=1e-6)
    dense, items = _stack(list(synthetic_stream(C, 20_000, seed=0, mean_l0=20, batch_size=2000)))
    emp = (dense > 0).mean(0)
    z = (emp - prof.prevalence) / np.sqrt(prof.prevalence * (1 - prof.prevalence) / len(dense))
    assert abs(z.mean()) < 0.1 and 0.9 < z.std() < 1.1 and np.abs(z).max() < 5.5
    assert [it.id for it in items[:2]] == ["synthetic-0", "synthetic-1"]
    assert items[10].timestamp - items[0].timestamp == pytest.approx(1.0)  # 10 images per second


def test_rows_are_sorted_csr_with_positive_weights():
    codes, _ = next(synthetic_stream(C, 500, seed=1, mean_l0=20, batch_size=500))
    for i in range(len(codes)):
        idx, val = codes.row(i)
        assert np.all(np.diff(idx) > 0) and np.all(val > 0)


def test_prevalence_shift_starts_at_onset_and_touches_one_concept():
    prof = concept_profile(C, 20, seed=2)
    j = int(np.argsort(prof.prevalence)[-50])
    dense, _ = _stack(list(synthetic_stream(C, 40_000, [Shift(j, 20_000, "prevalence", 3.0)], seed=2, mean_l0=20,
                                            batch_size=4000, profile=prof)))
    before, after = (dense[:20_000] > 0).mean(0), (dense[20_000:] > 0).mean(0)
    assert after[j] / before[j] == pytest.approx(3.0, rel=0.15)
    others = np.delete(np.arange(C), j)
    assert np.abs(after[others] - before[others]).max() < 0.01


def test_activation_shift_scales_weights_not_prevalence():
    prof = concept_profile(C, 20, seed=3)
    j = int(np.argsort(prof.prevalence)[-20])
    dense, _ = _stack(list(synthetic_stream(C, 30_000, [Shift(j, 15_000, "activation", 2.0)], seed=3, mean_l0=20,
                                            batch_size=3000, profile=prof)))
    b, a = dense[:15_000, j], dense[15_000:, j]
    assert (a > 0).mean() == pytest.approx((b > 0).mean(), rel=0.15)
    assert a[a > 0].mean() / b[b > 0].mean() == pytest.approx(2.0, rel=0.1)


def test_dense_embeddings_are_unit_rows_of_codes_times_dictionary():
    codes, _ = next(synthetic_stream(C, 50, seed=4, mean_l0=20, batch_size=50))
    d = random_dictionary(C, 64, seed=0)
    z = embed_codes(codes, d)
    ref = codes.to_dense().astype(np.float64) @ d.astype(np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(z, ref, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(d, axis=1), 1.0, atol=1e-5)


def test_bad_shifts_are_named():
    with pytest.raises(ValueError, match="Shift.kind must be one of"):
        Shift(1, 0, "colour", 2.0)
    with pytest.raises(ValueError, match="Shift.size must be a positive factor"):
        Shift(1, 0, "prevalence", 0.0)
    with pytest.raises(ValueError, match=r"Shift.concept=5000 is outside \[0, 2000\)"):
        next(synthetic_stream(C, 10, [Shift(5000, 0)]))


def test_module_docstring_example_runs():
    assert doctest.testmod(codestream_mod).failed == 0
