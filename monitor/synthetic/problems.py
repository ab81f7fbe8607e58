"""Synthetic CLIP-like decomposition problems: a concept dictionary with a decaying spectrum and targets planted
from a few concepts plus noise, for solver tests and ``bench solver`` when no real data is at hand."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["SyntheticProblem", "make_dictionary", "make_targets", "make_problem"]


@dataclass(frozen=True)
class SyntheticProblem:
    """A dictionary ``(c, d)`` and targets ``(n, d)``; row i of the targets was built from concepts
    ``planted_indices[i]`` with mixing weights ``planted_weights[i]`` before noise was added."""

    dictionary: torch.Tensor  # float32 (c, d), unit rows, centred over rows
    targets: torch.Tensor  # float32 (n, d), unit rows
    planted_indices: torch.Tensor  # int64 (n, k)
    planted_weights: torch.Tensor  # float32 (n, k), > 0


def make_dictionary(
    n_concepts: int = 10_000, dim: int = 512, *, decay: float = 0.5, seed: int = 0
) -> torch.Tensor:
    """A ``(n_concepts, dim)`` float32 dictionary built like SpLiCE's: unit rows, mean over rows removed, unit again.

    Rows are Gaussian with per-axis scale ``k ** -decay`` (k = 1..dim), which gives the decaying singular spectrum
    and the coherence (many concepts sharing a few strong directions) of real CLIP text embeddings.
    """
    if n_concepts < 2 or dim < 2:
        raise ValueError(f"make_dictionary: need n_concepts >= 2 and dim >= 2, got {n_concepts} x {dim}")
    g = torch.Generator().manual_seed(seed)
    scale = torch.arange(1, dim + 1, dtype=torch.float64).pow(-decay)
    a = torch.randn(n_concepts, dim, generator=g, dtype=torch.float64) * scale
    a = a / a.norm(dim=1, keepdim=True)
    a = a - a.mean(dim=0)
    a = a / a.norm(dim=1, keepdim=True)
    return a.to(torch.float32)


def make_targets(
    dictionary: torch.Tensor,
    n: int = 256,
    *,
    n_planted: int = 10,
    noise: float = 0.5,
    seed: int = 1,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` unit targets, each a positive mix of ``n_planted`` distinct random concepts plus isotropic noise.

    The clean mix and the noise are both unit vectors; ``noise`` is the noise norm relative to the mix, so
    ``noise=0.5`` leaves a cosine of about 0.9 between a target and its clean mix. Returns
    ``(targets, planted_indices, planted_weights)``.
    """
    c, d = dictionary.shape
    if not 1 <= n_planted <= c:
        raise ValueError(f"make_targets: n_planted must be in [1, {c}], got {n_planted}")
    if noise < 0:
        raise ValueError(f"make_targets: noise must be >= 0, got {noise}")
    g = torch.Generator().manual_seed(seed)
    dic = dictionary.detach().to("cpu", torch.float64)
    idx = _distinct_draws(n, c, n_planted, g)
    weights = torch.rand(n, n_planted, generator=g, dtype=torch.float64) + 0.2
    # row blocks keep the gathered (rows, k, d) concepts small for big benchmark batches
    clean = torch.cat([torch.einsum("nk,nkd->nd", weights[i : i + 8192], dic[idx[i : i + 8192]])
                       for i in range(0, n, 8192)]) if n else torch.zeros(0, d, dtype=torch.float64)
    clean = clean / clean.norm(dim=1, keepdim=True)
    eps = torch.randn(n, d, generator=g, dtype=torch.float64)
    eps = eps / eps.norm(dim=1, keepdim=True)
    z = clean + noise * eps
    z = z / z.norm(dim=1, keepdim=True)
    return z.to(torch.float32), idx, weights.to(torch.float32)


def _distinct_draws(n: int, c: int, k: int, g: torch.Generator) -> torch.Tensor:
    """``(n, k)`` indices in ``[0, c)``, distinct within each row, in O(n k) memory (big benchmark batches)."""
    if 2 * k > c:  # dense case: a permutation per row is cheap enough and never loops
        return torch.rand(n, c, generator=g).argsort(dim=1)[:, :k]
    idx = torch.randint(0, c, (n, k), generator=g)
    while True:
        srt = idx.sort(dim=1).values
        dup = (srt[:, 1:] == srt[:, :-1]).any(dim=1).nonzero().flatten()
        if len(dup) == 0:
            return idx
        idx[dup] = torch.randint(0, c, (len(dup), k), generator=g)


def make_problem(
    n: int = 256,
    n_concepts: int = 10_000,
    dim: int = 512,
    *,
    n_planted: int = 10,
    noise: float = 0.5,
    decay: float = 0.5,
    seed: int = 0,
) -> SyntheticProblem:
    """The default benchmark problem (ANCHORS.md): c=10,000, d=512, 10 planted concepts plus noise per target."""
    dic = make_dictionary(n_concepts, dim, decay=decay, seed=seed)
    z, idx, w = make_targets(dic, n, n_planted=n_planted, noise=noise, seed=seed + 1)
    return SyntheticProblem(dictionary=dic, targets=z, planted_indices=idx, planted_weights=w)
