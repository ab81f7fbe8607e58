"""Ray actors of the pipeline: a Worker actor wrapping the core ``workers.core.Worker`` and an Aggregator actor that
commits batch contributions exactly once and owns windows, reference, drift tests, metrics, history and dead letters.

Both are plain classes first (``WorkerHost``, ``AggregatorCore``) so they run and are tested without Ray; the Ray
actor classes are made from them by ``worker_actor_class`` / ``aggregator_actor_class``.
"""

from __future__ import annotations

import os
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from monitor.drift.routing import stream_groups
from monitor.records import Alarm, SparseCodes, WindowSummary
from workers.config import AggregatorConfig, HistoryReference
from workers.core import Worker, WorkerConfig
from workers.items import DeadLetter, ItemColumns, Partial
from workers.ledger import CommitLedger

__all__ = ["WorkerHost", "AggregatorCore", "CommitResult", "worker_actor_class",
           "aggregator_actor_class"]


class WorkerHost:
    """What a Worker actor runs: the core worker, built once per actor life (model and dictionary loaded here)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.worker = Worker.create(config)
        self.started = time.time()

    def info(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "concept_names": self.worker.concept_names,
            "concept_space": self.worker.concept_space,
            "dim": int(self.worker.encoder.dim),
            "encoder": str(getattr(self.worker.encoder, "id", "")),
            "mean": str(getattr(self.worker.decomposer, "mean_source", None) or ""),
            "device": str(self.config.device or "cpu"),
            "started": self.started,
        }

    def pid(self) -> int:
        return os.getpid()

    def process(self, items: list, shards: int = 1) -> Partial | tuple[Partial, ...]:
        """The batch's partial; with ``shards`` > 1, one part per aggregator shard (the driver calls this with Ray
        ``num_returns=shards``, so each part goes to its aggregator without visiting the driver)."""
        partial = self.worker.process(items)
        if shards <= 1:
            return partial
        from workers.shards import split_partial

        return tuple(split_partial(partial, shards))


@dataclass
class CommitResult:
    """What one commit did; ``alarms`` are the alarms that fired while applying this batch."""

    seq: int
    duplicate: bool = False
    counted: int = 0
    dead_letters: int = 0
    skipped_ids: int = 0
    alarms: list[Alarm] = field(default_factory=list)
    windows_closed: int = 0
    parked: bool = False  # arrived before an earlier batch: applied (and counted in a later result) once it commits

    def add(self, other: "CommitResult") -> None:
        """Fold in what applying another batch in the same call did."""
        self.counted += other.counted
        self.dead_letters += other.dead_letters
        self.skipped_ids += other.skipped_ids
        self.alarms.extend(other.alarms)
        self.windows_closed += other.windows_closed


class AggregatorCore:
    """Commits batch partials exactly once and feeds the monitor, metrics, history and dead-letter sink.

    Idempotence: a batch is identified by its source sequence number. A commit of a sequence number that is already
    committed (a retried commit call) is ignored. Batches are applied in sequence order (one that commits early
    waits for the ones before it), so windows do not depend on which worker was slow or died. An item whose id was
    already counted (in a batch not yet acknowledged, or among the last ``recent_ids`` acknowledged items) is a
    ``duplicate`` dead letter. The driver releases a sequence number once the source has acknowledged it, so the
    ledger holds the in-flight batches plus a bounded window of recent ids: memory is bounded by in-flight work and
    that window, never by the number of items seen.
    """

    def __init__(self, config: AggregatorConfig, concept_names: list[str], concept_space: str) -> None:
        from workers.deadletter import open_sink

        self.config = config
        self.concept_names = list(concept_names)
        self.concept_space = concept_space
        self.monitor = _make_monitor(self.concept_names, concept_space, config.monitor)
        self.metrics = None
        self.exporter = None
        if config.metrics_port is not None:
            self.metrics, self.exporter = _make_metrics(self.concept_names, config.metrics_port, config.metrics_host,
                                                        build=(config.encoder or "unknown", concept_space),
                                                        max_streams=int(self.monitor.config.max_streams))
        self.history = None
        self._window_day: dict[str, int] = {}  # latest UTC day written per stream (triggers compaction)
        if config.history:
            self.history = _make_history(config.history, self.concept_names, concept_space, shard=config.shard)
        self.sink = open_sink(config.dead_letter)
        self.reference_streams: list[str] = []  # streams whose own stored windows form their reference
        self._fallback_reference: WindowSummary | None = None  # all streams merged, for streams new to history
        if config.reference_history is not None:
            self._load_history_reference(config.reference_history)
        self.ledger = CommitLedger(recent_ids=config.recent_ids)
        self.counted = 0
        self.batches = 0
        self.duplicate_batches = 0
        self.skipped_ids = 0
        self.nonconverged = 0
        self.windows_closed = 0
        self.alarm_count = 0
        self.alarms_resolved = 0  # of alarm_count: resolutions (the rest fired)
        self.alarms: deque[Alarm] = deque(maxlen=config.keep_alarms)
        self.streams: Counter[str] = Counter()

    # -- ledger ---------------------------------------------------------------------------------------------------

    def release(self, seqs: list[int] | tuple[int, ...]) -> None:
        """The source acknowledged these batches: forget their ids (but for the bounded window of recent ones)."""
        self.ledger.release(seqs)

    def ledger_size(self) -> int:
        return self.ledger.size()

    # -- commit ---------------------------------------------------------------------------------------------------

    def commit(self, seq: int, partial: Partial, *, released: tuple[int, ...] = (), queue_depth: int | None = None,
               read_at: float | None = None) -> CommitResult:
        """Apply one batch's contribution unless this sequence number was already applied.

        ``released``: sequence numbers the source has acknowledged since the last call; ``read_at``: wall time the
        batch was read, for the batch latency histogram."""
        latency_s = None if read_at is None else max(0.0, time.time() - read_at)
        if released:
            self.release(released)
        if queue_depth is not None and self.metrics is not None:
            self.metrics.set_queue_depth(queue_depth)
        if self.ledger.seen(seq):
            self.duplicate_batches += 1
            return CommitResult(seq=seq, duplicate=True)
        # Batches are applied in source order, whatever order their commits arrive in: a batch retried after a
        # worker died commits late, and applying it late would put its items in a later count window than a run
        # without the fault (identical runs must give identical windows and alarms). Early ones wait in the ledger;
        # at most the driver's in-flight batches do.
        result = CommitResult(seq=seq, parked=seq != self.ledger.next_seq)
        for ready, (part, latency) in self.ledger.arrive(seq, (partial, latency_s)):
            try:
                result.add(self._apply_batch(ready, part, latency))
            except Exception:
                self.ledger.abandon(ready)  # e.g. the dead-letter sink failed, before any state changed
                raise
        return result

    def _apply_batch(self, seq: int, partial: Partial, latency_s: float | None) -> CommitResult:
        columns = partial.columns
        # a repeated id is a dead letter with reason "duplicate", so that sent = counted + dead letters
        rows, dead, counted_ids = self.ledger.admit(columns, partial.dead_letters)
        skipped = sum(1 for d in dead if d.reason == "duplicate")
        # Stream capacity is checked before any state changes: the monitor and the metrics each refuse a stream past
        # their max_streams, and a refusal half-way through applying a batch would leave it counted but not
        # committed, so a retry would count it again.
        rows, over = self._within_stream_limit(columns, rows)
        dead += over
        n_rows = len(columns) if rows is None else len(rows)
        result = CommitResult(seq=seq, counted=n_rows, dead_letters=len(dead), skipped_ids=skipped)
        if dead:
            # first, before any state changes: a sink that fails (after its retries) fails this commit cleanly, the
            # batch is not acknowledged, and nothing of it has been counted
            self.sink.write(dead)
        if n_rows:
            if rows is None:
                codes, kept = partial.codes, columns
            else:
                codes, kept = partial.codes.take(rows), columns.take(rows)
            result.alarms = self._apply(codes, kept, latency_s)
        if dead and self.metrics is not None:  # after the rows, which hold their stream slots already
            for (stream, reason), n in Counter((d.stream, d.reason) for d in dead).items():
                self.metrics.observe_dead_letter(stream, reason, n=n)  # refused streams: one shared label
        result.windows_closed = self._drain_windows()
        self.ledger.record(seq, counted_ids)
        self.counted += n_rows
        self.batches += 1
        self.skipped_ids += skipped
        self._note_alarms(result.alarms)
        return result

    def stream_limit(self) -> tuple[int, str]:
        """The number of streams this aggregator tracks at most, and the setting that sets it."""
        limit, setting = int(self.monitor.config.max_streams), "monitor max_streams (MonitorConfig.max_streams)"
        if self.metrics is not None and int(self.metrics.max_streams) < limit:
            limit, setting = int(self.metrics.max_streams), "metrics max_streams (MonitorMetrics(max_streams=...))"
        return limit, setting

    def _within_stream_limit(self, columns: ItemColumns, rows: np.ndarray | None
                             ) -> tuple[np.ndarray | None, list[DeadLetter]]:
        """Split ``rows`` (None: all) into those whose stream fits under the stream limit and dead letters for the
        rest.

        New streams are admitted in batch order while both the monitor and the metrics have room."""
        index = columns.stream_index if rows is None else columns.stream_index[rows]
        groups = stream_groups(index, columns.stream_names)
        known_monitor = self.monitor.monitors
        known_metrics = set(self.metrics.streams) if self.metrics is not None else None
        if all(stream in known_monitor and (known_metrics is None or stream in known_metrics)
               for stream, _ in groups):
            return rows, []  # no new stream in the batch (the usual case)
        known_monitor = set(known_monitor)
        limit_monitor = int(self.monitor.config.max_streams)
        limit_metrics = int(self.metrics.max_streams) if self.metrics is not None else None
        refused: set[str] = set()
        for stream, _ in groups:
            if ((stream in known_monitor or len(known_monitor) < limit_monitor)
                    and (known_metrics is None or stream in known_metrics or len(known_metrics) < limit_metrics)):
                known_monitor.add(stream)
                if known_metrics is not None:
                    known_metrics.add(stream)
            else:
                refused.add(stream)
        if not refused:
            return rows, []
        limit, setting = self.stream_limit()
        names = columns.streams()
        kept, over = [], []
        for r in (range(len(columns)) if rows is None else rows.tolist()):
            if names[r] not in refused:
                kept.append(r)
                continue
            over.append(DeadLetter(
                item_id=columns.ids[r], stream=names[r], timestamp=float(columns.timestamps[r]), reason="stream_limit",
                detail=f"stream {names[r]!r} is beyond the limit of {limit} streams ({setting}); raise it "
                       f"(--max-streams) if this many streams are intended"))
        return np.asarray(kept, dtype=np.int64), over

    # -- reference from the history store -------------------------------------------------------------------------

    def _load_history_reference(self, ref: HistoryReference) -> None:
        """Each stream stored in [start, end) gets its own merged windows as reference; a stream the store does not
        hold is compared with all stored streams merged. No stored images in the range is a ConfigError."""
        from monitor.errors import ConfigError
        from monitor.history.store import HistoryStore, NoDataError

        store, start, end = ref.store, ref.start, ref.end
        hist = HistoryStore.open(store)
        if list(hist.concept_names) != self.concept_names:
            raise ConfigError(f"reference store {hist.location!r} holds concept space {hist.concept_space!r} "
                              f"({hist.n_concepts} concepts), the workers use {self.concept_space!r} "
                              f"({len(self.concept_names)} concepts): use the same model and vocabulary")
        try:
            self._fallback_reference = hist.merged_window(stream=None, start=start, end=end)
        except NoDataError as exc:
            raise ConfigError(f"--reference history: {exc} (check --reference-from/--reference-to)") from None
        for stream in hist.streams():
            try:
                window = hist.merged_window(stream=stream, start=start, end=end)
            except NoDataError:
                continue
            if not self.monitor.can_accept(stream):
                break
            self.monitor.set_reference(stream, window)
            self.reference_streams.append(stream)

    def _reference_new_streams(self, streams: list[str]) -> None:
        if self._fallback_reference is None:
            return
        for stream in streams:
            if stream not in self.monitor.monitors:
                self.monitor.set_reference(stream, self._fallback_reference)

    def _apply(self, codes: SparseCodes, columns: ItemColumns, latency_s: float | None) -> list[Alarm]:
        groups = stream_groups(columns.stream_index, columns.stream_names)
        self._reference_new_streams([stream for stream, _ in groups])
        alarms = list(self.monitor.update_columns(codes, columns.timestamps, columns.stream_index,
                                                  columns.stream_names) or [])
        for stream, rows in groups:
            self.streams[stream] += len(codes) if rows is None else len(rows)
        if self.metrics is not None:
            for stream, rows in groups:
                part = codes if rows is None else codes.take(rows)
                self.metrics.observe_batch(stream, part, latency_s=latency_s)
                self.metrics.set_reference_fill(stream, self.reference_fill(stream)["ratio"])
                if part.converged is not None:
                    n_bad = int((~np.asarray(part.converged, dtype=bool)).sum())
                    if n_bad:
                        self.metrics.observe_nonconverged(stream, n_bad)
        if codes.converged is not None:
            self.nonconverged += int((~np.asarray(codes.converged, dtype=bool)).sum())
        if self.history is not None and self.config.write_codes:
            self.history.write_codes(codes, columns.metas())
        return alarms

    def _drain_windows(self) -> int:
        windows = _pop_closed_windows(self.monitor)
        if not windows:
            return 0
        if self.history is not None:
            self.history.write_windows(windows)
            self._compact_finished_days(windows)
        if self.metrics is not None:
            for w in windows:
                self._observe_window(w)
        self.windows_closed += len(windows)
        return len(windows)

    def _compact_finished_days(self, windows: list[WindowSummary]) -> None:
        # A live store gets one small file per window; once a stream's windows move into a new UTC day, compact the
        # stream so the finished days get their rollups and long-range comparisons stay fast.
        days = self._window_day
        for stream in sorted({w.stream for w in windows}):
            day = max(int(w.start // 86400) for w in windows if w.stream == stream)
            previous = days.get(stream)
            days[stream] = day if previous is None else max(previous, day)
            if previous is not None and day > previous:
                self.history.compact(stream=stream)

    def _observe_window(self, window: WindowSummary) -> None:
        status = _status(self.monitor, window.stream)
        current = status.get("current") or window  # the tested view (several windows when view > 1)
        self.metrics.observe_window(window.stream, current, status.get("reference"),
              concept_scores=status.get("concept_scores"), drift_score=status.get("drift_score"),
              alarms=status.get("alarms"))
        if status.get("reference_time") is not None:
            self.metrics.set_reference_time(window.stream, status["reference_time"])

    def _note_alarms(self, alarms: list[Alarm]) -> None:
        if not alarms:
            return
        self.alarm_count += len(alarms)
        self.alarms_resolved += sum(1 for a in alarms if a.state == "resolved")
        self.alarms.extend(alarms)
        if self.history is not None:
            self.history.write_alarms(list(alarms))

    # -- end of run -----------------------------------------------------------------------------------------------

    def flush(self) -> list[Alarm]:
        """Close every open window (end of a finite source or shutdown) and return the alarms that fired."""
        parked: list[Alarm] = []
        for seq, (part, latency) in self.ledger.drain():  # a gap never filled (a batch given up on): keep order
            parked += self._apply_batch(seq, part, latency).alarms
        alarms = list(self.monitor.flush() or [])
        self._drain_windows()
        self._note_alarms(alarms)
        self.sink.flush()
        return parked + alarms

    def summary(self) -> dict[str, Any]:
        return {
            "images": self.counted,
            "batches": self.batches,
            "duplicate_batches": self.duplicate_batches,
            "skipped_duplicate_items": self.skipped_ids,
            "dead_letters": dict(self.sink.counts),
            "dead_letters_total": self.sink.total,
            "alarms": self.alarm_count,
            "alarms_fired": self.alarm_count - self.alarms_resolved,
            "alarms_resolved": self.alarms_resolved,
            "windows_closed": self.windows_closed,
            "nonconverged": self.nonconverged,
            "streams": dict(self.streams),
            "ledger_size": self.ledger_size(),
            "references": {stream: self.reference_fill(stream) for stream in self.monitor.streams()},
        }

    def reference_fill(self, stream: str) -> dict[str, Any]:
        """How far ``stream``'s reference is built and how many drift tests ran (see workers.summary)."""
        from workers.summary import reference_fill

        return reference_fill(self.monitor.progress(stream), self.monitor.config)

    # -- resumable batch jobs (backfill) ----------------------------------------------------------------------------

    def load_checkpoint(self, job_id: str, restart: bool = False, run: str = "") -> dict[str, Any] | None:
        """Restore the whole aggregator saved for ``job_id`` (see ``workers/checkpoint.py``); returns the record
        (None: start afresh)."""
        from workers.checkpoint import load_checkpoint

        return load_checkpoint(self, job_id, restart=restart, run=run)

    def save_checkpoint(self, job_id: str, position: dict | None = None, done: bool = False, *,
                        positions: dict[int, Any] | None = None, refs: dict[int, list[str]] | None = None,
                        run: str = "") -> dict[str, Any]:
        """Save the whole aggregator as one checkpoint with the source position it corresponds to; returns
        ``{"through_seq": k}`` (see ``workers/checkpoint.py``)."""
        from workers.checkpoint import save_checkpoint

        return save_checkpoint(self, job_id, position, done=done, positions=positions, refs=refs, run=run)

    def checkpoint_names(self) -> list[str]:
        """The job checkpoints the history store holds (a sharded run checks they were written with its shard
        count)."""
        return [] if self.history is None else list(self.history.list_checkpoints())

    def drop_checkpoints(self, names: list[str]) -> None:
        """Delete these job checkpoints with their state files (a sharded run's superseded generations)."""
        if self.history is None:
            return
        for name in names:
            record = self.history.get_checkpoint(name) or {}
            for key in ("monitor_state", "ledger_state", "dead_letters_state"):
                if record.get(key):
                    self.history.delete_checkpoint_file(record[key])
            self.history.clear_checkpoint(name)

    def recent_alarms(self, n: int = 50) -> list[Alarm]:
        return list(self.alarms)[-n:]

    def recent_dead_letters(self) -> list[DeadLetter]:
        return list(self.sink.recent)

    def metrics_address(self) -> tuple[str, int] | None:
        if self.exporter is None:
            return None
        return _exporter_address(self.exporter, self.config.metrics_port)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.sink.close()
        if self.history is not None:
            self.history.close()  # the store's writer lock: the next run may write at once
        if self.exporter is not None:
            _stop_exporter(self.exporter)
            self.exporter = None


