"""The records that travel between a source, the workers and the aggregator: a stream item in (:class:`WorkItem`),
a batch's contribution out (:class:`Partial`), and an item that could not be processed (:class:`DeadLetter`).

They hold data only, so sources, dead-letter sinks and tests use them without loading a model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.errors import DEAD_LETTER_REASONS
from monitor.records import ItemMeta, SparseCodes

__all__ = ["WorkItem", "DeadLetter", "Partial"]


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


@dataclass
class Partial:
    """A batch's contribution: codes for the items that decomposed (rows aligned with ``items``), the dead letters,
    and timings. The aggregator turns it into window statistics when it commits the batch."""

    codes: SparseCodes | None
    items: list[ItemMeta]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    n_nonconverged: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.items) + len(self.dead_letters)
