"""What every source is: numbered batches of work items, acknowledged after commit, with a resume position."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.errors import ConfigError
from workers.items import WorkItem

__all__ = ["SourceBatch", "Source", "option_bool"]


@dataclass
class SourceBatch:
    """A numbered batch; ``seq`` counts non-empty batches from 1 per source and is the unit of idempotent commits
    (an empty batch, "nothing new yet", has seq 0)."""

    seq: int
    items: list[WorkItem]
    token: Any = None  # what ``ack`` needs: redis entry ids, a file position, ...

    def __len__(self) -> int:
        return len(self.items)


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
