"""Synthetic streams of sparse concept codes with planted prevalence / activation shifts, for tests, the drift
benchmark and demos; plus a random dictionary to turn codes into dense embeddings for the MMD baseline.

Concepts are independent: concept j is active in an image with probability ``prevalence[j]`` (log-uniform profile
scaled to ``mean_l0`` active concepts per image) and, when active, has weight ``scale[j] * Gamma(2) / 2``.

>>> batches = list(synthetic_stream(200, 500, shifts=[Shift(concept=3, onset=250, kind="prevalence", size=4.0)],
...                                 mean_l0=10, batch_size=100, seed=1))
>>> len(batches), len(batches[0][0]), batches[0][1][0].id
(5, 100, 'synthetic-0')
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from monitor.records import ItemMeta, SparseCodes

__all__ = ["Shift", "ConceptProfile", "concept_profile", "synthetic_stream", "random_dictionary", "embed_codes"]

SHIFT_KINDS = ("prevalence", "activation")


@dataclass(frozen=True)
class Shift:
    """From image ``onset`` on, multiply concept ``concept``'s prevalence (kind "prevalence", capped at 0.95) or its
    weight scale (kind "activation") by ``size``; size < 1 plants a downward shift."""

    concept: int
    onset: int
    kind: str = "prevalence"
    size: float = 3.0

    def __post_init__(self) -> None:
        if self.kind not in SHIFT_KINDS:
            raise ValueError(f"Shift.kind must be one of {SHIFT_KINDS}, got {self.kind!r}")
        if not (self.size > 0):
            raise ValueError(f"Shift.size must be a positive factor, got {self.size!r}")
        if self.onset < 0 or self.concept < 0:
            raise ValueError(f"Shift.onset and Shift.concept must be >= 0, got {self.onset!r}, {self.concept!r}")

    @property
    def direction(self) -> str:
        return "up" if self.size > 1 else "down"


@dataclass(frozen=True)
class ConceptProfile:
    prevalence: np.ndarray  # (c,) probability that a concept is active in an image
    scale: np.ndarray  # (c,) mean weight of a concept when active


def concept_profile(n_concepts: int, mean_l0: float = 30.0, *, seed: int = 0,
                    prevalence_range: tuple[float, float] = (2e-4, 5e-2)) -> ConceptProfile:
    """A log-uniform prevalence profile scaled so that images have ``mean_l0`` active concepts on average."""
    if n_concepts < 1 or not (0 < mean_l0 < n_concepts):
        raise ValueError(f"need n_concepts >= 1 and 0 < mean_l0 < n_concepts, got {n_concepts!r}, {mean_l0!r}")
    rng = np.random.default_rng(seed)
    lo, hi = prevalence_range
    p = np.exp(rng.uniform(np.log(lo), np.log(hi), n_concepts))
    p = np.minimum(p * (mean_l0 / p.sum()), 0.5)
    scale = np.exp(rng.normal(np.log(0.08), 0.4, n_concepts))
    return ConceptProfile(prevalence=p, scale=scale)


def _bernoulli_positions(p: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(concept, row) of every success of independent Bernoulli(p[j]) trials over rows 0..n-1, via geometric gaps."""
    p = np.asarray(p, dtype=np.float64)
    live = np.flatnonzero(p > 0)
    if len(live) < len(p):
        c, r = _bernoulli_positions(p[live], n, rng)
        return live[c], r
    mean = n * p
    draws = np.ceil(mean + 6.0 * np.sqrt(mean) + 8.0).astype(np.int64)
    concept = np.repeat(np.arange(len(p)), draws)
    gaps = rng.geometric(np.repeat(p, draws))
    csum = np.cumsum(gaps)
    start = np.concatenate([[0], np.cumsum(draws)[:-1]])
    offset = np.concatenate([[0], csum])[start]
    pos = csum - np.repeat(offset, draws) - 1
    short = pos[np.cumsum(draws) - 1] < n  # the last draw did not pass the end: need more gaps (very rare)
    keep = pos < n
    concept, pos = concept[keep], pos[keep]
    if short.any():
        extra_c, extra_r = [], []
        for j in np.flatnonzero(short):
            rows = np.flatnonzero(rng.random(n) < p[j])
            extra_c.append(np.full(len(rows), j))
            extra_r.append(rows)
        drop = np.isin(concept, np.flatnonzero(short))
        concept = np.concatenate([concept[~drop], *extra_c])
        pos = np.concatenate([pos[~drop], *extra_r])
    return concept, pos


