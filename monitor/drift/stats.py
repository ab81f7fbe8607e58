"""Mergeable streaming statistics over sparse concept codes: one shape (update / get / merge, ``+`` and ``+=``) and a
declared state that saves and loads as one unit in a pickle-free ``.npz`` file.

Every update costs O(nonzeros) of the batch: per-concept sums go through ``np.add.at`` on the CSR indices, never
through a dense (images x concepts) matrix. Merging two partials is exact up to float64 summation order, so partial
windows from several workers combine into the same numbers a single process would have produced.

>>> import numpy as np
>>> from monitor.records import SparseCodes
>>> codes = SparseCodes.from_dense(np.array([[0.5, 0.0, 0.2], [0.0, 0.0, 0.4]]), fidelity=[0.9, 0.8], l1=0.25)
>>> a, b = ConceptMoments(3), ConceptMoments(3)
>>> a.update(codes.take([0])); b.update(codes.take([1]))
>>> (a + b).get()["presence"].tolist()
[1, 0, 2]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from monitor.drift import state
from monitor.records import SparseCodes, WindowSummary

__all__ = [
    "Statistic",
    "Moments",
    "ConceptMoments",
    "WindowStats",
]

def _select(codes: SparseCodes, rows: np.ndarray | slice | None
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(indices, values, fidelity, l0) of the selected rows without building a new SparseCodes (cheap row masks;
    a slice of rows, what count windows take, is a view of the CSR arrays)."""
    if rows is None:
        return codes.indices, codes.values, codes.fidelity, codes.l0
    if isinstance(rows, slice):
        lo, hi, step = rows.indices(len(codes))
        if step == 1:
            hi = max(hi, lo)
            a, b = int(codes.indptr[lo]), int(codes.indptr[hi])
            return codes.indices[a:b], codes.values[a:b], codes.fidelity[lo:hi], codes.l0[lo:hi]
        rows = np.arange(lo, hi, step)
    mask = codes.row_mask(rows)
    nz_mask = np.repeat(mask, codes.l0)
    return codes.indices[nz_mask], codes.values[nz_mask], codes.fidelity[mask], codes.l0[mask]


class Statistic:
    """Shared shape of every streaming statistic: ``update``, ``get``, in-place ``merge`` (also ``+=``), ``+`` that
    returns a new object, and a declared state (``state_dict`` / ``from_state``, ``save`` / ``load``)."""

    def update(self, *args: Any, **kwargs: Any) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def get(self) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    def merge(self, other: "Statistic") -> "Statistic":  # pragma: no cover - interface
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:  # pragma: no cover - interface
        raise NotImplementedError

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Statistic":  # pragma: no cover - interface
        raise NotImplementedError

    def copy(self):
        return type(self).from_state(self.state_dict())

    def __iadd__(self, other):
        return self.merge(other)

    def __add__(self, other):
        return self.copy().merge(other)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return _states_equal(self.state_dict(), other.state_dict())

    __hash__ = None  # mutable

    def to_bytes(self) -> bytes:
        return state.dumps(self)

    @classmethod
    def from_bytes(cls, blob: bytes):
        return state.loads(blob, cls)

    def save(self, path: str | Path) -> None:
        state.save(self, path)

    @classmethod
    def load(cls, path: str | Path):
        return state.load(path, cls)


class Moments(Statistic):
    """Count, sum, sum of squares, min and max of a scalar stream (fidelity, l0, ...)."""

    def __init__(self) -> None:
        self.n = 0
        self.sum = 0.0
        self.sq_sum = 0.0
        self.min = math.inf
        self.max = -math.inf

    def update(self, x: np.ndarray | float) -> None:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        self.n += int(x.size)
        self.sum += float(x.sum())
        self.sq_sum += float(np.dot(x, x))
        self.min = min(self.min, float(x.min()))
        self.max = max(self.max, float(x.max()))

    def get(self) -> dict[str, float]:
        mean = self.sum / self.n if self.n else math.nan
        var = max(self.sq_sum / self.n - mean * mean, 0.0) if self.n else math.nan
        return {"n": self.n, "mean": mean, "var": var, "min": self.min, "max": self.max}

    def merge(self, other: "Moments") -> "Moments":
        if not isinstance(other, Moments):
            raise TypeError(f"cannot merge Moments with {type(other).__name__}")
        self.n += other.n
        self.sum += other.sum
        self.sq_sum += other.sq_sum
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {"n": self.n, "sum": self.sum, "sq_sum": self.sq_sum, "min": self.min, "max": self.max}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Moments":
        out = cls()
        out.n = int(state["n"])
        out.sum = float(state["sum"])
        out.sq_sum = float(state["sq_sum"])
        out.min = float(state["min"])
        out.max = float(state["max"])
        return out


