"""The aggregator's commit ledger: which batches are applied, in what order, and which item ids were counted.

Three jobs, one state (saved and restored as a unit with the aggregator):

- **exactly once per batch**: a batch is its source sequence number; a second commit of an applied or waiting
  number is a duplicate and changes nothing;
- **source order**: batches are applied in sequence order whatever order their commits arrive in (a batch retried
  after a worker died commits late), so windows and alarms do not depend on faults or timing; an early batch waits
  in the ledger until the ones before it are applied;
- **duplicate ids**: an id counted in a batch not yet acknowledged at the source, or among the last ``recent_ids``
  acknowledged items, is reported as already counted. Memory is bounded by the batches in flight and that window,
  never by the number of items seen.
"""

from __future__ import annotations

from collections import deque
from itertools import islice, repeat
from operator import eq
from typing import Any, Iterable, Iterator

import numpy as np

from workers.items import DeadLetter, ItemColumns

__all__ = ["CommitLedger"]


class CommitLedger:
    """Sequence numbers from 1, in source order, as the driver hands them out.

    >>> ledger = CommitLedger(recent_ids=2)
    >>> list(ledger.arrive(2, "second"))  # early: waits for batch 1
    []
    >>> [seq for seq, _ in ledger.arrive(1, "first")]
    [1, 2]
    >>> ledger.record(1, ["a"]); ledger.record(2, ["b"]); ledger.release([1, 2])
    >>> ledger.counted_in("a"), ledger.seen(2), ledger.size()
    (1, True, 0)
    """

    def __init__(self, recent_ids: int = 65_536) -> None:
        if recent_ids < 0:
            raise ValueError(f"recent_ids must be >= 0, got {recent_ids!r}")
        self.recent_ids = int(recent_ids)
        self.next_seq = 1  # every batch below this is applied
        self._waiting: dict[int, Any] = {}  # committed early, applied when the gap fills
        self._open: dict[int, list[str]] = {}  # applied, not yet acknowledged: seq -> its item ids
        self._open_ids: dict[str, int] = {}
        self._recent: dict[str, int] = {}  # ids of acknowledged batches, oldest first, capped at recent_ids
        self._released_early: set[int] = set()  # acknowledged while still waiting

    def seen(self, seq: int) -> bool:
        """Whether batch ``seq`` is applied or waiting (a second commit of it must change nothing)."""
        return seq < self.next_seq or seq in self._waiting

    def arrive(self, seq: int, payload: Any) -> Iterator[tuple[int, Any]]:
        """Take batch ``seq`` (not :meth:`seen`); yield, in order, every batch that can now be applied. The caller
        applies each one and then calls :meth:`record` for it."""
        self._waiting[seq] = payload
        while self.next_seq in self._waiting:
            seq = self.next_seq
            yield seq, self._waiting[seq]
            # only once the caller applied it: a batch whose application failed is not marked applied
            del self._waiting[seq]
            self.next_seq += 1

    def abandon(self, seq: int) -> None:
        """Applying batch ``seq`` failed before it changed anything: forget it, so that a retry is applied."""
        self._waiting.pop(seq, None)

    def drain(self) -> Iterator[tuple[int, Any]]:
        """Every waiting batch in order, gaps or not (the end of a run where an earlier batch was given up on)."""
        for seq in sorted(self._waiting):
            yield seq, self._waiting[seq]
            del self._waiting[seq]
            self.next_seq = seq + 1

    def waiting(self, seq: int) -> bool:
        return seq in self._waiting

    def record(self, seq: int, ids: list[str]) -> None:
        """Batch ``seq`` was applied and counted ``ids``."""
        self._open[seq] = list(ids)
        # bulk dict operations here and in _forget: a batch's ids go in and out at C speed, not one bytecode loop
        # per id (with a few hundred ids per batch that loop was a visible share of the aggregator's time)
        self._open_ids.update(zip(ids, repeat(seq)))
        if seq in self._released_early:
            self._released_early.discard(seq)
            self._forget(seq)

    def release(self, seqs) -> None:
        """The source acknowledged these batches: their ids move to the bounded window of recent ids."""
        for seq in seqs:
            if seq in self._waiting:
                self._released_early.add(seq)
            else:
                self._forget(seq)

    def _forget(self, seq: int) -> None:
        ids = self._open.pop(seq, ())
        open_ids, recent = self._open_ids, self._recent
        # ids still counted under this batch (a renumbered ledger may hold an id under a later one), in order
        if all(map(eq, map(open_ids.get, ids), repeat(seq))):
            mine = list(dict.fromkeys(ids))
        else:
            mine = list(dict.fromkeys(i for i in ids if open_ids.get(i) == seq))
        deque(map(open_ids.__delitem__, mine), maxlen=0)
        # move to the newest end of the recent window, oldest evicted first
        deque(map(recent.pop, mine, repeat(None)), maxlen=0)
        recent.update(zip(mine, repeat(seq)))
        excess = len(recent) - self.recent_ids
        if excess > 0:
            deque(map(recent.__delitem__, list(islice(recent, excess))), maxlen=0)

    def admit(self, columns: ItemColumns, letters: list[DeadLetter]
              ) -> tuple[np.ndarray | None, list[DeadLetter], list[str]]:
        """Which rows of a batch count: the rows whose id is new (None: all of them), the dead letters (the batch's
        own, and one with reason "duplicate" for every id counted before or earlier in the batch) and the ids the
        batch counts, rows first then dead letters, in order. Changes nothing (:meth:`record` does)."""
        ids = columns.ids
        if not letters and len(set(ids)) == len(ids) and not self.any_counted(ids):
            # the usual batch, every id new: set operations over the id column instead of a lookup per item
            return None, [], ids
        rows: list[int] = []
        in_batch: dict[str, None] = {}  # an ordered set, so the ids are recorded in a reproducible order
        dead: list[DeadLetter] = []

        def duplicate(item_id: str, stream: str, timestamp: float, ref: str) -> DeadLetter | None:
            first = None if item_id in in_batch else self.counted_in(item_id)
            if item_id not in in_batch and first is None:
                in_batch[item_id] = None
                return None
            where = "earlier in the same batch" if first is None else f"in batch {first}"
            return DeadLetter(item_id=item_id, stream=stream, timestamp=float(timestamp), reason="duplicate",
                              detail=f"id {item_id!r} was already counted {where}", ref=ref)

        for r, (item_id, stream, t) in enumerate(zip(ids, columns.streams(), columns.timestamps.tolist())):
            letter = duplicate(item_id, stream, t, "")
            if letter is None:
                rows.append(r)
            else:
                dead.append(letter)
        for d in letters:
            letter = duplicate(d.item_id, d.stream, d.timestamp, d.ref)
            dead.append(d if letter is None else letter)
        return np.asarray(rows, dtype=np.int64), dead, list(in_batch)

    def any_counted(self, ids: Iterable[str]) -> bool:
        """Whether any of ``ids`` was counted (:meth:`counted_in` is not None for it); one C-level pass."""
        ids = ids if isinstance(ids, (list, tuple)) else list(ids)
        return any(map(self._open_ids.__contains__, ids)) or any(map(self._recent.__contains__, ids))

    def counted_in(self, item_id: str) -> int | None:
        """The batch that counted ``item_id`` (not yet acknowledged, or among the recent acknowledged ones)."""
        seq = self._open_ids.get(item_id)
        return seq if seq is not None else self._recent.get(item_id)

    def size(self) -> int:
        """Entries held for batches in flight (the recent-id window, bounded by ``recent_ids``, is not counted)."""
        return len(self._open_ids) + len(self._open) + len(self._waiting)

    @property
    def recent_count(self) -> int:
        return len(self._recent)

    # -- state (saved with the aggregator's checkpoint) ---------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """The applied part as plain data (JSON-ready). Waiting batches are not applied, so not part of it: the
        driver still holds them and commits them again after a restore."""
        return {"next_seq": self.next_seq, "recent_ids": self.recent_ids,
                "open": [[seq, ids] for seq, ids in self._open.items()],
                "recent": [[i, seq] for i, seq in self._recent.items()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "CommitLedger":
        ledger = cls(recent_ids=int(state.get("recent_ids", 65_536)))
        ledger.next_seq = int(state["next_seq"])
        for seq, ids in state.get("open", []):
            ledger._open[int(seq)] = [str(i) for i in ids]
            for i in ids:
                ledger._open_ids[str(i)] = int(seq)
        ledger._recent = {str(i): int(seq) for i, seq in state.get("recent", [])}
        return ledger

    def renumber(self) -> None:
        """A new driver numbers its batches from 1 again: what the old one counted stays known (as recent ids,
        for duplicate detection), its sequence numbers are forgotten."""
        for seq in sorted(self._open):
            self._forget(seq)
        self._waiting.clear()
        self._released_early.clear()
        self.next_seq = 1
