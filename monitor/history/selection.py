"""What a history question is asked of: a :class:`Selection` of stored images (time range, streams, metadata slice),
and the per-image codes behind a slice, with a message saying so when the store holds none."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from monitor.errors import NoDataError
from monitor.history.schema import parse_time
from monitor.history.store import HistoryStore

__all__ = ["Selection", "codes_or_explain", "flatten_codes", "fmt_time", "iso"]


@dataclass(frozen=True)
class Selection:
    """A set of stored images: event time in [start, end), optional streams, optional metadata equalities.

    Windows are selected by their start time; a ``where`` slice is answered from per-image codes.
    """

    start: float | None = None
    end: float | None = None
    streams: tuple[str, ...] | None = None
    where: tuple[tuple[str, str], ...] = ()

    @classmethod
    def make(
        cls,
        start: str | float | None = None,
        end: str | float | None = None,
        stream: str | Sequence[str] | None = None,
        where: Mapping[str, Any] | None = None,
    ) -> "Selection":
        s, e = parse_time(start, name="start"), parse_time(end, name="end")
        if s is not None and e is not None and e <= s:
            raise ValueError(f"empty time range: end={end!r} must be after start={start!r}")
        streams = (stream,) if isinstance(stream, str) else (tuple(stream) if stream else None)
        items = tuple(sorted((str(k), str(v)) for k, v in (where or {}).items()))
        return cls(s, e, streams, items)

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and self.end <= self.start:
            raise ValueError(f"empty time range: end={self.end} must be after start={self.start}")

    def describe(self) -> str:
        parts = [f"{fmt_time(self.start)} .. {fmt_time(self.end)}"]
        if self.streams:
            parts.append("stream=" + ",".join(self.streams))
        parts.extend(f"{k}={v}" for k, v in self.where)
        return " ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "start": self.start,
            "end": self.end,
            "start_iso": iso(self.start),
            "end_iso": iso(self.end),
            "streams": list(self.streams) if self.streams else None,
            "where": dict(self.where),
        }


def iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import datetime, timezone

    return datetime.fromtimestamp(t, timezone.utc).isoformat().replace("+00:00", "Z")


def fmt_time(t: float | None) -> str:
    return "…" if t is None else iso(t)


def codes_or_explain(store: HistoryStore, sel: Selection, columns: list[str]) -> pa.Table:
    if not store.has_codes(sel.streams):
        need = f"the metadata slice {dict(sel.where)}" if sel.where else "co-occurrence"
        scope = f" for stream(s) {list(sel.streams)}" if sel.streams else ""
        raise NoDataError(
            f"{need} needs per-image codes, and history store {str(store.root)!r} holds none{scope}: run "
            f"`splice-monitor run --write-codes` (or `backfill --write-codes`) to store them; window aggregates "
            f"only answer time-range and stream questions"
        )
    return store.scan_codes(streams=sel.streams, start=sel.start, end=sel.end, where=dict(sel.where), columns=columns)


def flatten_codes(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if table.num_rows == 0:
        return np.zeros(0, np.int64), np.zeros(0), np.zeros(0, np.int64)
    lists = table["concept_index"].combine_chunks()
    ids = pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
    weights = np.zeros(0)
    if "weight" in table.column_names:
        weights = pc.list_flatten(table["weight"].combine_chunks()).to_numpy(zero_copy_only=False).astype(np.float64)
    return ids, weights, lengths
