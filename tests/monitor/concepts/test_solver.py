"""The certified nonnegative lasso: optimality conditions, agreement with scikit-learn, determinism, recovery of planted
codes, target-l0 mode, the ConvergenceWarning path, memory shape (never c x c) and bad inputs."""

from __future__ import annotations

import doctest
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import monitor.concepts.solver as solver_mod
from monitor.records import SparseCodes
from monitor.concepts.solver import ConvergenceWarning, NonnegLasso, SolverResult, dual_certificate, nonneg_lasso
from monitor.synthetic.problems import make_dictionary, make_problem, make_targets


@pytest.fixture(autouse=True)
def _few_threads():
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def _random_problem(c=400, d=64, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(c, d, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    Z = torch.randn(n, d, generator=g)
    Z = Z / Z.norm(dim=1, keepdim=True)
    return D, Z


def _kkt_residual(D, Z, W, lam):
    """Independent float64 check of the optimality conditions: grad = 2 D (D^T w - z) + lam."""
    D, Z, W = D.double(), Z.double(), W.double()
    grad = 2.0 * (W @ D - Z) @ D.T + lam
    on = (W > 0)
    pos = torch.where(on, grad.abs(), torch.zeros_like(grad)).amax(dim=1)
    zero = torch.where(~on, (-grad).clamp_min(0), torch.zeros_like(grad)).amax(dim=1)
    return pos, zero


def _objective(D, Z, W, lam):
    D, Z, W = D.double(), Z.double(), W.double()
    return ((W @ D - Z) ** 2).sum(dim=1) + lam * W.sum(dim=1)


# ---------------------------------------------------------------------------------------------- optimality
def test_kkt_conditions_hold_on_random_dictionary():
    D, Z = _random_problem()
    res = NonnegLasso(D).solve(Z, 0.25)
    assert res.converged.all() and (res.gap <= 1e-4).all()
    assert (res.weights >= 0).all()
    pos, zero = _kkt_residual(D, Z, res.weights, 0.25)
    assert float(pos.max()) < 1e-3 and float(zero.max()) < 1e-3
    # the reported residual is the same quantity
    assert torch.allclose(res.kkt, torch.maximum(pos, zero), atol=1e-5)


def test_kkt_conditions_hold_on_clip_like_problem_with_deep_active_concepts():
    # decaying spectrum: many active concepts rank far down the raw correlations, so several working-set
    # rounds are needed and the full-dictionary check must find them
    p = make_problem(n=24, n_concepts=3000, dim=128)
    res = NonnegLasso(p.dictionary).solve(p.targets, 0.25)
    assert res.converged.all()
    assert res.iterations >= 2
    pos, zero = _kkt_residual(p.dictionary, p.targets, res.weights, 0.25)
    assert float(torch.maximum(pos, zero).max()) < 2e-3
    obj, gap, _ = dual_certificate(p.dictionary, p.targets, res.weights, 0.25)
    assert float(gap.max()) <= 1e-4
    assert torch.allclose(obj, res.objective, rtol=1e-6)


def test_small_penalty_with_a_hundred_active_concepts_still_certifies():
    # supports of ~120 concepts need the working set to grow geometrically, not by a fixed step per round
    p = make_problem(n=8, n_concepts=2000, dim=128)
    res = NonnegLasso(p.dictionary).solve(p.targets, 0.01)
    assert res.converged.all() and (res.l0 > 90).all()
    _, gap, kkt = dual_certificate(p.dictionary, p.targets, res.weights, 0.01)
    assert float(gap.max()) <= 1e-4 and float(kkt.max()) < 1e-3


def test_gap_certificate_bounds_true_suboptimality():
    D, Z = _random_problem(seed=3)
    best = NonnegLasso(D, tol=1e-9, dtype=torch.float64, screen_dtype=None).solve(Z, 0.25)
    assert best.converged.all() and (best.gap <= 1e-9).all()
    opt = _objective(D, Z, best.weights, 0.25)
    # damaged solutions: the certificate must flag them and still bound their distance to the optimum
    for W in (best.weights * 0.7, best.weights + 0.01, torch.zeros_like(best.weights)):
        obj, gap, kkt = dual_certificate(D, Z, W, 0.25)
        assert (gap > 1e-3).all()
        assert ((obj - opt) <= gap * obj + 1e-9).all()
        assert (kkt > 1e-3).all()


# ---------------------------------------------------------------------------------------------- vs scikit-learn
def test_agrees_with_sklearn_lasso_positive():
    sklearn_linear = pytest.importorskip("sklearn.linear_model")
    D, Z = _random_problem(c=300, d=64, n=6, seed=1)
    lam = 0.25
    res = NonnegLasso(D, tol=1e-6).solve(Z, lam)
    d = D.shape[1]
    ref = np.zeros((Z.shape[0], D.shape[0]))
    for i in range(Z.shape[0]):
        # sklearn minimises ||z - D^T w||^2 / (2 d) + alpha ||w||_1: alpha = lam / (2 d) is the same problem
        m = sklearn_linear.Lasso(alpha=lam / (2 * d), positive=True, fit_intercept=False, tol=1e-12, max_iter=100_000)
        m.fit(D.double().numpy().T, Z[i].double().numpy())
        ref[i] = m.coef_
    ref_t = torch.from_numpy(ref)
    assert torch.equal(res.weights > 0, ref_t > 1e-9)
    assert float((res.weights.double() - ref_t).abs().max()) < 1e-4
    obj_ours, obj_ref = _objective(D, Z, res.weights, lam), _objective(D, Z, ref_t, lam)
    assert float(((obj_ours - obj_ref) / obj_ref).abs().max()) < 1e-6


def test_per_row_penalty_equals_separate_solves():
    D, Z = _random_problem(n=4, seed=2)
    lams = torch.tensor([0.05, 0.1, 0.25, 0.6])
    s = NonnegLasso(D, tol=1e-5)
    together = s.solve(Z, lams)
    assert torch.allclose(together.l1, lams)
    for i, lam in enumerate(lams.tolist()):
        alone = s.solve(Z[i : i + 1], lam)
        assert torch.equal(alone.weights[0] > 0, together.weights[i] > 0)
        assert torch.allclose(alone.weights[0], together.weights[i], atol=1e-5)
    assert (together.l0[0] > together.l0[3])  # smaller penalty, denser code


def test_float64_and_exact_screening_give_the_same_solution():
    p = make_problem(n=8, n_concepts=1500, dim=96)
    a = NonnegLasso(p.dictionary).solve(p.targets)
    b = NonnegLasso(p.dictionary, dtype=torch.float64, screen_dtype=None, whiten=None, tol=1e-8).solve(p.targets)
    assert torch.equal(a.weights > 0, b.weights > 0)
    assert torch.allclose(a.weights, b.weights, atol=1e-4)


def test_chunked_batches_match_one_batch():
    p = make_problem(n=12, n_concepts=800, dim=64)
    a = NonnegLasso(p.dictionary).solve(p.targets)
    b = NonnegLasso(p.dictionary, batch_size=5).solve(p.targets)
    assert torch.equal(a.weights > 0, b.weights > 0)
    assert torch.allclose(a.weights, b.weights, atol=1e-5)
    assert b.converged.all()


# ---------------------------------------------------------------------------------------------- determinism
def test_two_runs_are_bitwise_equal():
    p = make_problem(n=16, n_concepts=2000, dim=128)
    r1 = NonnegLasso(p.dictionary).solve(p.targets)
    r2 = NonnegLasso(p.dictionary).solve(p.targets)
    for name in ("weights", "objective", "gap", "kkt", "converged", "l1"):
        assert torch.equal(getattr(r1, name), getattr(r2, name)), name
    assert r1.iterations == r2.iterations and r1.inner_iterations == r2.inner_iterations


# ---------------------------------------------------------------------------------------------- recovery
def test_recovers_planted_sparse_codes():
    p = make_problem(n=16, n_concepts=1000, dim=256, noise=0.02, decay=0.3)
    res = NonnegLasso(p.dictionary).solve(p.targets, 0.02)
    assert res.converged.all()
    for i in range(16):
        planted = set(p.planted_indices[i].tolist())
        top = set(res.weights[i].topk(10).indices.tolist())
        assert top == planted
        # recovered weights are proportional to the planted mixing weights (targets were renormalised)
        w = res.weights[i, p.planted_indices[i]].double()
        corr = torch.corrcoef(torch.stack([w, p.planted_weights[i].double()]))[0, 1]
        assert corr > 0.95


# ---------------------------------------------------------------------------------------------- target l0
def test_target_l0_hits_requested_sparsity_per_row():
    p = make_problem(n=12, n_concepts=1500, dim=128)
    s = NonnegLasso(p.dictionary)
    res = s.solve_target_l0(p.targets, 8)
    assert (res.l0 == 8).all()
    assert res.converged.all()
    assert len(set(res.l1.tolist())) > 1  # a penalty per row
    # the reported penalty reproduces the solution
    again = s.solve(p.targets, res.l1)
    assert torch.equal(again.weights > 0, res.weights > 0)


def test_target_l0_unreachable_in_bounds_returns_closest():
    p = make_problem(n=6, n_concepts=1500, dim=128)
    s = NonnegLasso(p.dictionary)
    lo, hi = 0.2, 0.3
    res = s.solve_target_l0(p.targets, 1, l1_bounds=(lo, hi), max_search=12)
    assert ((res.l1 >= lo * (1 - 1e-6)) & (res.l1 <= hi * (1 + 1e-6))).all()
    at_hi = s.solve(p.targets, hi).l0
    # sparsest reachable code inside the bounds is at the upper penalty; the search must get (near) there
    assert (res.l0 <= at_hi).all() and (res.l0 > 1).all()


# ---------------------------------------------------------------------------------------------- warnings
def test_convergence_warning_carries_gap_tolerance_and_iterations():
    p = make_problem(n=8, n_concepts=3000, dim=128)
    s = NonnegLasso(p.dictionary, max_iter=1, tol=1e-6)
    with pytest.warns(ConvergenceWarning, match=r"worst relative duality gap [0-9.e+-]+ > tol 1e-06 after 1 iterations"):
        res = s.solve(p.targets)
    assert not res.converged.all()
    assert (res.gap[~res.converged] > 1e-6).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        s.solve(p.targets, warn=False)


def test_converged_solve_emits_no_warning():
    D, Z = _random_problem()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        NonnegLasso(D).solve(Z)


# ---------------------------------------------------------------------------------------------- memory shape
class _ShapeLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.shapes.append((str(func), tuple(t.shape)))
        return out


@pytest.mark.parametrize("mode", ["solve", "target_l0"])
def test_never_materialises_a_concept_by_concept_matrix(mode):
    c, d, n = 2500, 64, 12
    D = make_dictionary(c, d)
    Z, _, _ = make_targets(D, n)
    s = NonnegLasso(D)
    log = _ShapeLog()
    with log:
        if mode == "solve":
            res = s.solve(Z)
        else:
            res = s.solve_target_l0(Z, 6, max_search=6)
    assert len(log.shapes) > 50  # the mode really saw the solver's ops
    biggest = max(np.prod(shape) if shape else 1 for _, shape in log.shapes)
    # the dictionary (c x d) and the (rows x c) correlations are the largest things ever built; c x c is 2500^2
    assert biggest <= max(n, d) * c
    assert not [s_ for s_ in log.shapes if sum(dim >= c for dim in s_[1]) >= 2]
    assert res.weights.shape == (n, c)


# ---------------------------------------------------------------------------------------------- API surface
def test_functional_wrapper_and_result_fields():
    D, Z = _random_problem(n=3)
    res = nonneg_lasso(D, Z, 0.25, tol=1e-5)
    assert isinstance(res, SolverResult)
    assert res.weights.dtype == torch.float32 and res.weights.shape == (3, 400)
    assert res.l1.shape == res.objective.shape == res.gap.shape == res.kkt.shape == res.converged.shape == (3,)
    assert res.converged.dtype == torch.bool
    assert isinstance(res.iterations, int) and res.iterations >= 1
    assert torch.allclose(res.objective, _objective(D, Z, res.weights, 0.25), rtol=1e-5)


def test_to_codes_matches_dense_weights():
    D, Z = _random_problem(n=4)
    res = NonnegLasso(D).solve(Z)
    fid = torch.linspace(0.5, 0.8, 4)
    codes = res.to_codes(fid)
    assert isinstance(codes, SparseCodes)
    np.testing.assert_array_equal(codes.to_dense(), res.weights.numpy())
    np.testing.assert_array_equal(codes.l0, res.l0.numpy())
    np.testing.assert_allclose(codes.fidelity, fid.numpy())
    assert codes.converged is not None and codes.converged.all()


def test_single_vector_and_zero_row():
    D, Z = _random_problem(n=2)
    one = NonnegLasso(D).solve(Z[0])
    assert one.weights.shape == (1, 400)
    zero = NonnegLasso(D).solve(torch.zeros(1, 64))
    assert zero.converged.all() and float(zero.weights.abs().sum()) == 0.0 and float(zero.objective[0]) == 0.0


def test_docstring_example_runs():
    failures, tried = doctest.testmod(solver_mod, verbose=False, report=False)[:2]
    assert tried >= 1 and failures == 0


# ---------------------------------------------------------------------------------------------- bad inputs
def test_dimension_mismatch_names_both_shapes():
    D, _ = _random_problem()
    with pytest.raises(ValueError, match=r"\(400, 64\).*\(5, 32\)"):
        NonnegLasso(D).solve(torch.randn(5, 32))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(l1=-0.1), r"l1 must be finite and > 0"),
        (dict(l1=0.0), r"l1 must be finite and > 0"),
        (dict(l1=float("nan")), r"l1 must be finite"),
        (dict(l1=torch.tensor([0.1, 0.2])), r"l1 must be a scalar or have one entry per row .*n=4"),
    ],
)
def test_bad_penalty_is_rejected(kwargs, match):
    D, Z = _random_problem(n=4)
    with pytest.raises(ValueError, match=match):
        NonnegLasso(D).solve(Z, **kwargs)