class ConceptMoments(Statistic):
    """Per-concept image count, weight sum, weight sum of squares, presence count (weight > 0) and weight max.

    ``weight_max`` is kept because the drift test's tail bound for mean activation needs the range of the weights.
    """

    def __init__(self, n_concepts: int) -> None:
        if int(n_concepts) <= 0:
            raise ValueError(f"n_concepts must be a positive integer, got {n_concepts!r}")
        self.n_concepts = int(n_concepts)
        self.n_images = 0
        self.weight_sum = np.zeros(self.n_concepts, dtype=np.float64)
        self.weight_sq_sum = np.zeros(self.n_concepts, dtype=np.float64)
        self.presence = np.zeros(self.n_concepts, dtype=np.int64)
        self.weight_max = np.zeros(self.n_concepts, dtype=np.float64)

    def _check_space(self, n_concepts: int, what: str) -> None:
        if n_concepts != self.n_concepts:
            raise ValueError(f"{what} has {n_concepts} concepts, these statistics have {self.n_concepts}")

    def update(self, codes: SparseCodes, rows: np.ndarray | None = None) -> None:
        """Add the rows of ``codes`` (all, or the boolean mask / index array / slice ``rows``)."""
        self._check_space(codes.n_concepts, "codes")
        indices, values, _, l0 = _select(codes, rows)
        self.update_arrays(len(l0), indices, values)

    def update_arrays(self, n_images: int, indices: np.ndarray, values: np.ndarray) -> None:
        """Add ``n_images`` images whose nonzeros are (indices, values); trusted inputs (see ``update``)."""
        self.n_images += int(n_images)
        if len(indices) == 0:
            return
        v = values.astype(np.float64, copy=False)
        np.add.at(self.weight_sum, indices, v)
        np.add.at(self.weight_sq_sum, indices, v * v)
        np.add.at(self.presence, indices, 1)
        np.maximum.at(self.weight_max, indices, v)

    def get(self) -> dict[str, np.ndarray | int]:
        n = max(self.n_images, 1)
        mean = self.weight_sum / n
        return {
            "n_images": self.n_images,
            "weight_sum": self.weight_sum.copy(),
            "weight_sq_sum": self.weight_sq_sum.copy(),
            "presence": self.presence.copy(),
            "weight_max": self.weight_max.copy(),
            "prevalence": self.presence / n,
            "mean": mean,
            "var": np.maximum(self.weight_sq_sum / n - mean * mean, 0.0),
        }

    def merge(self, other: "ConceptMoments") -> "ConceptMoments":
        if not isinstance(other, ConceptMoments):
            raise TypeError(f"cannot merge ConceptMoments with {type(other).__name__}")
        self._check_space(other.n_concepts, "the other ConceptMoments")
        self.n_images += other.n_images
        self.weight_sum += other.weight_sum
        self.weight_sq_sum += other.weight_sq_sum
        self.presence += other.presence
        np.maximum(self.weight_max, other.weight_max, out=self.weight_max)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_concepts": self.n_concepts,
            "n_images": self.n_images,
            "weight_sum": self.weight_sum.copy(),
            "weight_sq_sum": self.weight_sq_sum.copy(),
            "presence": self.presence.copy(),
            "weight_max": self.weight_max.copy(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ConceptMoments":
        out = cls(int(state["n_concepts"]))
        out.n_images = int(state["n_images"])
        out.weight_sum = np.array(state["weight_sum"], dtype=np.float64)
        out.weight_sq_sum = np.array(state["weight_sq_sum"], dtype=np.float64)
        out.presence = np.array(state["presence"], dtype=np.int64)
        out.weight_max = np.array(state["weight_max"], dtype=np.float64)
        for key in ("weight_sum", "weight_sq_sum", "presence", "weight_max"):
            out._check_space(len(getattr(out, key)), f"state[{key!r}]")
        return out


class WindowStats(Statistic):
    """Everything one window of one stream aggregates: per-concept moments, fidelity and l0 moments, event-time
    extent. Converts to and from the shared :class:`~monitor.records.WindowSummary`."""

    def __init__(self, n_concepts: int) -> None:
        self.concepts = ConceptMoments(n_concepts)
        self.fidelity = Moments()
        self.l0 = Moments()
        self.time = Moments()  # event timestamps: min/max give the observed extent

    @property
    def n_concepts(self) -> int:
        return self.concepts.n_concepts

    @property
    def n_images(self) -> int:
        return self.concepts.n_images

    def update(
        self, codes: SparseCodes, timestamps: np.ndarray | None = None, rows: np.ndarray | slice | None = None
    ) -> None:
        """Add rows of ``codes`` with their event ``timestamps`` (aligned with all rows of ``codes``)."""
        self.concepts._check_space(codes.n_concepts, "codes")
        indices, values, fidelity, l0 = _select(codes, rows)
        self.concepts.update_arrays(len(l0), indices, values)
        self.fidelity.update(fidelity)
        self.l0.update(l0)
        if timestamps is not None:
            ts = np.asarray(timestamps, dtype=np.float64)
            if ts.shape != (len(codes),):
                raise ValueError(f"timestamps: expected shape ({len(codes)},), got {ts.shape}")
            self.time.update(ts if rows is None else ts[rows])

    def get(self) -> dict[str, Any]:
        return {"concepts": self.concepts.get(), "fidelity": self.fidelity.get(), "l0": self.l0.get(),
                "time": self.time.get()}

    def merge(self, other: "WindowStats") -> "WindowStats":
        if not isinstance(other, WindowStats):
            raise TypeError(f"cannot merge WindowStats with {type(other).__name__}")
        self.concepts.merge(other.concepts)
        self.fidelity.merge(other.fidelity)
        self.l0.merge(other.l0)
        self.time.merge(other.time)
        return self

    def state_dict(self) -> dict[str, Any]:
        return {
            "concepts": self.concepts.state_dict(),
            "fidelity": self.fidelity.state_dict(),
            "l0": self.l0.state_dict(),
            "time": self.time.state_dict(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "WindowStats":
        out = cls(int(state["concepts"]["n_concepts"]))
        out.concepts = ConceptMoments.from_state(state["concepts"])
        out.fidelity = Moments.from_state(state["fidelity"])
        out.l0 = Moments.from_state(state["l0"])
        out.time = Moments.from_state(state["time"])
        return out

    def to_summary(
        self, stream: str, start: float | None = None, end: float | None = None, concept_space: str = ""
    ) -> WindowSummary:
        """The shared record; ``start``/``end`` default to the observed event-time extent [min, nextafter(max))."""
        if start is None:
            start = self.time.min if self.time.n else math.nan
        if end is None:
            end = float(np.nextafter(self.time.max, math.inf)) if self.time.n else math.nan
        c = self.concepts
        return WindowSummary(
            stream=stream,
            start=float(start),
            end=float(end),
            n_images=c.n_images,
            weight_sum=c.weight_sum.copy(),
            weight_sq_sum=c.weight_sq_sum.copy(),
            presence=c.presence.copy(),
            fidelity_sum=self.fidelity.sum,
            fidelity_sq_sum=self.fidelity.sq_sum,
            fidelity_min=self.fidelity.min,
            fidelity_max=self.fidelity.max,
            l0_sum=self.l0.sum,
            l0_sq_sum=self.l0.sq_sum,
            concept_space=concept_space,
        )

    @classmethod
    def from_summary(cls, summary: WindowSummary, weight_max: np.ndarray | None = None) -> "WindowStats":
        """Rebuild from a stored WindowSummary (e.g. a reference loaded from history).

        A summary carries no per-concept weight maximum; pass ``weight_max`` if known, otherwise the bound
        sqrt(weight_sq_sum) (the largest a single weight can be given the sum of squares) is used, which keeps the
        activation test's tail bound valid but less sharp.
        """
        out = cls(summary.n_concepts)
        c = out.concepts
        c.n_images = int(summary.n_images)
        c.weight_sum = np.array(summary.weight_sum, dtype=np.float64)
        c.weight_sq_sum = np.array(summary.weight_sq_sum, dtype=np.float64)
        c.presence = np.array(summary.presence, dtype=np.int64)
        wm = getattr(summary, "weight_max", None) if weight_max is None else weight_max
        c.weight_max = np.array(wm if wm is not None else np.sqrt(c.weight_sq_sum), dtype=np.float64)
        for name, s, sq, lo, hi in (
            ("fidelity", summary.fidelity_sum, summary.fidelity_sq_sum, summary.fidelity_min, summary.fidelity_max),
            ("l0", summary.l0_sum, summary.l0_sq_sum, math.nan, math.nan),
        ):
            m = Moments()
            m.n, m.sum, m.sq_sum = c.n_images, float(s), float(sq)
            m.min = float(lo) if not math.isnan(lo) else math.inf
            m.max = float(hi) if not math.isnan(hi) else -math.inf
            setattr(out, name, m)
        if c.n_images:
            out.time.n = 2
            out.time.min, out.time.max = float(summary.start), float(summary.end)
            out.time.sum = out.time.min + out.time.max
            out.time.sq_sum = out.time.min ** 2 + out.time.max ** 2
        return out


def _states_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_states_equal(a[k], b[k]) for k in a)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=np.asarray(a).dtype.kind == "f")
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b
