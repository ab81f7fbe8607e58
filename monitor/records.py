"""Plain records that cross module boundaries: sparse codes, stream items, window summaries, alarms.

Every part of splice-monitor (solver, statistics, exporter, history, Ray workers) speaks in these types, so they
hold only numpy arrays and Python scalars: cheap to serialise with Arrow or Ray, and free of torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["SparseCodes", "ItemMeta", "WindowSummary", "Alarm"]


@dataclass(frozen=True)
class SparseCodes:
    """Decompositions of a batch of n embeddings, in CSR layout over the concept axis.

    Row i holds the concepts ``indices[indptr[i]:indptr[i+1]]`` with weights ``values[...]`` (all > 0), its
    reconstruction cosine ``fidelity[i]`` and the l1 penalty ``l1[i]`` it was solved with.
    """

    indptr: np.ndarray  # int64, shape (n + 1,)
    indices: np.ndarray  # int32, shape (nnz,), concept ids in [0, n_concepts)
    values: np.ndarray  # float32, shape (nnz,), strictly positive weights
    fidelity: np.ndarray  # float32, shape (n,), cos(recomposed, input)
    l1: np.ndarray  # float32, shape (n,), penalty used per row
    n_concepts: int
    converged: np.ndarray | None = None  # bool, shape (n,); None when unknown

    def __post_init__(self) -> None:
        n = len(self.indptr) - 1
        if n < 0 or self.indptr[0] != 0 or self.indptr[-1] != len(self.indices):
            raise ValueError(
                f"SparseCodes: indptr must start at 0 and end at nnz={len(self.indices)}, got {self.indptr[:1]}..."
            )
        if len(self.values) != len(self.indices):
            raise ValueError(f"SparseCodes: {len(self.values)} values for {len(self.indices)} indices")
        if len(self.fidelity) != n or len(self.l1) != n:
            raise ValueError(f"SparseCodes: fidelity/l1 must have one entry per row (n={n})")

    def __len__(self) -> int:
        return len(self.indptr) - 1

    @property
    def l0(self) -> np.ndarray:
        """Number of active concepts per row (int64, shape (n,))."""
        return np.diff(self.indptr)

    def row(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(concept ids, weights) of row i."""
        lo, hi = self.indptr[i], self.indptr[i + 1]
        return self.indices[lo:hi], self.values[lo:hi]

    def to_dense(self) -> np.ndarray:
        """Dense (n, n_concepts) float32 weight matrix; for tests and small batches."""
        out = np.zeros((len(self), self.n_concepts), dtype=np.float32)
        out[self.nonzero_rows(), self.indices] = self.values
        return out

    def nonzero_rows(self) -> np.ndarray:
        """Row number of every stored nonzero (int64, shape (nnz,)): the CSR row index expanded."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.l0)

    def slice(self, lo: int, hi: int) -> "SparseCodes":
        """Rows ``lo:hi`` as a new SparseCodes that shares the arrays (a view, no copy)."""
        a, b = int(self.indptr[lo]), int(self.indptr[hi])
        return SparseCodes(
            indptr=self.indptr[lo:hi + 1] - a, indices=self.indices[a:b], values=self.values[a:b],
            fidelity=self.fidelity[lo:hi], l1=self.l1[lo:hi], n_concepts=self.n_concepts,
            converged=None if self.converged is None else self.converged[lo:hi],
        )

    def row_mask(self, rows: np.ndarray | list[int]) -> np.ndarray:
        """A boolean row mask from a boolean mask (checked) or an index array."""
        rows = np.asarray(rows)
        n = len(self)
        if rows.dtype == bool:
            if rows.shape != (n,):
                raise ValueError(f"rows: boolean mask must have shape ({n},), got {rows.shape}")
            return rows
        mask = np.zeros(n, dtype=bool)
        mask[rows.astype(np.int64)] = True
        return mask

    def select(self, rows: np.ndarray | list[int]) -> "SparseCodes":
        """The rows picked by a boolean mask or an index array, kept in their original order."""
        mask = self.row_mask(rows)
        lengths = self.l0[mask]
        indptr = np.zeros(len(lengths) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        nz = np.repeat(mask, self.l0)
        return SparseCodes(indptr=indptr, indices=self.indices[nz], values=self.values[nz],
                           fidelity=self.fidelity[mask], l1=self.l1[mask], n_concepts=self.n_concepts,
                           converged=None if self.converged is None else self.converged[mask])

    def take(self, rows: np.ndarray | list[int]) -> "SparseCodes":
        """A new SparseCodes holding only the given rows, in that order (repeats allowed)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        lengths = self.l0[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        # position of every gathered nonzero: its row's start in the source plus its rank inside the row
        rank = np.arange(int(indptr[-1]), dtype=np.int64) - np.repeat(indptr[:-1], lengths)
        gather = np.repeat(self.indptr[rows], lengths) + rank
        return SparseCodes(
            indptr=indptr,
            indices=self.indices[gather],
            values=self.values[gather],
            fidelity=self.fidelity[rows],
            l1=self.l1[rows],
            n_concepts=self.n_concepts,
            converged=None if self.converged is None else self.converged[rows],
        )

    @classmethod
    def concat(cls, parts: "list[SparseCodes]") -> "SparseCodes":
        """The rows of ``parts`` one after another (all over the same concept space)."""
        if not parts:
            raise ValueError("concat needs at least one SparseCodes")
        spaces = {p.n_concepts for p in parts}
        if len(spaces) != 1:
            raise ValueError(f"concat: parts index different concept spaces {sorted(spaces)}")
        offsets = np.cumsum([0] + [len(p.indices) for p in parts])
        indptr = np.concatenate([[0]] + [p.indptr[1:] + off for p, off in zip(parts, offsets[:-1])])
        conv = None if any(p.converged is None for p in parts) else np.concatenate([p.converged for p in parts])
        return cls(indptr=indptr.astype(np.int64), indices=np.concatenate([p.indices for p in parts]),
                   values=np.concatenate([p.values for p in parts]),
                   fidelity=np.concatenate([p.fidelity for p in parts]),
                   l1=np.concatenate([p.l1 for p in parts]), n_concepts=parts[0].n_concepts, converged=conv)

    @classmethod
    def from_dense(
        cls,
        weights: np.ndarray,
        fidelity: np.ndarray,
        l1: np.ndarray | float,
        converged: np.ndarray | None = None,
    ) -> "SparseCodes":
        """Build from a dense (n, c) nonnegative weight matrix; exact zeros are dropped."""
        weights = np.asarray(weights)
        n, c = weights.shape
        rows, cols = np.nonzero(weights > 0)
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
        l1_arr = np.broadcast_to(np.asarray(l1, dtype=np.float32), (n,)).copy()
        return cls(
            indptr=indptr,
            indices=cols.astype(np.int32),
            values=weights[rows, cols].astype(np.float32),
            fidelity=np.asarray(fidelity, dtype=np.float32).reshape(n),
            l1=l1_arr,
            n_concepts=c,
            converged=None if converged is None else np.asarray(converged, dtype=bool),
        )


@dataclass(frozen=True)
class ItemMeta:
    """Identity of one stream item: a unique id (for idempotent counting), event time and free metadata."""

    id: str
    timestamp: float  # event time, unix seconds (UTC)
    stream: str = "default"
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class WindowSummary:
    """Aggregates of one closed window of one stream; the unit the exporter and the history store consume.

    Per-concept arrays are dense over the concept space (length n_concepts); ``concept_space`` identifies the
    vocabulary + dictionary they index, so incompatible windows are never mixed.
    """

    stream: str
    start: float  # unix seconds, inclusive
    end: float  # unix seconds, exclusive
    n_images: int
    weight_sum: np.ndarray  # float64 (c,)  sum of weights per concept
    weight_sq_sum: np.ndarray  # float64 (c,)  sum of squared weights per concept
    presence: np.ndarray  # int64 (c,)    number of images with weight > 0
    fidelity_sum: float = 0.0
    fidelity_sq_sum: float = 0.0
    fidelity_min: float = float("inf")
    fidelity_max: float = float("-inf")
    l0_sum: float = 0.0
    l0_sq_sum: float = 0.0
    concept_space: str = ""
    # Position of the window in its stream (0, 1, 2, ...): with the start it identifies a stored window, so count
    # windows that share a start (a source without event times) stay apart. -1: not numbered.
    index: int = -1

    @property
    def n_concepts(self) -> int:
        return len(self.weight_sum)

    @property
    def prevalence(self) -> np.ndarray:
        """Fraction of images in which each concept is active."""
        return self.presence / max(self.n_images, 1)

    @property
    def mean_activation(self) -> np.ndarray:
        """Mean weight of each concept over all images of the window (zeros included)."""
        return self.weight_sum / max(self.n_images, 1)


@dataclass(frozen=True)
class Alarm:
    """One drift finding a person can act on: what drifted, which way, by how much, how sure."""

    stream: str
    kind: str  # "prevalence" | "activation" | "stream"
    direction: str  # "up" | "down" | "none" (stream-level)
    concept_index: int  # -1 for stream-level alarms
    concept: str  # concept name, "" for stream-level alarms
    reference_prevalence: float
    current_prevalence: float
    reference_mean: float
    current_mean: float
    effect_size: float
    score: float
    p_value: float
    window_start: float
    window_end: float
    reference_start: float = float("nan")
    reference_end: float = float("nan")
    state: str = "firing"  # "firing" | "resolved"
    # when it fired (or resolved): the latest event time of the batch whose evidence crossed, and the stream offset
    # just past that batch (items of the stream seen, reference included); nan / -1 when unknown (old records)
    event_time: float = float("nan")
    item_offset: int = -1

    def describe(self) -> str:
        """One line in words, e.g. "'snow' prevalence on camera-7: 2.1% -> 18.7%"."""
        if self.kind == "stream" or self.concept_index < 0:
            return f"stream {self.stream}: drift score {self.score:.3g} (p={self.p_value:.2g})"
        if self.kind == "prevalence":
            return (
                f"'{self.concept}' prevalence on {self.stream}: "
                f"{100 * self.reference_prevalence:.1f}% -> {100 * self.current_prevalence:.1f}%"
            )
        return (
            f"'{self.concept}' mean activation on {self.stream}: "
            f"{self.reference_mean:.4f} -> {self.current_mean:.4f}"
        )
