"""Compiled (numba) passes of the sequential tests' per-batch update, with the same values bit for bit as the numpy
passes of monitor/drift/sequential.py. Used when numba imports; sequential.py keeps the numpy passes as the fallback
(its ``BACKEND`` switch picks one).

Why compiled: between refreshes a batch multiplies every detector of a block by a cached factor and gives the
concepts it holds their exact factor. In numpy that is ``r += m``, a gather of the held columns, ``r *= f``, a
scatter, the cap and the row maxima -- five or six passes over ~2 MB of state at 10,000 concepts, each a separate
trip through memory and a numpy call, plus a dozen small calls to build the held concepts' factors and the batch's
bincounts. Here each block row is read and written once, the cap and the row maximum taken on the way, and the
small steps are one loop each. The held concepts' factors are exponentiated in numpy between the loops (numpy's exp
is vectorised; numba's is the scalar libm call, several times slower per element), so this module does no
transcendental arithmetic, and every sum and product is formed in the numpy passes' order: (R + m) x factor,
rounded once, then min(., e^cap).
"""

from __future__ import annotations

import numpy as np

try:
    import numba
except ImportError:  # numba is a runtime dependency, but the numpy passes still work without it
    numba = None

__all__ = ["AVAILABLE", "batch_sums", "block_step", "prevalence_llr", "activation_llr"]

AVAILABLE = numba is not None


def _block_step(r: np.ndarray, f: np.ndarray, cols: np.ndarray, held: np.ndarray, m: float, ecap: float,
                rowmax: np.ndarray) -> None:
    """One batch on one block of detectors (alternatives x concepts, C-contiguous), in place:
    R <- min((R + m) x factor, ecap), the factor being ``held[:, p]`` at column ``cols[p]`` (distinct: the concepts
    the batch holds) and ``f`` elsewhere (a concept absent from the batch). ``rowmax`` receives each row's largest R
    after the batch (0 for a block without columns: R >= 0)."""
    n_rows, n_cols = r.shape
    n_held = cols.shape[0]
    new = np.empty(n_held)
    # R >= 0 (0 or products of positive factors), and the bit patterns of nonnegative doubles order like their
    # values: the row maximum is taken over them as integers. A floating-point max reduction does not vectorise
    # without fastmath (LLVM must allow for NaN), and measured ~3x slower than the update itself.
    bits = r.view(np.int64)
    top = rowmax.view(np.int64)
    for i in range(n_rows):
        # the held columns' new values first, from R before the batch ...
        for p in range(n_held):
            v = (r[i, cols[p]] + m) * held[i, p]
            if v > ecap:
                v = ecap
            new[p] = v
        # ... then one branch-free pass over the row (vectorised), and the held columns written over it
        for j in range(n_cols):
            v = (r[i, j] + m) * f[i, j]
            if v > ecap:
                v = ecap
            r[i, j] = v
        for p in range(n_held):
            r[i, cols[p]] = new[p]
        t = 0
        for j in range(n_cols):
            if bits[i, j] > t:
                t = bits[i, j]
        top[i] = t


def _batch_sums(pos: np.ndarray, w: np.ndarray, wmax: np.ndarray, acc: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The batch's concepts (sorted internal positions; ``pos`` < 0: a concept outside the test) and, for each, the
    presence count, weight sum, sum of squares and weight sum with every weight clipped at ``wmax`` -- what numpy's
    bincounts give, summed in the same order. ``acc`` (concepts x 4, zeros) is scratch, left zeroed: one concept's
    four sums share a cache line."""
    for i in range(pos.shape[0]):
        j = pos[i]
        if j < 0:
            continue
        x = w[i]
        acc[j, 0] += 1.0
        acc[j, 1] += x
        acc[j, 2] += x * x
        if x > wmax[j]:
            acc[j, 3] += x - wmax[j]
    n = 0
    for j in range(acc.shape[0]):
        if acc[j, 0] > 0.0:
            n += 1
    where = np.empty(n, np.int64)
    k, s, sq, s_up = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    p = 0
    for j in range(acc.shape[0]):
        if acc[j, 0] > 0.0:
            where[p] = j
            k[p], s[p], sq[p] = acc[j, 0], acc[j, 1], acc[j, 2]
            s_up[p] = acc[j, 1] - acc[j, 3]
            acc[j, 0] = acc[j, 1] = acc[j, 2] = acc[j, 3] = 0.0
            p += 1
    return where, k, s, sq, s_up


def _prevalence_llr(log_odds: np.ndarray, a_prev: np.ndarray, where: np.ndarray, k: np.ndarray, m: float,
                    floor: float, cap: float, out: np.ndarray) -> None:
    """The log-LR of every prevalence alternative (rows) at each concept the batch holds (``where``, presence counts
    ``k``), clipped to [floor, cap]: k log(p1 / p) + (m - k) (e - 1) log(1 - p), in the numpy passes' order."""
    for h in range(out.shape[0]):
        for p in range(where.shape[0]):
            j = where[p]
            x = log_odds[h, j] * k[p]
            x += (m - k[p]) * a_prev[h, j]
            out[h, p] = min(max(x, floor), cap)


def _activation_llr(lam: np.ndarray, mu: np.ndarray, psi: np.ndarray, cols: np.ndarray, s: np.ndarray,
                    s_up: np.ndarray, m: float, floor: float, cap: float, out: np.ndarray) -> None:
    """The log of Bennett's factor of every activation shift (up and down) at each supported concept the batch
    holds (``cols``, weight sums ``s`` and, clipped at the reference maximum, ``s_up``), clipped to [floor, cap]:
    lam (S - m mu) - m psi (up), lam (m mu - S) - m psi (down), in the numpy passes' order."""
    for p in range(cols.shape[0]):
        j = cols[p]
        mmu = m * mu[j]
        up = s_up[p] - mmu
        down = mmu - s[p]
        for h in range(lam.shape[0]):
            x = lam[h, j] * up
            x -= m * psi[0, h, j]
            out[0, h, p] = min(max(x, floor), cap)
            x = lam[h, j] * down
            x -= m * psi[1, h, j]
            out[1, h, p] = min(max(x, floor), cap)


if numba is not None:
    # cache=True: the first process compiles (seconds) and writes next to this file, or in numba's user-wide cache
    # when that is read-only; later processes (Ray workers included) load the machine code. nogil: an actor's
    # other threads keep running. No fastmath (it would let LLVM reorder or contract the arithmetic, and the result
    # must equal the numpy passes), no parallel: the update is measured on one thread.
    def _jit(fn):
        try:
            return numba.njit(cache=True, nogil=True)(fn)
        except RuntimeError:  # no writable cache location at all: compile in every process
            return numba.njit(nogil=True)(fn)
else:  # the plain Python functions, for reading and for tests of the loops themselves (far too slow to use)
    def _jit(fn):
        return fn


block_step = _jit(_block_step)
prevalence_llr = _jit(_prevalence_llr)
batch_sums = _jit(_batch_sums)
activation_llr = _jit(_activation_llr)