def synthetic_stream(
    n_concepts: int,
    n_images: int,
    shifts: list[Shift] | tuple[Shift, ...] = (),
    *,
    seed: int = 0,
    mean_l0: float = 30.0,
    batch_size: int = 1000,
    stream: str = "synthetic",
    start_time: float = 1_700_000_000.0,
    rate: float = 10.0,
    profile: ConceptProfile | None = None,
) -> Iterator[tuple[SparseCodes, list[ItemMeta]]]:
    """Yield ``(SparseCodes, list[ItemMeta])`` batches of a stationary stream with the given shifts planted.

    Image i has id ``f"{stream}-{i}"`` and event time ``start_time + i / rate``. The profile comes from
    :func:`concept_profile` with the same seed unless given.
    """
    if batch_size < 1 or n_images < 0:
        raise ValueError(f"need batch_size >= 1 and n_images >= 0, got {batch_size!r}, {n_images!r}")
    for s in shifts:
        if s.concept >= n_concepts:
            raise ValueError(f"Shift.concept={s.concept} is outside [0, {n_concepts})")
    prof = profile or concept_profile(n_concepts, mean_l0, seed=seed)
    rng = np.random.default_rng(seed + 7919)
    shifted = sorted({s.concept for s in shifts})
    base_p = prof.prevalence.copy()
    base_p[shifted] = 0.0  # drawn row by row below
    for lo in range(0, n_images, batch_size):
        n = min(batch_size, n_images - lo)
        concept, row = _bernoulli_positions(base_p, n, rng)
        weight = prof.scale[concept] * rng.gamma(2.0, 0.5, len(concept))
        extra_c, extra_r, extra_w = [concept], [row], [weight]
        image = lo + np.arange(n)
        for j in shifted:
            p_row = np.full(n, prof.prevalence[j])
            s_row = np.full(n, prof.scale[j])
            for s in shifts:
                if s.concept != j:
                    continue
                after = image >= s.onset
                if s.kind == "prevalence":
                    p_row[after] = np.minimum(p_row[after] * s.size, 0.95)
                else:
                    s_row[after] *= s.size
            rows = np.flatnonzero(rng.random(n) < p_row)
            extra_c.append(np.full(len(rows), j))
            extra_r.append(rows)
            extra_w.append(s_row[rows] * rng.gamma(2.0, 0.5, len(rows)))
        concept = np.concatenate(extra_c)
        row = np.concatenate(extra_r)
        weight = np.concatenate(extra_w)
        order = np.lexsort((concept, row))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=n), out=indptr[1:])
        codes = SparseCodes(
            indptr=indptr,
            indices=concept[order].astype(np.int32),
            values=np.maximum(weight[order], 1e-6).astype(np.float32),
            fidelity=rng.beta(8.0, 3.0, n).astype(np.float32),
            l1=np.full(n, 0.25, dtype=np.float32),
            n_concepts=n_concepts,
        )
        items = [ItemMeta(id=f"{stream}-{i}", timestamp=start_time + i / rate, stream=stream) for i in image]
        yield codes, items


def random_dictionary(n_concepts: int, dim: int = 512, *, seed: int = 0) -> np.ndarray:
    """A (n_concepts, dim) float32 dictionary of random unit rows, centred like a SpLiCE concept dictionary."""
    rng = np.random.default_rng(seed)
    d = rng.standard_normal((n_concepts, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d -= d.mean(axis=0, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return d


def embed_codes(codes: SparseCodes, dictionary: np.ndarray, *, noise: float = 0.0,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """Dense embeddings normalize(codes @ dictionary + noise): the view a dense-embedding detector gets."""
    from scipy.sparse import csr_matrix

    w = csr_matrix((codes.values, codes.indices, codes.indptr), shape=(len(codes), codes.n_concepts))
    z = np.asarray(w @ dictionary, dtype=np.float32)
    if noise > 0:
        z += (rng or np.random.default_rng(0)).standard_normal(z.shape).astype(np.float32) * noise
    norm = np.linalg.norm(z, axis=1, keepdims=True)
    return z / np.maximum(norm, 1e-12)
