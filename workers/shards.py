"""Sharded aggregation: streams hashed onto N aggregator actors, and the group object the driver talks to as if it
were one aggregator.

A stream is the unit of sharding because every statistic, window, reference and drift test is per stream: a shard
holding all of a stream's items computes exactly what a single aggregator would. A batch mixes streams, so the worker
splits its partial into one part per shard (``split_partial``; Ray ``num_returns=N`` keeps the parts out of the
driver) and the driver commits part i on aggregator i under the batch's one sequence number. Every shard sees every
sequence number (an empty part for a batch without its streams), so each shard's ledger, ordering and checkpoint
coverage work exactly as with one aggregator.

What merges across shards lives here, in one place: counts are summed, per-stream maps are disjoint unions,
per-batch counters (a batch is committed once on each shard) are taken from the shards' maximum.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from dataclasses import replace
from typing import Any

import numpy as np

from monitor.errors import ConfigError, PipelineError
from monitor.records import Alarm
from workers.items import Partial

__all__ = ["shard_of", "split_partial", "shard_job_id", "AggregatorGroup", "merge_summaries", "merge_commit_results",
           "merge_checkpoint_records", "skipped_commit"]


def shard_of(stream: str, n: int) -> int:
    """The aggregator (0..n-1) that owns ``stream``: a stable hash of its name (the same in every process and run,
    unlike Python's salted ``hash``), so a stream always lands on the same shard and its checkpoint.

    >>> shard_of("camera-7", 1), shard_of("camera-7", 4) == shard_of("camera-7", 4)
    (0, True)
    """
    if n <= 1:
        return 0
    digest = hashlib.blake2b(str(stream).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n


def split_partial(partial: Partial, n: int) -> list[Partial]:
    """``partial`` as ``n`` parts, part i holding the rows and dead letters of the streams shard i owns (rows keep
    their order). Timings stay with part 0 only, so a sum over parts counts the batch's time once."""
    if n <= 1:
        return [partial]
    columns = partial.columns
    # one hash per distinct stream of the batch, not per row
    owner = np.array([shard_of(name, n) for name in columns.stream_names], dtype=np.int64)
    row_shard = owner[columns.stream_index] if len(columns) else np.zeros(0, dtype=np.int64)
    dead: list[list] = [[] for _ in range(n)]
    for d in partial.dead_letters:
        dead[shard_of(d.stream, n)].append(d)
    parts = []
    for i in range(n):
        rows = np.flatnonzero(row_shard == i)
        if len(rows) == len(columns):
            codes, cols = partial.codes, columns
        else:
            codes = partial.codes.take(rows) if partial.codes is not None and len(rows) else None
            cols = columns.take(rows)
        nonconverged = 0
        if codes is not None and codes.converged is not None:
            nonconverged = int(len(codes) - int(np.asarray(codes.converged, dtype=bool).sum()))
        parts.append(Partial(codes, columns=cols, dead_letters=dead[i], n_nonconverged=nonconverged,
                             timings=dict(partial.timings) if i == 0 else {}))
    return parts


def shard_job_id(job: str, index: int, n: int, generation: int = 0) -> str:
    """The checkpoint name of shard ``index`` of ``n`` in checkpoint ``generation`` (the job's own name when there
    is one aggregator, so existing checkpoints keep working)."""
    return job if n <= 1 else f"{job}.shard{index}-of-{n}.g{generation}"


def _shard_names(job: str, names: list[str]) -> dict[int, dict[int, set[int]]]:
    """The checkpoints of ``job`` in ``names``: shard count -> shard index -> generations (count 1: the plain
    name)."""
    found: dict[int, dict[int, set[int]]] = {}
    pattern = re.compile(re.escape(job) + r"\.shard(\d+)-of-(\d+)\.g(\d+)$")
    for name in names:
        if name == job:
            found.setdefault(1, {}).setdefault(0, set()).add(0)
            continue
        m = pattern.match(name)
        if m:
            index, count, generation = map(int, m.groups())
            found.setdefault(count, {}).setdefault(index, set()).add(generation)
    return found


# -- merging what the shards report -----------------------------------------------------------------------------------

_SUMMED = ("images", "skipped_duplicate_items", "dead_letters_total", "alarms", "alarms_fired", "alarms_resolved",
           "windows_closed", "nonconverged", "ledger_size")
_PER_BATCH = ("batches", "duplicate_batches")  # every shard commits every batch once


def merge_summaries(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """One aggregator's ``summary()`` from the shards' summaries."""
    if len(parts) == 1:
        return parts[0]
    out: dict[str, Any] = {k: sum(int(p.get(k, 0)) for p in parts) for k in _SUMMED}
    for k in _PER_BATCH:
        out[k] = max(int(p.get(k, 0)) for p in parts)
    dead: Counter[str] = Counter()
    streams: dict[str, int] = {}
    references: dict[str, Any] = {}
    for p in parts:
        dead.update(p.get("dead_letters") or {})
        streams.update(p.get("streams") or {})  # disjoint: a stream lives on one shard
        references.update(p.get("references") or {})
    out["dead_letters"] = dict(dead)
    out["streams"] = streams
    out["references"] = references
    out["images_per_aggregator"] = [int(p.get("images", 0)) for p in parts]
    return out


def skipped_commit(seq: int) -> Any:
    """The result of a shard that already applied batch ``seq`` before another shard had to redo it: nothing new."""
    from workers.actors import CommitResult

    return CommitResult(seq=seq, duplicate=True)


def merge_commit_results(results: list) -> Any:
    """One ``CommitResult`` for a batch from its shards' results (same ``seq``)."""
    if len(results) == 1:
        return results[0]
    first = results[0]
    merged = replace(first, alarms=list(first.alarms), duplicate=all(r.duplicate for r in results),
                     parked=any(r.parked for r in results))
    for r in results[1:]:
        merged.add(r)
    return merged


def _merge_alarms(lists: list[list[Alarm]]) -> list[Alarm]:
    """Alarms of several shards in one list ordered by when they fired (event time), then stream."""
    alarms = [a for part in lists for a in part]
    if len(lists) > 1:
        alarms.sort(key=lambda a: (a.window_end, a.stream))
    return alarms


class AggregatorGroup:
    """N aggregator actors behind the calls the driver makes on one: ``commit`` fans a batch's parts out, every other
    call goes to all shards and merges. With N = 1 it is a thin wrapper and nothing changes."""

    def __init__(self, actors: list[Any], job: str | None = None) -> None:
        if not actors:
            raise ValueError("an aggregator group needs at least one actor")
        self.actors = list(actors)
        self.n = len(self.actors)
        self.job = job
        self.generation = 0  # the last checkpoint generation every shard saved (N > 1)

    @classmethod
    def start(cls, config, concept_names: list[str], concept_space: str, *, encoder: str = "") -> "AggregatorGroup":
        """Start ``config.aggregators`` actors (each its own exporter port and history writer slot) and wait until
        they are ready; ConfigError/PipelineError from a failed start as with one aggregator."""
        from workers.actors import aggregator_actor_class

        n = config.aggregators
        # a checkpointed run survives an aggregator's death: Ray restarts it, the driver restores and replays
        actor_class = aggregator_actor_class(max_restarts=-1 if config.checkpoint_job else 0)
        actors = [actor_class.remote(config.aggregator_config(encoder=encoder, shard=i), concept_names,
                                     concept_space) for i in range(n)]
        return cls(actors, job=config.checkpoint_job)

    def ready_refs(self) -> list:
        return [a.ready.remote() for a in self.actors]

    # -- the per-batch path ---------------------------------------------------------------------------------------

    def commit(self, seq: int, parts: list, *, released: tuple[int, ...] = (), queue_depth: int | None = None,
               read_at: float | None = None, shards: list[int] | None = None) -> list:
        """Commit part i of batch ``seq`` on shard i (``parts``: the worker's N result references); returns the N
        commit references (None for shards not in ``shards``, when only some are committed again)."""
        refs: list = []
        for i, actor in enumerate(self.actors):
            if shards is not None and i not in shards:
                refs.append(None)
                continue
            # the queue depth is one gauge of the whole run: shard 0 carries it, so a sum over shards is right
            refs.append(actor.commit.remote(seq, parts[i], released=released, read_at=read_at,
                                            queue_depth=queue_depth if i == 0 else None))
        return refs

    def merge_results(self, results: list) -> Any:
        return merge_commit_results(results)

    # -- the calls that go to every shard -------------------------------------------------------------------------

    def _all(self, method: str, *args, **kwargs) -> list:
        import ray

        return ray.get([getattr(a, method).remote(*args, **kwargs) for a in self.actors])

    def release(self, seqs: tuple[int, ...]) -> None:
        self._all("release", tuple(seqs))

    def flush(self) -> list[Alarm]:
        return _merge_alarms(self._all("flush"))

    def summary(self) -> dict[str, Any]:
        return merge_summaries(self._all("summary"))

    def recent_alarms(self, n: int = 50) -> list[Alarm]:
        return _merge_alarms(self._all("recent_alarms", n))[-n:]

    def metrics_addresses(self) -> list[tuple[str, int] | None]:
        return self._all("metrics_address")

    def metrics_address(self) -> tuple[str, int] | None:
        """Shard 0's endpoint (the others serve on the following ports; see :meth:`metrics_addresses`)."""
        return self.metrics_addresses()[0]

    def close(self) -> None:
        self._all("close")

    def kill(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass

    # -- checkpoints ----------------------------------------------------------------------------------------------
    #
    # With N > 1 the driver checkpoints only when nothing is in flight, so every shard has applied the same batches
    # and saves the same ``through_seq``: one skip list and one source position are then right for all of them. A
    # crash between two shards' saves would still leave them at different points, so each save is a new
    # generation (``JOB.shardI-of-N.gG``): a restart loads the newest generation every shard completed, and the
    # generation before is deleted only once all shards hold the new one.

    def job_id(self, index: int, generation: int | None = None) -> str:
        return shard_job_id(self.job or "", index, self.n, self.generation if generation is None else generation)

    def load_checkpoint(self, job: str, restart: bool = False, run: str = "") -> dict | None:
        """Restore every shard from the newest checkpoint generation all of them saved; returns the merged record
        (None: start afresh)."""
        import ray

        self.job = job
        found = _shard_names(job, ray.get(self.actors[0].checkpoint_names.remote()))
        if restart:
            if self.n > 1:
                self._drop([name for i in range(self.n) for name in self._names(found, i)])
            ray.get([a.load_checkpoint.remote(self.job_id(i, 0), True, run=run) for i, a in enumerate(self.actors)])
            return None
        others = sorted(set(found) - {self.n})
        if others:
            raise ConfigError(f"checkpoint {job!r} was written with --aggregators {others[0]}, this run has "
                              f"{self.n}: rerun with --aggregators {others[0]} to continue it, or with --restart to "
                              f"start the job afresh")
        if self.n > 1:
            mine = found.get(self.n, {})
            common = set.intersection(*(mine.get(i, set()) for i in range(self.n))) if mine else set()
            if not common:
                return None
            self.generation = max(common)
        records = ray.get([a.load_checkpoint.remote(self.job_id(i), False, run=run)
                           for i, a in enumerate(self.actors)])
        return merge_checkpoint_records(records)

    def save_checkpoint(self, job: str, position: dict | None = None, done: bool = False, *,
                        positions: dict[int, Any] | None = None, refs: dict[int, list[str]] | None = None,
                        run: str = "") -> dict[str, Any]:
        """Every shard saves its own state; returns ``{"through_seq": k, "shards": [...], "died": [...]}`` with k
        what every shard's checkpoint holds (the driver acknowledges exactly that), or the shards that died while
        saving (Ray restarts them; the driver restores them and commits again what they lost)."""
        import ray

        from workers.acks import actor_died

        self.job = job
        generation = self.generation + 1 if self.n > 1 else 0
        calls = [a.save_checkpoint.remote(self.job_id(i, generation), position, done, positions=positions, refs=refs,
                                          run=run) for i, a in enumerate(self.actors)]
        saved, died = [], []
        for i, call in enumerate(calls):
            try:
                saved.append(int(ray.get(call)["through_seq"]))
            except ray.exceptions.RayError as exc:
                if not actor_died(exc):
                    raise
                died.append(i)
        if died:
            return {"through_seq": 0, "shards": [], "died": died}
        if len(set(saved)) > 1:  # the driver drains before a sharded checkpoint; anything else is a bug
            raise PipelineError(f"aggregator shards saved different positions {saved}; the checkpoint is not used")
        if self.n > 1:
            previous, self.generation = self.generation, generation
            if previous:
                self._drop([self.job_id(i, previous) for i in range(self.n)])
        return {"through_seq": min(saved), "shards": saved, "died": []}

    def _names(self, found: dict, index: int) -> list[str]:
        return [self.job_id(index, g) for g in sorted(found.get(self.n, {}).get(index, set()))]

    def _drop(self, names: list[str]) -> None:
        import ray

        if names:
            ray.get(self.actors[0].drop_checkpoints.remote(names))

    def restore(self, index: int, run: str) -> dict | None:
        """Shard ``index`` died and Ray restarts it: restore it from its part of the last complete generation (see
        ``workers.acks``)."""
        from workers.acks import restore_aggregator

        return restore_aggregator(self.actors[index], self.job_id(index), run)


def merge_checkpoint_records(records: list[dict | None]) -> dict | None:
    """The run-level view of the shards' checkpoint records: counts summed, the source position and coverage of the
    shard that holds the fewest batches, every shard's references to skip (each names only its own items)."""
    if len(records) == 1:
        return records[0]
    present = [r for r in records if r is not None]
    if not present:
        return None
    if len(present) != len(records):
        # a shard that never saved starts empty, so the source must start from the beginning for it
        lowest = None
    else:
        lowest = min(present, key=lambda r: int(r.get("through_seq", 0)))
    skip = sorted({ref for r in present for ref in (r.get("redelivered_refs") or [])})
    dead: Counter[str] = Counter()
    for r in present:
        dead.update(r.get("dead_letters") or {})
    return {
        "source": None if lowest is None else lowest.get("source"),
        "through_seq": 0 if lowest is None else int(lowest.get("through_seq", 0)),
        "redelivered_refs": skip,
        "images": sum(int(r.get("images", 0)) for r in present),
        "dead_letters": dict(dead),
        "done": all(bool(r.get("done")) for r in records if r is not None) and len(present) == len(records),
    }
