"""Certified batched nonnegative lasso for SpLiCE: ``w* = argmin_{w >= 0} ||D^T w - z||^2 + lam ||w||_1`` per row.

Each row is solved exactly on a small working set of concepts and certified on the whole dictionary by a duality
gap, so a ~10,000-concept problem costs a few dictionary matmuls; docs/solver.md derives the method. The
certificate lives in :mod:`monitor.concepts.certificate`, the exact small-problem solver in
:mod:`monitor.concepts.pivoting`.
"""

from __future__ import annotations

from monitor.errors import ConvergenceWarning  # noqa: F401  (re-exported for callers of this module)
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from monitor.concepts.certificate import dual_certificate, duality_gap, exact_matmul, kkt_violation
from monitor.concepts.pivoting import bpp, sub_gram

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from monitor.records import SparseCodes

__all__ = ["ConvergenceWarning", "SolverResult", "NonnegLasso", "nonneg_lasso", "dual_certificate"]



@dataclass
class SolverResult:
    """Weights of a batch of decompositions together with their optimality certificate.

    ``gap`` is the relative duality gap ``(primal - dual) / primal`` of each row on the full problem: the primal
    objective is provably within ``gap * objective`` of the optimum. ``kkt`` is the largest violation of the
    optimality conditions over all concepts (``|grad_j|`` where ``w_j > 0``, ``max(0, -grad_j)`` where ``w_j = 0``,
    ``grad = 2 D (D^T w - z) + lam``).
    """

    weights: torch.Tensor  # (n, c) float32, >= 0
    l1: torch.Tensor  # (n,) penalty used per row
    objective: torch.Tensor  # (n,) ||D^T w - z||^2 + l1 * ||w||_1
    gap: torch.Tensor  # (n,) relative duality gap, the certificate
    kkt: torch.Tensor  # (n,) max KKT violation on the full problem
    iterations: int  # working-set rounds (full-dictionary checks) of the slowest row
    converged: torch.Tensor  # (n,) bool, gap <= tol
    inner_iterations: int = 0  # pivoting steps of the small exact solver, summed over rounds

    @property
    def l0(self) -> torch.Tensor:
        """Active concepts per row (int64, shape (n,))."""
        return (self.weights > 0).sum(dim=1)

    def to_codes(self, fidelity: "torch.Tensor | np.ndarray") -> "SparseCodes":
        """These weights as ``monitor.records.SparseCodes`` with the given per-row fidelity (cosine of the
        recomposition, computed by the caller who knows the modality mean)."""
        import numpy as np

        from monitor.records import SparseCodes

        if isinstance(fidelity, torch.Tensor):
            fidelity = fidelity.detach().cpu().numpy()
        return SparseCodes.from_dense(
            self.weights.detach().cpu().numpy(),
            fidelity=np.asarray(fidelity, dtype=np.float32),
            l1=self.l1.detach().cpu().numpy().astype(np.float32),
            converged=self.converged.detach().cpu().numpy(),
        )