# ---------------------------------------------------------------------------------------------------------------------
# Wiring to the core parts (statistics/monitor, metrics/exporter, history). Kept in one place so a change in one of
# those contracts is a change here only.


def _make_monitor(concept_names: list[str], concept_space: str, config):
    from dataclasses import replace

    from monitor.drift.monitor import ConceptMonitor

    return ConceptMonitor(concept_names, replace(config, concept_space=concept_space))


def _pop_closed_windows(monitor) -> list[WindowSummary]:
    return monitor.closed_windows()


def _status(monitor, stream: str) -> dict[str, Any]:
    st = monitor.status(stream)
    return {
        "current": st.current,
        "reference": st.reference,
        "concept_scores": st.concept_scores,
        "drift_score": st.stream_score,
        "alarms": st.active_alarms,
        "reference_time": None if st.reference is None else st.reference.end,
    }


def _make_metrics(concept_names: list[str], port: int | None, host: str, build: tuple[str, str] = ("unknown", ""),
                  *, max_streams: int | None = None):
    """MonitorMetrics (tracking at most ``max_streams`` streams), build info and the process collectors on a private
    registry, served over HTTP by the exporter (port 0 picks a free port; None: not served)."""
    from prometheus_client import CollectorRegistry

    from monitor.metrics.exporter import MetricsExporter
    from monitor.metrics.families import MonitorMetrics
    from monitor.metrics.runtime import BuildInfo, register_runtime_collectors

    registry = CollectorRegistry()
    kwargs = {} if max_streams is None else {"max_streams": int(max_streams)}
    metrics = MonitorMetrics(concept_names, registry=registry, **kwargs)
    encoder, space = build
    BuildInfo(encoder=encoder, concept_space=space or "unknown", registry=registry)
    register_runtime_collectors(registry)
    exporter = None if port is None else MetricsExporter(registry, host=host, port=int(port))
    return metrics, exporter


