"""Online MMD on dense embeddings: the baseline the drift benchmark compares the concept tests against.

It lives with the benchmarks, not in the monitor: the pipeline hands the monitor sparse codes, never the dense
embeddings this test needs, so in the monitor it was a path no stream could reach.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MMDDriftOnline"]


class MMDDriftOnline:
    """Unbiased MMD^2 with a Gaussian kernel (median-heuristic bandwidth) between a fixed reference sample and each
    current window, thresholded at the (1 - 1/ERT) quantile of its null distribution estimated by splitting the
    reference into pseudo-reference and pseudo-window (a per-step rate of 1/ERT is resolvable by a bootstrap)."""

    def __init__(self, reference: np.ndarray, *, window: int, ert: float, n_bootstraps: int = 2000,
                 bandwidth: float | None = None, seed: int = 0) -> None:
        x = np.asarray(reference, dtype=np.float32)
        if x.ndim != 2 or len(x) < 2 * window:
            raise ValueError(f"reference must be (R, d) with R >= 2 x window = {2 * window}, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("reference embeddings contain NaN or inf")
        self.window = int(window)
        self.ert = float(ert)
        self.reference = x
        self._x_sq = np.einsum("ij,ij->i", x, x)
        if bandwidth is None:
            rng = np.random.default_rng(seed)
            sub = x[rng.choice(len(x), size=min(len(x), 500), replace=False)]
            d2 = self._sqdist(sub, sub)
            bandwidth = float(np.sqrt(0.5 * np.median(d2[np.triu_indices(len(sub), 1)])))
        self.bandwidth = max(float(bandwidth), 1e-12)
        k_xx = self._kernel(x, self._x_sq, x, self._x_sq)
        self._kxx_offdiag_sum = float(k_xx.sum() - len(x))
        self.null = self._bootstrap(k_xx, int(n_bootstraps), np.random.default_rng(seed + 1))
        self.threshold = float(np.quantile(self.null, 1.0 - 1.0 / self.ert))

    @staticmethod
    def _sqdist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        d = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
        return np.maximum(d, 0.0)

    def _kernel(self, a, a_sq, b, b_sq) -> np.ndarray:
        d2 = np.maximum(a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T), 0.0)
        return np.exp(-d2 / (2.0 * self.bandwidth ** 2))

    def _bootstrap(self, k: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
        r, n = len(k), self.window
        m = r - n
        row = k.sum(axis=1)
        total = row.sum()
        out = np.empty(n_boot)
        chunk = 256
        for lo in range(0, n_boot, chunk):
            b = min(chunk, n_boot - lo)
            u = np.zeros((b, r), dtype=np.float32)
            picks = np.argsort(rng.random((b, r)), axis=1)[:, :n]
            np.put_along_axis(u, picks, 1.0, axis=1)
            uk = u @ k
            kyy = np.einsum("ij,ij->i", uk, u)
            kyd = u @ row
            kxy = kyd - kyy
            kxx = total - 2.0 * kyd + kyy
            out[lo:lo + b] = (kxx - m) / (m * (m - 1)) + (kyy - n) / (n * (n - 1)) - 2.0 * kxy / (m * n)
        return out

    def score(self, current: np.ndarray) -> float:
        """Unbiased MMD^2 between the reference and ``current`` (n, d)."""
        y = np.asarray(current, dtype=np.float32)
        if y.ndim != 2 or y.shape[1] != self.reference.shape[1] or len(y) < 2:
            raise ValueError(f"current must be (n >= 2, {self.reference.shape[1]}), got shape {y.shape}")
        y_sq = np.einsum("ij,ij->i", y, y)
        r, n = len(self.reference), len(y)
        k_yy = self._kernel(y, y_sq, y, y_sq)
        k_xy = self._kernel(self.reference, self._x_sq, y, y_sq)
        return float(self._kxx_offdiag_sum / (r * (r - 1)) + (k_yy.sum() - n) / (n * (n - 1))
                     - 2.0 * k_xy.sum() / (r * n))

    def p_value(self, score: float) -> float:
        """Bootstrap p-value (resolution 1 / (n_bootstraps + 1))."""
        return float((1 + np.sum(self.null >= score)) / (len(self.null) + 1))

    def test(self, current: np.ndarray) -> tuple[float, bool]:
        s = self.score(current)
        return s, s > self.threshold
