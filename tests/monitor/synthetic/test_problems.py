"""The synthetic CLIP-like problem generator: dictionary built like SpLiCE's, seeded, with a decaying spectrum and
targets planted from distinct concepts."""

from __future__ import annotations

import pytest
import torch

from monitor.synthetic.problems import make_dictionary, make_problem, make_targets


def test_dictionary_rows_are_unit_and_centred_before_renormalising():
    D = make_dictionary(2000, 64)
    assert D.shape == (2000, 64) and D.dtype == torch.float32
    assert torch.allclose(D.norm(dim=1), torch.ones(2000), atol=1e-5)
    # centring happens before the last normalisation, so the mean is small but not exactly zero
    assert float(D.mean(dim=0).norm()) < 0.05


def test_dictionary_spectrum_decays_and_flattens_without_decay():
    steep = torch.linalg.svdvals(make_dictionary(3000, 128, decay=0.5).double())
    flat = torch.linalg.svdvals(make_dictionary(3000, 128, decay=0.0).double())
    assert float(steep[0] / steep[63]) > 4.0
    assert float(flat[0] / flat[63]) < 2.0


def test_same_seed_same_problem_other_seed_other_problem():
    a, b, c = make_problem(8, 500, 32, seed=4), make_problem(8, 500, 32, seed=4), make_problem(8, 500, 32, seed=5)
    assert torch.equal(a.dictionary, b.dictionary) and torch.equal(a.targets, b.targets)
    assert torch.equal(a.planted_indices, b.planted_indices)
    assert not torch.equal(a.dictionary, c.dictionary)


def test_targets_are_unit_and_planted_concepts_distinct():
    D = make_dictionary(300, 32)
    Z, idx, w = make_targets(D, 20, n_planted=7, noise=0.0)
    assert Z.shape == (20, 32) and idx.shape == w.shape == (20, 7)
    assert torch.allclose(Z.norm(dim=1), torch.ones(20), atol=1e-5)
    assert all(len(set(row.tolist())) == 7 for row in idx)
    assert (w > 0).all()
    # without noise a target lies exactly in the cone of its planted concepts
    clean = torch.einsum("nk,nkd->nd", w.double(), D.double()[idx])
    cos = torch.nn.functional.cosine_similarity(clean, Z.double(), dim=1)
    assert torch.allclose(cos, torch.ones(20, dtype=torch.float64), atol=1e-6)


def test_noise_lowers_cosine_to_clean_mix():
    D = make_dictionary(300, 64)
    Z, idx, w = make_targets(D, 50, noise=0.5)
    clean = torch.einsum("nk,nkd->nd", w.double(), D.double()[idx])
    cos = torch.nn.functional.cosine_similarity(clean, Z.double(), dim=1)
    assert 0.8 < float(cos.mean()) < 0.95


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: make_dictionary(1, 8), r"n_concepts >= 2"),
        (lambda: make_targets(make_dictionary(10, 4), 2, n_planted=11), r"n_planted must be in \[1, 10\]"),
        (lambda: make_targets(make_dictionary(10, 4), 2, noise=-1.0), r"noise must be >= 0"),
    ],
)
def test_bad_arguments_are_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()