def _exporter_address(exporter, port) -> tuple[str, int]:
    import socket

    host = exporter.host
    if host in ("0.0.0.0", "::", ""):  # bound on every interface: report this node's address
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    return host, int(exporter.port)


def _stop_exporter(exporter) -> None:
    exporter.close()


def _monitor_to_bytes(monitor) -> bytes:
    return monitor.to_bytes()


def _monitor_from_bytes(blob: bytes):
    from monitor.drift import ConceptMonitor

    return ConceptMonitor.from_bytes(blob)


def _make_history(root: str, concept_names: list[str], concept_space: str, shard: tuple[int, int] = (0, 1)):
    from monitor.history.store import HistoryStore

    # the shards of a run write side by side (disjoint streams, so disjoint partitions); see WriterLock
    return HistoryStore(root, concept_space=concept_space, concept_names=concept_names, writer_shard=shard)


# ---------------------------------------------------------------------------------------------------------------------
# Ray actor classes


def _hosted(cls):
    """``cls`` as an actor body whose start-up errors stay typed.

    Ray reports an exception raised in an actor's constructor as an ``ActorDiedError`` that no longer carries the
    exception, so a ConfigError (unknown model, dimension mismatch, port in use) would reach the driver as text.
    The hosted class keeps a SpliceError raised while starting and raises it again from ``ready()``, the driver's
    first call, where Ray hands it over as the task error's typed ``cause``."""
    from monitor.errors import SpliceError

    class Hosted(cls):
        def __init__(self, *args, **kwargs) -> None:
            self._startup_error = None
            try:
                super().__init__(*args, **kwargs)
            except SpliceError as exc:
                self._startup_error = exc

        def ready(self) -> bool:
            if self._startup_error is not None:
                raise self._startup_error
            return True

    Hosted.__name__ = Hosted.__qualname__ = cls.__name__
    return Hosted


def worker_actor_class(*, num_cpus: float = 1.0, num_gpus: float = 0.0, max_restarts: int = -1,
                       max_task_retries: int = 0):
    """The Worker actor class with its resource request. Task retries default to 0: the driver resubmits a failed
    batch itself (possibly to another worker), which keeps the retry accounting in one place."""
    import ray

    return ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts,
                      max_task_retries=max_task_retries)(_hosted(WorkerHost))


def aggregator_actor_class(*, max_restarts: int = 0):
    """The Aggregator actor class. It takes no CPU from the scheduler's count so it can sit beside N workers on an
    N-CPU node; it is not restarted by default because its windows live in memory (see docs/pipeline.md)."""
    import ray

    # Pinned to the head node: on Kubernetes the chart puts the metrics Service, the monitors and the history volume
    # on the Ray head (whose num-cpus is 0, so workers never land there); a local Ray has one node, the head.
    return ray.remote(num_cpus=0, max_restarts=max_restarts,
                      resources={"node:__internal_head__": 0.001})(_hosted(AggregatorCore))
