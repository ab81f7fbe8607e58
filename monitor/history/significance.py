"""The significance tests of history comparisons, on sums rather than rows: two-proportion z (prevalence), Welch's t
(mean activation) and Benjamini-Hochberg control of the false discovery rate over all concepts."""

from __future__ import annotations

import numpy as np

__all__ = ["benjamini_hochberg", "two_proportion", "welch"]


def benjamini_hochberg(p: np.ndarray, m: int | None = None) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (q-values) for ``p``, counting ``m`` >= len(p) hypotheses in all.

    >>> benjamini_hochberg(np.array([0.01, 0.04, 0.03]), m=3).round(3).tolist()
    [0.03, 0.04, 0.04]
    """
    p = np.asarray(p, dtype=np.float64)
    m = len(p) if m is None else int(m)
    if m < len(p):
        raise ValueError(f"m={m} hypotheses cannot be fewer than the {len(p)} p-values given")
    if len(p) == 0:
        return p.copy()
    order = np.argsort(p, kind="mergesort")
    ranked = p[order] * m / np.arange(1, len(p) + 1)
    ranked = np.minimum.accumulate(ranked[::-1])[::-1]
    q = np.empty_like(ranked)
    q[order] = np.minimum(ranked, 1.0)
    return q


def two_proportion(x1: np.ndarray, n1: int, x2: np.ndarray, n2: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(Cohen's h, pooled z, two-sided p) for prevalence x2/n2 versus x1/n1."""
    from scipy import stats

    p1, p2 = x1 / n1, x2 / n2
    pooled = (x1 + x2) / (n1 + n2)
    se = np.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.where(se > 0, (p2 - p1) / se, 0.0)
    pval = np.where(se > 0, 2 * stats.norm.sf(np.abs(z)), 1.0)
    h = 2 * np.arcsin(np.sqrt(np.clip(p2, 0, 1))) - 2 * np.arcsin(np.sqrt(np.clip(p1, 0, 1)))
    return h, z, pval


def welch(
    s1: np.ndarray, ss1: np.ndarray, n1: int, s2: np.ndarray, ss2: np.ndarray, n2: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(standardized mean difference, Welch t, Welch-Satterthwaite df, two-sided p) from sums and sums of squares
    over all images (zeros included)."""
    from scipy import stats

    m1, m2 = s1 / n1, s2 / n2
    v1 = np.maximum(ss1 - s1 * m1, 0.0) / max(n1 - 1, 1)
    v2 = np.maximum(ss2 - s2 * m2, 0.0) / max(n2 - 1, 1)
    a1, a2 = v1 / n1, v2 / n2
    se = np.sqrt(a1 + a2)
    diff = m2 - m1
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(se > 0, diff / se, np.where(diff != 0, np.sign(diff) * np.inf, 0.0))
        df = np.where(
            se > 0, (a1 + a2) ** 2 / (a1**2 / max(n1 - 1, 1) + a2**2 / max(n2 - 1, 1)), float(n1 + n2 - 2)
        )
        sd = np.sqrt((v1 + v2) / 2)
        d = np.where(sd > 0, diff / sd, 0.0)
    pval = np.where(np.isfinite(t), 2 * stats.t.sf(np.abs(t), np.maximum(df, 1.0)), np.where(diff != 0, 0.0, 1.0))
    return d, t, df, pval
