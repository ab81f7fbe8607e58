"""Acknowledge only what is durable: the driver's side of checkpoint-gated acknowledgement.

A committed batch lives in the aggregator's memory until a checkpoint saves it; acknowledging it at the source
before that would lose it when the aggregator or the driver dies. So, when a run checkpoints (``--history`` and a
job id), the driver holds each committed batch here, asks the aggregator for a checkpoint every ``every_s`` seconds
(or when ``max_held`` batches wait), and acknowledges at the source exactly the batches the checkpoint covers
(``through_seq``). What a crash leaves unacknowledged is delivered again and applied again from the restored
checkpoint; what was covered by a checkpoint but not yet acknowledged when the crash came is skipped on redelivery
by its reference (``skip``), so it is counted once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

__all__ = ["AckGate", "Held", "actor_died", "restore_aggregator"]


@dataclass
class Held:
    """A committed batch waiting for a checkpoint: the batch itself (for the source's ack) and the worker's result
    (an object reference the driver owns), so a restarted aggregator can be handed the same partial again."""

    batch: Any
    proc_ref: Any


class AckGate:
    def __init__(self, source: Any, *, every_s: float = 5.0, max_held: int = 64,
                 skip: list[str] | None = None, clock=time.monotonic) -> None:
        if every_s < 0 or max_held < 1:
            raise ValueError(f"every_s must be >= 0 and max_held >= 1, got {every_s!r} and {max_held!r}")
        self.source = source
        source.keep_refs()  # every batch must know its items' references when it is read (refs, filter)
        self.every_s = float(every_s)
        self.max_held = int(max_held)
        self.held: dict[int, Held] = {}
        self.skip: set[str] = set(skip or ())  # refs counted before a restart that may come again
        self.skipped = 0
        self._clock = clock
        self._last = clock()

    def hold(self, seq: int, batch: Any, proc_ref: Any) -> None:
        """Batch ``seq`` is committed (applied, or waiting in the aggregator for an earlier one)."""
        self.held[seq] = Held(batch, proc_ref)

    def due(self) -> bool:
        return bool(self.held) and (len(self.held) >= self.max_held or self._clock() - self._last >= self.every_s)

    def full(self) -> bool:
        """Stop reading: this many committed batches wait for a checkpoint (bounds driver and aggregator memory)."""
        return len(self.held) >= self.max_held

    def _batches(self, in_flight: dict[int, Any] | None) -> dict[int, Any]:
        # batches whose commit reply has not reached the driver yet may already be applied, hence in the checkpoint
        return {**{seq: f.batch for seq, f in (in_flight or {}).items()}, **{s: h.batch for s, h in self.held.items()}}

    def positions(self, in_flight: dict[int, Any] | None = None) -> dict[int, Any]:
        """Source position after each held (and in-flight) batch, for the checkpoint to take the one it covers."""
        return {seq: self.source.position(b) for seq, b in self._batches(in_flight).items()}

    def refs(self, in_flight: dict[int, Any] | None = None) -> dict[int, list[str]]:
        """Item references of each held (and in-flight) batch: those the checkpoint covers are skipped if the source
        delivers them again after a crash."""
        return {seq: b.refs() for seq, b in self._batches(in_flight).items()}

    def covered(self, through: int) -> list[tuple[int, Held]]:
        """A checkpoint holds batches 1..``through``: acknowledge them at the source; returns them in order."""
        self._last = self._clock()
        done = sorted((seq, h) for seq, h in self.held.items() if seq <= through)
        for seq, h in done:
            self.source.ack(h.batch)
            del self.held[seq]
        return done

    def replay(self, through: int) -> list[tuple[int, Held]]:
        """After the aggregator restarted from a checkpoint holding 1..``through``: the held batches it lost, in
        order, to be committed again."""
        return sorted((seq, h) for seq, h in self.held.items() if seq > through)

    def filter(self, batch: Any) -> Any:
        """``batch`` without the items a checkpoint already counted (delivered again after a crash); each skipped
        reference is forgotten once seen, so the set only shrinks."""
        if not self.skip:
            return batch
        here = self.skip.intersection(batch.refs())
        if not here:
            return batch
        self.skip -= here
        self.skipped += len(here)
        return batch.without(here)


def actor_died(exc: BaseException) -> bool:
    """Whether a Ray call failed because its actor died or is restarting, not because the call itself raised."""
    import ray

    return isinstance(exc, (ray.exceptions.RayActorError, getattr(ray.exceptions, "ActorUnavailableError", ())))


def restore_aggregator(aggregator: Any, job: str, run: str, *, timeout_s: float = 120.0) -> dict | None:
    """Wait for Ray to restart the aggregator actor, then restore it from ``job``'s checkpoint (same ``run``: its
    batch numbering continues); returns the checkpoint record (None: no checkpoint yet, it starts empty)."""
    import ray

    from monitor.errors import PipelineError

    deadline = time.monotonic() + timeout_s
    while True:  # calls fail as "unavailable" while Ray restarts it (the model-free actor starts in seconds)
        try:
            ray.get(aggregator.pid.remote(), timeout=60)
            return ray.get(aggregator.load_checkpoint.remote(job, False, run=run))
        except ray.exceptions.RayError as exc:
            if not actor_died(exc) or time.monotonic() > deadline:
                text = str(exc).strip().splitlines()
                raise PipelineError(f"the aggregator actor died and did not come back within {timeout_s:g} s: "
                                    f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]) from exc
            time.sleep(0.5)