def test_nan_inputs_name_the_argument():
    D, Z = _random_problem(n=4)
    Zbad = Z.clone()
    Zbad[2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"Z contains NaN or inf.*\[2\]"):
        NonnegLasso(D).solve(Zbad)
    Dbad = D.clone()
    Dbad[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"dictionary contains NaN or inf"):
        NonnegLasso(Dbad)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(tol=0.0), r"tol must be a finite number > 0"),
        (dict(max_iter=0), r"max_iter must be an integer >= 1"),
        (dict(working_set=0), r"working_set must be an integer >= 1"),
        (dict(dtype=torch.float16), r"dtype must be torch.float32 or torch.float64"),
        (dict(whiten=-1.0), r"whiten must be None or a number > 0"),
        (dict(screen_dtype=torch.int8), r"screen_dtype must be"),
    ],
)
def test_bad_solver_options_are_rejected(kwargs, match):
    D, _ = _random_problem()
    with pytest.raises(ValueError, match=match):
        NonnegLasso(D, **kwargs)


def test_bad_shapes_and_types_are_rejected():
    D, Z = _random_problem(n=2)
    with pytest.raises(ValueError, match=r"dictionary must be a 2-D .* got shape \(400,\)"):
        NonnegLasso(D[:, 0])
    with pytest.raises(TypeError, match=r"Z must be a torch.Tensor, got ndarray"):
        NonnegLasso(D).solve(Z.numpy())
    with pytest.raises(ValueError, match=r"got Z shape \(2, 1, 64\)"):
        NonnegLasso(D).solve(Z[:, None, :])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(target_l0=0), r"target_l0 must be an integer in \[1, 400\]"),
        (dict(target_l0=5, l1_bounds=(0.5, 0.1)), r"l1_bounds must satisfy 0 < low < high"),
        (dict(target_l0=5, l1_bounds=(0.1,)), r"l1_bounds must be a pair"),
        (dict(target_l0=5, max_search=0), r"max_search must be an integer >= 1"),
    ],
)
def test_bad_target_l0_arguments_are_rejected(kwargs, match):
    D, Z = _random_problem(n=2)
    with pytest.raises(ValueError, match=match):
        NonnegLasso(D).solve_target_l0(Z, **kwargs)
