"""What every source is: numbered batches of work items, acknowledged after commit, with a resume position."""

from __future__ import annotations

from typing import Any

from monitor.errors import ConfigError
from workers.items import WorkItem

__all__ = ["SourceBatch", "Source", "option_bool"]


class SourceBatch:
    """A numbered batch; ``seq`` counts non-empty batches from 1 per source and is the unit of idempotent commits
    (an empty batch, "nothing new yet", has seq 0).

    A batch holds either its ``items`` or, where the source can be split, ``work``: a small descriptor (rows of a
    file, claimed stream entries) that a worker resolves itself (``load() -> ItemBatch``), so the driver handles
    O(1) per batch and never carries payloads. A descriptor also answers ``len``, ``refs()`` and ``without(refs)``.
    ``items`` of a descriptor batch loads it here (tests, the in-process path); the driver never asks for them."""

    __slots__ = ("seq", "token", "work", "_items")

    def __init__(self, seq: int, items: list[WorkItem] | None = None, token: Any = None, *, work: Any = None) -> None:
        if items is not None and work is not None:
            raise ValueError("SourceBatch: give items or work, not both")
        self.seq = seq
        self.token = token  # what ``ack`` needs: redis entry ids, a file position, ...
        self.work = work
        self._items = items if work is None else None

    @property
    def items(self) -> list[WorkItem]:
        if self._items is None:
            self._items = self.work.load().work_items() if self.work is not None else []
        return self._items

    def payload(self) -> Any:
        """What a worker is sent: the descriptor, or the items."""
        return self.work if self.work is not None else self._items

    def refs(self) -> list[str]:
        """References of the batch's items (for skipping, after a restart, items a checkpoint already counted)."""
        if self.work is not None:
            return list(self.work.refs())
        return [it.ref for it in self._items if it.ref]

    def without(self, refs: set[str]) -> "SourceBatch":
        """This batch less the items whose reference is in ``refs`` (same seq and token)."""
        if self.work is not None:
            return SourceBatch(self.seq, token=self.token, work=self.work.without(refs))
        return SourceBatch(self.seq, [it for it in self._items if it.ref not in refs], token=self.token)

    def __len__(self) -> int:
        return len(self.work) if self.work is not None else len(self._items)

    def __repr__(self) -> str:
        return f"SourceBatch(seq={self.seq}, {len(self)} items{', descriptor' if self.work is not None else ''})"


class Source:
    """Base class: ``read`` a batch, ``ack`` it after commit, ``close``.

    ``read`` returns None once a finite source is exhausted, and an empty batch when an endless source has nothing
    new within ``timeout_s``.
    """

    name: str = "source"
    finite: bool = True

    def __init__(self) -> None:
        self._seq = 0
        self._ack_next = 1  # the lowest sequence number not yet acknowledged
        self._acked_ahead: dict[int, Any] = {}  # acknowledged out of order: seq -> token
        self._ack_token: Any = None  # token of the last batch of the contiguous acknowledged prefix

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _ack_in_order(self, batch: "SourceBatch") -> None:
        """Advance the resume position only over a contiguous prefix of acknowledged batches: a batch retried after
        a worker failure commits after later ones, and a checkpoint must never skip it."""
        if batch.seq < self._ack_next:
            return
        self._acked_ahead[batch.seq] = batch.token
        while self._ack_next in self._acked_ahead:
            self._ack_token = self._acked_ahead.pop(self._ack_next)
            self._ack_next += 1

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        raise NotImplementedError

    def ack(self, batch: SourceBatch) -> None:
        """Mark ``batch`` as committed; the source will not deliver its items again."""

    def keep_refs(self) -> None:
        """The run checkpoints (``workers/acks.py``): from now on every batch read must answer ``refs()`` and
        ``without()``. A source whose batches learn their items only on a worker (Redis worker claims) switches
        to a way that knows them when reading."""

    def checkpoint(self) -> dict | None:
        """Position after the last acknowledged batch, for resuming (files only); None when not resumable."""
        return None

    def position(self, batch: SourceBatch) -> dict | None:
        """The resume position right after ``batch`` (files), as ``checkpoint`` would give once every batch up to
        it is acknowledged; None for sources that remember their own position (Redis consumer groups)."""
        return None

    def resume(self, checkpoint: dict | None) -> None:
        """Continue after a position from ``checkpoint``/``position`` (sources that keep their own do nothing)."""

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def option_bool(value: str, name: str) -> bool:
    """A boolean URI option (1/0/true/false/yes/no/on/off); anything else is a ConfigError naming the option."""
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"source option {name} must be a boolean (1/0/true/false), got {value!r}")
