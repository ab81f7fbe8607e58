"""The records that travel between a source, the workers and the aggregator: a stream item in (:class:`WorkItem`,
or a whole batch of them as columns, :class:`ItemBatch`), a batch's contribution out (:class:`Partial`), and an
item that could not be processed (:class:`DeadLetter`).

Batches travel as columns (ids, an array of times, stream numbers into a small name table) rather than one Python
object per item: pickling, sending and unpickling a few hundred small objects per batch was most of what the driver,
the workers and the aggregator spent per item (docs/scaling.md). They hold data only, so sources, dead-letter sinks
and tests use them without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from monitor.errors import DEAD_LETTER_REASONS
from monitor.records import ItemMeta, SparseCodes

__all__ = ["WorkItem", "DeadLetter", "ItemColumns", "ItemBatch", "Partial"]


@dataclass(frozen=True)
class WorkItem:
    """One stream item as a source hands it over: identity, payload and where the payload came from.

    ``kind`` is "image" (payload: encoded image bytes) or "text" (payload: a caption). ``error`` is set by the source
    when the record itself is malformed; the worker then dead-letters it without touching the model.
    """

    meta: ItemMeta
    payload: bytes | str | None
    kind: str = "image"
    ref: str = ""  # payload reference for dead letters: a path, "file.parquet#row=12", "redis://.../frames/1-0"
    error: tuple[str, str] | None = None  # (reason, detail)


@dataclass(frozen=True)
class DeadLetter:
    """An item that could not be processed, with a reason from ``monitor.errors.DEAD_LETTER_REASONS``."""

    item_id: str
    stream: str
    timestamp: float
    reason: str
    detail: str
    ref: str = ""

    def __post_init__(self) -> None:
        if self.reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"DeadLetter.reason must be one of {DEAD_LETTER_REASONS}, got {self.reason!r}")


class ItemColumns:
    """The identity of a batch's items as columns: ``ids`` (str), ``timestamps`` (float64 unix seconds),
    ``stream_index`` (int32 rows into ``stream_names``) and ``metadata`` (one dict per row, or None when no item
    carries any). :meth:`metas` gives the same items as :class:`ItemMeta` objects for code that wants them."""

    __slots__ = ("ids", "timestamps", "stream_index", "stream_names", "metadata")

    def __init__(self, ids: Sequence[str], timestamps, stream_index, stream_names: Sequence[str],
                 metadata: list[dict] | None = None) -> None:
        self.ids = list(ids)
        self.timestamps = np.asarray(timestamps, dtype=np.float64)
        self.stream_index = np.asarray(stream_index, dtype=np.int32)
        self.stream_names = list(stream_names)
        self.metadata = metadata if metadata is None or any(metadata) else None
        n = len(self.ids)
        if self.timestamps.shape != (n,) or self.stream_index.shape != (n,) or (
                self.metadata is not None and len(self.metadata) != n):
            raise ValueError(f"ItemColumns: {n} ids but {self.timestamps.shape} timestamps, "
                             f"{self.stream_index.shape} stream rows and "
                             f"{None if self.metadata is None else len(self.metadata)} metadata rows")

    @classmethod
    def empty(cls) -> "ItemColumns":
        return cls([], np.zeros(0), np.zeros(0, dtype=np.int32), [])

    @classmethod
    def from_metas(cls, metas: Sequence[ItemMeta]) -> "ItemColumns":
        names: dict[str, int] = {}
        index = [names.setdefault(m.stream, len(names)) for m in metas]
        metadata = [m.metadata for m in metas]
        return cls([m.id for m in metas], [m.timestamp for m in metas], index, list(names), metadata)

    def __len__(self) -> int:
        return len(self.ids)

    def streams(self) -> list[str]:
        """The stream of every row."""
        names = self.stream_names
        return [names[i] for i in self.stream_index.tolist()]

    def metas(self) -> list[ItemMeta]:
        names = self.stream_names
        md = self.metadata
        ts = self.timestamps.tolist()
        si = self.stream_index.tolist()
        if md is None:
            return [ItemMeta(id=i, timestamp=t, stream=names[s]) for i, t, s in zip(self.ids, ts, si)]
        return [ItemMeta(id=i, timestamp=t, stream=names[s], metadata=m) for i, t, s, m in zip(self.ids, ts, si, md)]

    def take(self, rows) -> "ItemColumns":
        rows = np.asarray(rows, dtype=np.int64)
        ids = self.ids
        md = None if self.metadata is None else [self.metadata[r] for r in rows.tolist()]
        return ItemColumns([ids[r] for r in rows.tolist()], self.timestamps[rows], self.stream_index[rows],
                           self.stream_names, md)

    def __getstate__(self):
        return (self.ids, self.timestamps, self.stream_index, self.stream_names, self.metadata)

    def __setstate__(self, state) -> None:
        self.ids, self.timestamps, self.stream_index, self.stream_names, self.metadata = state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ItemColumns):
            return NotImplemented
        return self.metas() == other.metas()


@dataclass
class ItemBatch:
    """A batch of stream items as columns, as a worker gets it from a descriptor it resolved itself (rows of a
    Parquet file, claimed Redis entries): identity in ``columns``, one payload and one reference per row, the kind
    ("image"/"text") of all rows or of each, and the rows the source already found bad (row -> (reason, detail))."""

    columns: ItemColumns
    payloads: list[Any]
    kinds: str | list[str] = "image"
    refs: list[str] = field(default_factory=list)
    errors: dict[int, tuple[str, str]] = field(default_factory=dict)

    @classmethod
    def from_items(cls, items: Sequence[WorkItem]) -> "ItemBatch":
        """The same rows as columns (a list handed over by a source that builds :class:`WorkItem` objects)."""
        items = list(items)
        kinds = [it.kind for it in items]
        return cls(columns=ItemColumns.from_metas([it.meta for it in items]), payloads=[it.payload for it in items],
                   kinds=kinds[0] if kinds and kinds.count(kinds[0]) == len(kinds) else kinds,
                   refs=[it.ref for it in items] if any(it.ref for it in items) else [],
                   errors={j: it.error for j, it in enumerate(items) if it.error is not None})

    def __len__(self) -> int:
        return len(self.columns)

    def take(self, rows: Sequence[int]) -> "ItemBatch":
        """The batch restricted to ``rows`` (in that order)."""
        rows = list(rows)
        kinds = self.kinds if isinstance(self.kinds, str) else [self.kinds[r] for r in rows]
        where = {r: j for j, r in enumerate(rows)}
        return ItemBatch(columns=self.columns.take(rows), payloads=[self.payloads[r] for r in rows], kinds=kinds,
                         refs=[self.refs[r] for r in rows] if self.refs else [],
                         errors={where[r]: e for r, e in self.errors.items() if r in where})

    def work_items(self) -> list[WorkItem]:
        """One :class:`WorkItem` per row (the worker's per-item preparation works on these)."""
        metas = self.columns.metas()
        kinds = self.kinds if isinstance(self.kinds, list) else [self.kinds] * len(metas)
        refs = self.refs or [""] * len(metas)
        errors = self.errors
        return [WorkItem(meta=m, payload=p, kind=k, ref=r, error=errors.get(j))
                for j, (m, p, k, r) in enumerate(zip(metas, self.payloads, kinds, refs))]


class Partial:
    """A batch's contribution: codes for the items that decomposed (rows aligned with the items), the dead letters,
    and timings. The aggregator turns it into window statistics when it commits the batch.

    The items are kept as :class:`ItemColumns` (what is pickled and sent); ``items`` builds the :class:`ItemMeta`
    objects on first use, on the receiving side."""

    def __init__(self, codes: SparseCodes | None, items: Sequence[ItemMeta] | None = None,
                 dead_letters: list[DeadLetter] | None = None, n_nonconverged: int = 0,
                 timings: dict[str, float] | None = None, *, columns: ItemColumns | None = None) -> None:
        if columns is None:
            columns = ItemColumns.from_metas(list(items or []))
        elif items is not None:
            raise ValueError("Partial: give items or columns, not both")
        self.codes = codes
        self.columns = columns
        self.dead_letters = list(dead_letters or [])
        self.n_nonconverged = int(n_nonconverged)
        self.timings = dict(timings or {})
        self._items: list[ItemMeta] | None = None

    @property
    def items(self) -> list[ItemMeta]:
        if self._items is None:
            self._items = self.columns.metas()
        return self._items

    @property
    def n_items(self) -> int:
        return len(self.columns) + len(self.dead_letters)

    def __getstate__(self):
        return (self.codes, self.columns, self.dead_letters, self.n_nonconverged, self.timings)

    def __setstate__(self, state) -> None:
        self.codes, self.columns, self.dead_letters, self.n_nonconverged, self.timings = state
        self._items = None

    def __repr__(self) -> str:
        return (f"Partial({len(self.columns)} items, {len(self.dead_letters)} dead letters, "
                f"{self.n_nonconverged} not converged)")
