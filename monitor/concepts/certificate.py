"""The optimality certificate of the nonnegative lasso ``min_{w >= 0} ||D^T w - z||^2 + lam ||w||_1``: primal
objective, relative duality gap and KKT violation. The solver certifies its own rows with these; tests and the
benchmark certify any other solver's weights with :func:`dual_certificate`."""

from __future__ import annotations

import torch

__all__ = ["dual_certificate", "duality_gap", "kkt_violation", "exact_matmul", "as_l1"]


def dual_certificate(
    dictionary: torch.Tensor, Z: torch.Tensor, weights: torch.Tensor, l1: float | torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(objective, relative gap, kkt)`` of any nonnegative ``weights`` (n, c) for the problem on ``dictionary``.

    Independent of how the weights were found (tests use it on other solvers' output); costs two dense matmuls.
    """
    D = dictionary.to(torch.float64)
    Zd = Z.to(torch.float64)
    W = weights.to(torch.float64)
    lam = as_l1(l1, Zd.shape[0], Zd.device, torch.float64)
    R = Zd - W @ D
    Dr = R @ D.T
    obj, gap, _ = duality_gap(Zd, R, Dr.amax(dim=1), W.sum(dim=1), lam)
    grad = lam[:, None] - 2.0 * Dr
    kkt = torch.where(W > 0, grad.abs(), (-grad).clamp_min(0.0)).amax(dim=1)
    return obj, gap, kkt


class exact_matmul:
    """Force full-precision float32 matmuls (no TF32 / bf16 shortcuts) while certificates are computed."""

    def __enter__(self) -> None:
        self._prev = torch.get_float32_matmul_precision()
        if self._prev != "highest":
            torch.set_float32_matmul_precision("highest")

    def __exit__(self, *exc) -> None:
        if self._prev != "highest":
            torch.set_float32_matmul_precision(self._prev)


def duality_gap(
    Z: torch.Tensor, R: torch.Tensor, max_Dr: torch.Tensor, l1w: torch.Tensor, lam: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Primal objective, relative duality gap and dual value from the residual ``R = Z - D^T w``.

    The dual is ``max ||z||^2 - ||z - theta||^2`` s.t. ``D theta <= lam / 2``; ``theta = s * r`` with the best
    feasible ``s`` is a dual point whenever ``s <= lam / (2 max_j (D r)_j)``.
    """
    Rd, Zd = R.to(torch.float64), Z.to(torch.float64)
    rr = (Rd * Rd).sum(dim=1)
    rz = (Rd * Zd).sum(dim=1)
    primal = rr + lam * l1w.to(torch.float64)
    m = max_Dr.to(torch.float64)
    s = torch.where(rr > 0, rz / rr.clamp_min(torch.finfo(torch.float64).tiny), torch.ones_like(rr))
    s = torch.where(m > 0, torch.minimum(s, 0.5 * lam / m.clamp_min(torch.finfo(torch.float64).tiny)), s)
    s = s.clamp_min(0.0)
    dual = 2.0 * s * rz - s * s * rr
    gap_abs = (primal - dual).clamp_min(0.0)
    rel = torch.where(primal > 0, gap_abs / primal.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(primal))
    return primal, rel, dual


def kkt_violation(max_Dr: torch.Tensor, Dr_ws: torch.Tensor, wv: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
    """Largest optimality violation; ``grad_j = lam - 2 (D r)_j``. Zero weights need ``grad_j >= 0``, positive
    ones ``grad_j = 0``; positive weights only live in the working set, whose ``(D r)`` is ``Dr_ws``."""
    lam_c = lam.to(torch.float64)
    zero_side = (2.0 * max_Dr.to(torch.float64) - lam_c).clamp_min(0.0)
    g_ws = (lam_c[:, None] - 2.0 * Dr_ws.to(torch.float64)).abs()
    pos_side = torch.where(wv > 0, g_ws, torch.zeros_like(g_ws)).amax(dim=1)
    return torch.maximum(zero_side, pos_side)


def as_l1(l1, n, device, dtype) -> torch.Tensor:
    if isinstance(l1, torch.Tensor):
        t = l1.detach().to(device, dtype).flatten()
        return t.expand(n) if t.numel() == 1 else t
    return torch.full((n,), float(l1), dtype=dtype, device=device)
