"""Block principal pivoting (Kim & Park) for the small nonnegative quadratic programs of the lasso's working sets:
batched over rows, on the k x k Gram matrices the solver gathers; docs/solver.md derives it."""

from __future__ import annotations

import torch

__all__ = ["bpp", "sub_gram"]


def sub_gram(Q: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``Q[i][idx[i]][:, idx[i]]`` for every row i, as one flat gather."""
    n, k, _ = Q.shape
    f = idx.shape[1]
    flat = (idx[:, :, None] * k + idx[:, None, :]).reshape(n, f * f)
    return Q.reshape(n, k * k).gather(1, flat).view(n, f, f)


def bpp(
    Q: torch.Tensor, q: torch.Tensor, valid: torch.Tensor, F0: torch.Tensor, max_iter: int
) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Batched block principal pivoting (Kim & Park) for ``min_x 1/2 x^T Q x - q^T x, x >= 0`` on ``valid`` slots.

    Lasso on a working set is this problem with ``q = D_W z - lam / 2``. Every step solves the unconstrained
    problem on the passive set ``F`` and swaps all infeasible variables (negative ``x`` in F, negative gradient
    outside); when a row stops improving it falls back to swapping one variable, which guarantees termination.
    Returns ``(x, steps, settled)``; ``settled`` marks rows whose pivoting finished.
    """
    n, k = q.shape
    dev = q.device
    x = torch.zeros_like(q)
    settled = torch.zeros(n, dtype=torch.bool, device=dev)
    F_out = F0 & valid
    # working copies of the rows still pivoting; shrunk when at least half of them have finished
    act = torch.arange(n, device=dev)
    Qa, qa, va, Fa = Q, q, valid, F_out.clone()
    best = torch.full((n,), k + 1, dtype=torch.long, device=dev)
    backup = torch.full((n,), 3, dtype=torch.long, device=dev)
    order = torch.arange(1, k + 1, device=dev)
    eps = 1e-12 * qa.abs().amax(dim=1, keepdim=True).clamp_min(1.0)
    steps = 0
    for steps in range(1, max_iter + 1):
        xa = _passive_solve(Qa, qa, Fa)
        y = torch.bmm(Qa, xa[:, :, None])[:, :, 0] - qa
        infeasible = (Fa & (xa < -eps)) | (~Fa & va & (y < -eps))
        nv = infeasible.sum(dim=1)
        ok = nv == 0
        x[act] = xa
        F_out[act] = Fa
        if bool(ok.all()):
            settled[act] = True
            break
        improving = nv < best
        best = torch.where(improving, nv, best)
        full = improving | (backup > 0)
        backup = torch.where(improving, torch.full_like(backup, 3), torch.where(full, backup - 1, backup))
        last = (infeasible.long() * order).argmax(dim=1)
        single = torch.zeros_like(infeasible).scatter_(1, last[:, None], True)
        flip = torch.where(full[:, None], infeasible, single) & ~ok[:, None]
        Fa = Fa ^ flip
        if bool(ok.any()):
            settled[act[ok]] = True
            if 2 * int(ok.sum()) >= len(ok):
                keep = ~ok
                act, Qa, qa, va, Fa = act[keep], Qa[keep], qa[keep], va[keep], Fa[keep]
                best, backup, eps = best[keep], backup[keep], eps[keep]
    x = torch.where(F_out & valid, x.clamp_min(0.0), torch.zeros_like(x))
    return x, steps, settled


def _passive_solve(Q: torch.Tensor, q: torch.Tensor, F: torch.Tensor) -> torch.Tensor:
    """Solve ``Q_FF x_F = q_F`` per row (x = 0 off F) by one batched Cholesky on the passive slots only.

    Rows are compacted to the largest passive set in the batch (identity padding), which keeps the factorisation
    small: LAPACK time grows steeply with the matrix size while the passive sets hold ~10-40 slots.
    """
    n, k = q.shape
    nF = F.sum(dim=1)
    f = int(nF.max()) if n else 0
    if f == 0:
        return torch.zeros_like(q)
    # F slots first, stable, so the compaction is a deterministic permutation prefix
    idx = F.to(torch.int8).argsort(dim=1, descending=True, stable=True)[:, :f]
    real = F.gather(1, idx)
    Qf = sub_gram(Q, idx)
    rf = real.to(Q.dtype)
    Qf = Qf * (rf[:, :, None] * rf[:, None, :])
    Qf.diagonal(dim1=1, dim2=2).add_(1.0 - rf)
    qf = q.gather(1, idx) * rf
    L, info = torch.linalg.cholesky_ex(Qf)
    if bool((info > 0).any()):
        # nearly collinear concepts in F: a tiny ridge keeps the factorisation alive; the certificate still judges w
        bad = info > 0
        ridge = 1e-10
        eye = torch.eye(f, dtype=Q.dtype, device=Q.device)
        while bool(bad.any()) and ridge < 1.0:
            rows = bad.nonzero().flatten()
            Lb, ib = torch.linalg.cholesky_ex(Qf[rows] + ridge * eye)
            okb = ib == 0
            L[rows[okb]] = Lb[okb]
            bad[rows[okb]] = False
            ridge *= 100.0
    xf = torch.cholesky_solve(qf[:, :, None], L)[:, :, 0] * rf
    return torch.zeros_like(q).scatter_(1, idx, xf)