class NonnegLasso:
    """Batched nonnegative lasso on a fixed concept dictionary ``D`` (c × d), certified by a duality gap.

    Per row: screen the concepts most correlated with ``z`` into a working set, solve the lasso on it exactly by
    block principal pivoting on its small Gram matrix, then check the whole dictionary with one matmul; concepts that
    violate optimality join the working set until the relative duality gap is at most ``tol``. No ``c × c`` matrix
    is ever formed (only ``k × k`` Grams of working sets, k = support + ``grow``), there is no random
    initialisation, and two runs on the same device give bitwise equal results.

    >>> import torch
    >>> from monitor.synthetic.problems import make_problem
    >>> p = make_problem(n=4, n_concepts=500, dim=64)
    >>> res = NonnegLasso(p.dictionary).solve(p.targets, l1=0.25)
    >>> bool(res.converged.all()), bool((res.gap <= 1e-4).all()), res.weights.shape
    (True, True, torch.Size([4, 500]))
    """

    def __init__(
        self,
        dictionary: torch.Tensor,
        *,
        tol: float = 1e-4,
        max_iter: int = 30,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        working_set: int = 24,
        grow: int = 16,
        max_inner: int = 200,
        batch_size: int | None = None,
        screen_dtype: torch.dtype | str | None = "auto",
        whiten: float | None = 0.1,
    ) -> None:
        if not isinstance(dictionary, torch.Tensor):
            raise TypeError(f"dictionary must be a torch.Tensor, got {type(dictionary).__name__}")
        if dictionary.ndim != 2 or dictionary.shape[0] < 1 or dictionary.shape[1] < 1:
            raise ValueError(
                f"dictionary must be a 2-D (concepts, dim) tensor, got shape {tuple(dictionary.shape)}"
            )
        if not torch.isfinite(dictionary).all():
            raise ValueError("dictionary contains NaN or inf entries")
        if dtype is None:
            dtype = torch.float32
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        if not (isinstance(tol, (int, float)) and math.isfinite(tol) and tol > 0):
            raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
        for name, value, least in (
            ("max_iter", max_iter, 1),
            ("working_set", working_set, 1),
            ("grow", grow, 1),
            ("max_inner", max_inner, 1),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an integer >= {least}, got {value!r}")
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size must be None or an integer >= 1, got {batch_size!r}")
        self.device = torch.device(device) if device is not None else dictionary.device
        self.dtype = dtype
        self.tol = float(tol)
        self.max_iter = max_iter
        self.n_concepts, self.dim = dictionary.shape
        # more than d slots would make the small Gram singular (rank <= d): pivoting assumes it is definite
        self.working_set = min(working_set, self.n_concepts, self.dim)
        self.grow = grow
        self.max_inner = max_inner
        # rows per chunk bound the (rows, c) correlation matrices; GPUs want big batches to amortise launches
        self.batch_size = batch_size or (8192 if self.device.type == "cuda" else 1024)
        self._D = dictionary.detach().to(self.device, dtype).contiguous()
        if screen_dtype == "auto":
            screen_dtype = torch.bfloat16 if _fast_bf16(self.device) else None
        if screen_dtype not in (None, torch.bfloat16, torch.float16, torch.float32):
            raise ValueError(f"screen_dtype must be 'auto', None, torch.bfloat16, torch.float16 or torch.float32, got {screen_dtype!r}")
        # a low-precision copy only ranks candidates; certificates always use the exact dictionary
        self.screen_dtype = screen_dtype
        self._D_screen = None if screen_dtype is None else self._D.to(screen_dtype)
        if whiten is not None and not (isinstance(whiten, (int, float)) and whiten > 0):
            raise ValueError(f"whiten must be None or a number > 0, got {whiten!r}")
        self.whiten = whiten
        self._P = None if whiten is None else _whitener(self._D, float(whiten))
        # the small exact systems run in double: their Grams can be ill-conditioned (near-synonym concepts)
        self._inner = torch.float64

    @property
    def dictionary(self) -> torch.Tensor:
        return self._D

    # ------------------------------------------------------------------ public edge
    def solve(self, Z: torch.Tensor, l1: float | torch.Tensor = 0.25, *, warn: bool = True) -> SolverResult:
        """Decompose every row of ``Z`` (n × d, centred and normalised) with penalty ``l1`` (scalar or per row)."""
        Zc = self._check_Z(Z)
        lam = self._check_l1(l1, Zc.shape[0])
        res = self._solve_impl(Zc, lam)
        if warn:
            _maybe_warn(res, self.tol)
        return res

    def solve_target_l0(
        self,
        Z: torch.Tensor,
        target_l0: int,
        *,
        l1_bounds: tuple[float, float] = (1e-3, 2.0),
        max_search: int = 24,
        warn: bool = True,
    ) -> SolverResult:
        """Pick the penalty per row so that each row has ``target_l0`` active concepts.

        A bracketed search on ``log(l1)`` inside ``l1_bounds`` (the upper end is lowered per row to
        ``2 * max_j <d_j, z>``, above which the solution is all zero): each probe is a certified solve of the rows
        still searching, placed by interpolating ``log(l0 + 1)`` between the bracket ends (safeguarded so the
        bracket shrinks by at least 10% per probe). A row stops as soon as its l0 equals the target. If no penalty
        in the bounds hits it within ``max_search`` probes (l0 can jump by more than one as the penalty moves), the
        row keeps the probed solution whose l0 is closest to the target, preferring the sparser one on a tie.
        ``result.l1`` holds the penalty each row was finally solved with.
        """
        Zc = self._check_Z(Z)
        if isinstance(target_l0, bool) or not isinstance(target_l0, int) or not 1 <= target_l0 <= self.n_concepts:
            raise ValueError(f"target_l0 must be an integer in [1, {self.n_concepts}], got {target_l0!r}")
        lo, hi = _check_bounds(l1_bounds)
        if not isinstance(max_search, int) or max_search < 1:
            raise ValueError(f"max_search must be an integer >= 1, got {max_search!r}")
        res = self._target_impl(Zc, target_l0, lo, hi, max_search)
        if warn:
            _maybe_warn(res, self.tol)
        return res

    def _check_Z(self, Z: torch.Tensor) -> torch.Tensor:
        if not isinstance(Z, torch.Tensor):
            raise TypeError(f"Z must be a torch.Tensor, got {type(Z).__name__}")
        if Z.ndim == 1:
            Z = Z[None, :]
        if Z.ndim != 2 or Z.shape[1] != self.dim:
            raise ValueError(
                f"Z must have shape (n, {self.dim}) to match dictionary shape {tuple(self._D.shape)}, "
                f"got Z shape {tuple(Z.shape)}"
            )
        if not Z.is_floating_point():
            raise ValueError(f"Z must be a floating point tensor, got dtype {Z.dtype}")
        if not torch.isfinite(Z).all():
            bad = (~torch.isfinite(Z)).any(dim=1).nonzero().flatten()[:5].tolist()
            raise ValueError(f"Z contains NaN or inf entries (rows {bad}...)")
        return Z.detach().to(self.device, self.dtype).contiguous()

    def _check_l1(self, l1: float | torch.Tensor, n: int) -> torch.Tensor:
        if isinstance(l1, torch.Tensor):
            t = l1.detach().to(self.device, torch.float64).flatten()
            if t.numel() == 1:
                t = t.expand(n)
            if t.numel() != n:
                raise ValueError(f"l1 must be a scalar or have one entry per row of Z (n={n}), got shape {tuple(l1.shape)}")
        elif isinstance(l1, (int, float)) and not isinstance(l1, bool):
            t = torch.full((n,), float(l1), dtype=torch.float64, device=self.device)
        else:
            raise TypeError(f"l1 must be a number or a tensor, got {type(l1).__name__}")
        if not torch.isfinite(t).all() or (t <= 0).any():
            bad = t[~torch.isfinite(t) | (t <= 0)][:3].tolist()
            raise ValueError(f"l1 must be finite and > 0 (the duality-gap certificate needs a positive penalty), got {bad}")
        return t.contiguous()

    # ------------------------------------------------------------------ private implementation (trusts inputs)
    def _solve_impl(self, Z: torch.Tensor, lam: torch.Tensor) -> SolverResult:
        if Z.shape[0] <= self.batch_size:
            return self._solve_chunk(Z, lam)
        parts = [self._solve_chunk(Z[i : i + self.batch_size], lam[i : i + self.batch_size])
                 for i in range(0, Z.shape[0], self.batch_size)]
        return _concat(parts)

    def _solve_chunk(
        self, Z: torch.Tensor, lam: torch.Tensor, G: torch.Tensor | None = None
    ) -> SolverResult:
        D, inner = self._D, self._inner
        n, c = Z.shape[0], self.n_concepts
        dev = Z.device
        weights = torch.zeros(n, c, dtype=torch.float32, device=dev)
        obj = torch.zeros(n, dtype=torch.float64, device=dev)
        gap = torch.zeros(n, dtype=torch.float64, device=dev)
        kkt = torch.zeros(n, dtype=torch.float64, device=dev)
        conv = torch.zeros(n, dtype=torch.bool, device=dev)
        if n == 0:
            return SolverResult(weights, lam.to(torch.float32), obj, gap, kkt, 0, conv)
        if G is None:
            G = self._screen(Z if self._P is None else Z @ self._P)

        # first working set: the top k concepts by whitened correlation with z (see _whitener)
        W = G.topk(self.working_set, dim=1).indices
        valid = torch.ones_like(W, dtype=torch.bool)
        DW = _rows(D, W)  # (n, k, d)
        Q = torch.bmm(DW, DW.transpose(1, 2)).to(inner)
        b = torch.bmm(Z[:, None, :], DW.transpose(1, 2))[:, 0].to(inner)
        F = torch.zeros_like(valid)
        # rows that have had an exact check are near their optimum: low-precision screening no longer pays there
        close = torch.zeros(n, dtype=torch.bool, device=dev) if self._D_screen is not None else None
        rows = torch.arange(n, device=dev)
        refined = torch.zeros(n, dtype=torch.long, device=dev)
        Za, lam_a = Z, lam
        rounds = inner_total = 0
        for it in range(1, self.max_iter + 1):
            rounds = it
            x, n_inner, settled = bpp(Q, b - 0.5 * lam_a[:, None], valid, F, self.max_inner)
            inner_total += n_inner
            wv = x.to(D.dtype)
            R = Za - torch.bmm(wv[:, None, :], DW)[:, 0]
            m = len(rows)
            # large supports (small penalties) grow geometrically, so rounds stay ~log(support)
            g_new = min(c, max(self.grow, int((x > 0).sum(dim=1).max()) // 2))
            new_idx = torch.empty(m, g_new, dtype=torch.long, device=dev)
            new_valid = torch.zeros(m, g_new, dtype=torch.bool, device=dev)
            done = torch.zeros(m, dtype=torch.bool, device=dev)
            exact = torch.arange(m, device=dev)
            if close is not None and it < self.max_iter:
                scr = (~close[rows]).nonzero().flatten()
                if len(scr):
                    # cheap low-precision pass: rows with clear violators grow without paying for an exact check
                    S = self._screen(R[scr])
                    S.scatter_(1, W[scr], float("-inf"))
                    top = S.topk(g_new, dim=1)
                    margin = _SCREEN_MARGIN * R[scr].norm(dim=1, keepdim=True)
                    clear = top.values.to(torch.float64) > (0.5 * lam_a[scr, None] + margin.to(torch.float64))
                    grows = clear.any(dim=1)
                    new_idx[scr[grows]] = top.indices[grows]
                    new_valid[scr[grows]] = clear[grows]
                    is_exact = torch.ones(m, dtype=torch.bool, device=dev)
                    is_exact[scr[grows]] = False
                    exact = is_exact.nonzero().flatten()
                    if 0 < len(exact) and 8 * len(exact) < m:
                        # a dense product costs nearly as much for a handful of rows as for many (the dictionary is
                        # streamed either way): let these few wait one round and join the next exact check
                        close[rows[exact]] = True
                        exact = exact[:0]
            if len(exact):
                Re = R[exact]
                with exact_matmul():
                    Dr = Re @ D.T
                mx = Dr.amax(dim=1)
                Dr_ws = Dr.gather(1, W[exact])
                Dr.scatter_(1, W[exact], float("-inf"))  # from here on only scores outside the working set matter
                o, g, _ = duality_gap(Za[exact], Re, mx, wv[exact].sum(dim=1), lam_a[exact])
                k = kkt_violation(mx, Dr_ws, wv[exact], lam_a[exact])
                fin = (g <= self.tol) | (it == self.max_iter)
                open_ = (~fin).nonzero().flatten()
                if len(open_):
                    eo = exact[open_]
                    top = (Dr if len(open_) == len(exact) else Dr[open_]).topk(g_new, dim=1)
                    viol = top.values.to(torch.float64) > 0.5 * lam_a[eo, None]
                    new_idx[eo] = top.indices
                    new_valid[eo] = viol
                    # no violators left and pivoting finished, yet the gap is above tol: the working-set solve is
                    # off by the rounding of its float32 Gram. One step of iterative refinement (move the small
                    # problem's right-hand side by the exact optimality residual) fixes that; after two, stop.
                    stuck = settled[eo] & ~viol.any(dim=1)
                    refine = stuck & (refined[rows[eo]] < 2)
                    fin[open_] = stuck & ~refine
                    if refine.any():
                        er = eo[refine]
                        refined[rows[er]] += 1
                        resid = Dr_ws[open_[refine]].to(inner) - 0.5 * lam_a[er, None]
                        b[er] += torch.where(x[er] > 0, resid, torch.zeros_like(resid))
                done[exact] = fin
                if close is not None:
                    close[rows[exact]] = True
                if fin.any():
                    ef = exact[fin]
                    rd = rows[ef]
                    # padding slots repeat a real index with weight 0: adding (not overwriting) keeps the real value
                    weights.index_put_(
                        (rd[:, None].expand_as(W[ef]), W[ef]), wv[ef].to(torch.float32), accumulate=True
                    )
                    obj[rd], gap[rd], kkt[rd] = o[fin], g[fin], k[fin]
                    conv[rd] = g[fin] <= self.tol
            keep = ~done
            if not keep.any():
                break
            rows, Za, lam_a = rows[keep], Za[keep], lam_a[keep]
            W, Q, b, x = W[keep], Q[keep], b[keep], x[keep]
            W, valid, DW, Q, b, F = self._rebuild(Za, W, Q, b, x, new_idx[keep], new_valid[keep])
        return SolverResult(
            weights=weights,
            l1=lam.to(torch.float32),
            objective=obj,
            gap=gap,
            kkt=kkt,
            iterations=rounds,
            converged=conv,
            inner_iterations=inner_total,
        )

    def _screen(self, X: torch.Tensor) -> torch.Tensor:
        """Approximate correlations ``X D^T`` for choosing candidates; never used in a certificate."""
        if self._D_screen is None:
            with exact_matmul():
                return X @ self._D.T
        return X.to(self._D_screen.dtype) @ self._D_screen.T

    def _rebuild(self, Z, W, Q, b, x, new_idx, new_valid):
        """Next working set: the current support (kept, so the objective can only go down) plus the new
        violators; zero-weight slots are dropped to keep the Gram small. Only the new Gram blocks are computed."""
        inner = self._inner
        support = x > 0
        s = int(support.sum(dim=1).max())
        g = new_idx.shape[1]
        # support slots first, in their current order
        order = support.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :s]
        sup = support.gather(1, order)
        # keep every row's working set within d slots so its Gram stays positive definite
        room = self.dim - sup.sum(dim=1, keepdim=True)
        new_valid = new_valid & (torch.arange(g, device=W.device) < room)
        W = W.gather(1, order)
        # padding slots (weight 0, never pivoted in) reuse an index already in the row, so masking and
        # scatter-adding through them touches nothing else
        pad = torch.where(sup[:, :1], W[:, :1], new_idx[:, :1]) if s else new_idx[:, :1]
        W = torch.cat([torch.where(sup, W, pad), torch.where(new_valid, new_idx, pad)], dim=1)
        valid = torch.cat([sup, new_valid], dim=1)
        DW = _rows(self._D, W)  # (m, s + g, d)
        DN = DW[:, s:]
        Qno = torch.bmm(DN, DW.transpose(1, 2)).to(inner)  # (m, g, s + g)
        Qs = sub_gram(Q, order)
        Q = torch.cat([torch.cat([Qs, Qno[:, :, :s].transpose(1, 2)], dim=2), Qno], dim=1)
        b = torch.cat([b.gather(1, order), torch.bmm(Z[:, None, :], DN.transpose(1, 2))[:, 0].to(inner)], dim=1)
        F = torch.cat([sup, torch.zeros_like(new_valid)], dim=1)
        return W, valid, DW, Q, b, F

    def _target_impl(self, Z: torch.Tensor, target: int, lo: float, hi: float, max_search: int) -> SolverResult:
        if Z.shape[0] == 0:
            return self._solve_chunk(Z, torch.zeros(0, dtype=torch.float64, device=Z.device))
        return _concat([self._target_chunk(Z[i : i + self.batch_size], target, lo, hi, max_search)
                        for i in range(0, Z.shape[0], self.batch_size)])

    def _target_chunk(self, Z: torch.Tensor, target: int, lo: float, hi: float, max_search: int) -> SolverResult:
        n, dev = Z.shape[0], Z.device
        with exact_matmul():
            lam_max = 2.0 * (Z @ self._D.T).amax(dim=1).to(torch.float64)
        # the first-working-set ranking does not depend on the penalty: compute it once for all probes
        G = self._screen(Z if self._P is None else Z @ self._P)
        log_lo = torch.full((n,), math.log(lo), dtype=torch.float64, device=dev)
        # above lam_max the solution is zero, so the search never needs to go higher
        at_max = lam_max <= hi
        log_hi = torch.where(at_max, lam_max.clamp_min(lo).log(), torch.full_like(log_lo, math.log(hi)))
        # l0 at the bracket ends where known (-1: unknown); zero at lam_max by the optimality conditions
        l0_lo = torch.full_like(log_lo, -1.0)
        l0_hi = torch.where(at_max, torch.zeros_like(log_lo), torch.full_like(log_lo, -1.0))
        best: SolverResult | None = None
        best_err = torch.full((n,), float("inf"), dtype=torch.float64, device=dev)
        best_lam = torch.zeros(n, dtype=torch.float64, device=dev)
        searching = torch.ones(n, dtype=torch.bool, device=dev)
        rounds = inner = 0
        log_t = math.log(target + 1.0)
        for _ in range(max_search):
            rows = searching.nonzero().flatten()
            if len(rows) == 0:
                break
            a, b, la, lb = log_lo[rows], log_hi[rows], l0_lo[rows], l0_hi[rows]
            mid = 0.5 * (a + b)
            # l0 is roughly a power of the penalty: interpolate log(l0 + 1) linearly in log(penalty) when both ends
            # are known, clipped to the inner 80% of the bracket so it always shrinks; otherwise halve or double
            # the penalty from the known end (dense probes are the expensive ones, so approach from the sparse side)
            la_, lb_ = torch.log(la.clamp_min(0) + 1.0), torch.log(lb.clamp_min(0) + 1.0)
            frac = ((la_ - log_t) / (la_ - lb_).clamp_min(1e-12)).clamp(0.1, 0.9)
            x = torch.where(
                (la >= 0) & (lb >= 0),
                a + frac * (b - a),
                torch.where(la >= 0, torch.minimum(a + math.log(2.0), mid), torch.maximum(b - math.log(2.0), mid)),
            )
            lam = torch.exp(x)
            part = self._solve_chunk(Z[rows], lam, G=G[rows])
            rounds = max(rounds, part.iterations)
            inner += part.inner_iterations
            l0 = part.l0.to(torch.float64)
            err = (l0 - target).abs()
            # ties go to the larger penalty (sparser code)
            better = (err < best_err[rows]) | ((err == best_err[rows]) & (lam > best_lam[rows]))
            if best is None:
                best = SolverResult(
                    weights=torch.zeros(n, self.n_concepts, dtype=torch.float32, device=dev),
                    l1=torch.zeros(n, dtype=torch.float32, device=dev),
                    objective=torch.zeros(n, dtype=torch.float64, device=dev),
                    gap=torch.zeros(n, dtype=torch.float64, device=dev),
                    kkt=torch.zeros(n, dtype=torch.float64, device=dev),
                    iterations=0,
                    converged=torch.zeros(n, dtype=torch.bool, device=dev),
                )
            br = rows[better]
            best.weights[br] = part.weights[better]
            best.l1[br] = part.l1[better]
            best.objective[br] = part.objective[better]
            best.gap[br] = part.gap[better]
            best.kkt[br] = part.kkt[better]
            best.converged[br] = part.converged[better]
            best_err[br] = err[better]
            best_lam[br] = lam[better]
            too_dense = l0 > target
            log_lo[rows] = torch.where(too_dense, x, a)
            l0_lo[rows] = torch.where(too_dense, l0, la)
            log_hi[rows] = torch.where(too_dense, b, x)
            l0_hi[rows] = torch.where(too_dense, lb, l0)
            # stop on a hit, or when the bracket is below float resolution of the penalty
            searching[rows] = (err > 0) & ((log_hi[rows] - log_lo[rows]) > 1e-9)
        assert best is not None
        best.iterations = rounds
        best.inner_iterations = inner
        return best


def nonneg_lasso(
    dictionary: torch.Tensor, Z: torch.Tensor, l1: float | torch.Tensor = 0.25, *, warn: bool = True, **kw
) -> SolverResult:
    """One-shot ``NonnegLasso(dictionary, **kw).solve(Z, l1)``."""
    return NonnegLasso(dictionary, **kw).solve(Z, l1, warn=warn)


# ---------------------------------------------------------------------- numerical kernels
# Rows whose low-precision screen shows a violation bigger than this many times ||r|| grow without an exact check.
# bf16 rounds each input to 2^-8 relative, so an error of about that size in (D r)_j is typical; a smaller apparent
# violation might be rounding, and such rows get the exact check instead.
_SCREEN_MARGIN = 2.0**-9


def _rows(D: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``D[idx]`` for a 2-D index, via index_select (about twice as fast as advanced indexing on CPU)."""
    return D.index_select(0, idx.reshape(-1)).view(*idx.shape, D.shape[1])


def _whitener(D: torch.Tensor, ridge: float) -> torch.Tensor:
    """``(S + ridge * ||S|| I)^-1`` for the d × d second moment ``S = D^T D / c`` of the dictionary.

    Ranking concepts by ``<d_j, S^-1 z>`` instead of ``<d_j, z>`` stops the few dominant directions that all
    concepts share from crowding the first working set; the ridge keeps the weak directions from exploding.
    """
    S = (D.T.to(torch.float64) @ D.to(torch.float64)) / D.shape[0]
    top = torch.linalg.eigvalsh(S)[-1].clamp_min(torch.finfo(torch.float64).tiny)
    eye = torch.eye(S.shape[0], dtype=S.dtype, device=S.device)
    return torch.linalg.inv(S + ridge * top * eye).to(D.dtype)


def _fast_bf16(device: torch.device) -> bool:
    """bf16 matmuls pay off on GPUs and on CPUs with native bf16 dot products (AVX512-BF16 / AMX)."""
    if device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _concat(parts: list[SolverResult]) -> SolverResult:
    if len(parts) == 1:
        return parts[0]
    return SolverResult(
        weights=torch.cat([p.weights for p in parts]),
        l1=torch.cat([p.l1 for p in parts]),
        objective=torch.cat([p.objective for p in parts]),
        gap=torch.cat([p.gap for p in parts]),
        kkt=torch.cat([p.kkt for p in parts]),
        iterations=max(p.iterations for p in parts),
        converged=torch.cat([p.converged for p in parts]),
        inner_iterations=sum(p.inner_iterations for p in parts),
    )


def _check_bounds(bounds) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in bounds)
    except (TypeError, ValueError):
        raise ValueError(f"l1_bounds must be a pair (low, high) of numbers, got {bounds!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo < hi):
        raise ValueError(f"l1_bounds must satisfy 0 < low < high (finite), got {bounds!r}")
    return lo, hi


def _maybe_warn(res: SolverResult, tol: float) -> None:
    n_bad = int((~res.converged).sum())
    if n_bad:
        worst = float(res.gap.max())
        warnings.warn(
            f"nonneg lasso: {n_bad} of {len(res.converged)} rows did not converge: worst relative duality gap "
            f"{worst:.3g} > tol {tol:.3g} after {res.iterations} iterations (raise max_iter or tol)",
            ConvergenceWarning,
            stacklevel=3,
        )
