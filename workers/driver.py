"""The pipeline driver: reads batches from a source, fans them out to Worker actors, commits each batch's partial on
the Aggregator exactly once, acknowledges the source after the commit, and flushes on the end of input or SIGTERM.

Backpressure: at most ``max_in_flight`` batches are read and not yet committed; the driver reads the next batch only
when one commits, so a slow model slows the reader instead of filling memory.

Size: the :class:`Pipeline` class is one run's state (flights, retries, held acknowledgements, checkpoints, recovery)
and the small steps that change it; splitting the steps from the state they share would only add indirection. The
records it reports live in ``workers/summary.py``, worker health in ``workers/health.py``.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from monitor.errors import ConfigError, PipelineError, SpliceError
from monitor.records import Alarm
from monitor.uris import redact_text, redact_uri
from workers.acks import AckGate, actor_died
from workers.config import HistoryReference, PipelineConfig
from workers.health import WorkerHealth
from workers.summary import RunSummary, Status

__all__ = ["Pipeline", "run_pipeline", "check_history_reference"]

log = logging.getLogger(__name__)


@dataclass
class _Flight:
    batch: Any
    worker: int
    proc_ref: list  # the worker's result: one part per aggregator shard
    commit_ref: list  # the commit on each shard (None: nothing to wait for on that shard)
    submitted: float
    attempts: int = 1
    results: dict = field(default_factory=dict)  # shard -> its CommitResult, as they arrive


def _ensure_ray(address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray; returns True when this call started it (and must stop it)."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, log_to_driver=False)
    return True


def _gpus_per_worker(config: PipelineConfig) -> float:
    import ray

    if config.gpus_per_worker is not None:
        available = float(ray.cluster_resources().get("GPU", 0.0))
        if config.gpus_per_worker > 0 and available < config.gpus_per_worker:
            raise ConfigError(f"gpus_per_worker={config.gpus_per_worker} but the Ray cluster has {available:g} GPU(s)")
        return float(config.gpus_per_worker)
    available = float(ray.cluster_resources().get("GPU", 0.0))
    if available >= 1:
        return min(1.0, available / config.workers)
    return 0.0


class Pipeline:
    """One run of the pipeline: start the actors, then read, submit, collect and acknowledge batches until the source
    ends or ``stop`` is set, then flush and summarise.

    The callbacks: ``on_alarm(alarm)`` for every alarm as it fires; ``on_progress(items_done, dead_letters)`` after
    each commit (counts of this run); ``on_started(info)`` once the workers are ready; ``on_status(status)`` every
    ``status_every_s`` seconds with a :class:`Status`. ``hooks`` is for tests (``actors(workers, aggregator)`` once,
    ``after_submit(seq, workers)`` per batch); ``on_phase(message)`` before each long start-up step ("starting
    Ray", "loading the model"). With ``config.checkpoint_job`` the run resumes from, and periodically saves, a
    checkpoint in the history store.
    """

    def __init__(self, config: PipelineConfig, *, stop: threading.Event | None = None,
                 on_alarm: Callable[[Alarm], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_started: Callable[[dict], None] | None = None,
                 on_status: Callable[["Status"], None] | None = None, status_every_s: float = 0.0,
                 on_phase: Callable[[str], None] | None = None,
                 hooks: dict[str, Callable] | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.on_alarm = on_alarm
        self.on_progress = on_progress
        self.on_started = on_started
        self.on_status = on_status
        self.status_every_s = float(status_every_s)
        self.on_phase = on_phase or (lambda message: None)
        self.signals: list[str] = []  # the stop signals received (handle_signals)
        self.hooks = hooks or {}
        self.source: Any = None
        self.workers: list[Any] = []
        self.aggregator: Any = None  # an AggregatorGroup (workers/shards.py): one or more aggregator actors
        self.metrics_address: tuple[str, int] | None = None
        self.gpus = 0.0
        self.job = config.checkpoint_job
        self.gate: AckGate | None = None  # a checkpointed run acknowledges only what a checkpoint holds
        self.shard_through: list[int] = []  # what each aggregator shard's last checkpoint holds (batches 1..k)
        self.metrics_addresses: list = []
        self.run_token = uuid.uuid4().hex  # names this driver in checkpoints (a restarted aggregator keeps numbering)
        # the loop's state: batches in flight, batches waiting for a healthy worker, per-worker load
        self.flights: dict[int, _Flight] = {}
        self.retry_queue: deque[tuple[Any, int]] = deque()  # (batch, attempts)
        self.health: WorkerHealth | None = None
        self.load: Counter[int] = Counter()
        self.released: list[int] = []  # acknowledged since the last aggregator call
        self.read_at: dict[int, float] = {}  # wall time each in-flight batch was read (kept across resubmissions)
        self.exhausted = False
        self.retries = 0
        self.done_items = 0
        self.done_dead = 0
        self.windows_closed = 0
        self.alarms_fired = 0
        self.last_latency_s = 0.0
        self._t_start = 0.0
        self._last_checkpoint = 0.0
        self._last_status = 0.0
        self._status_items = 0

    # -- the whole run -----------------------------------------------------------------------------------------------

    def run(self, *, handle_signals: bool = False) -> RunSummary:
        """Run until the source ends or ``stop`` is set, flush every window and return the summary.
        ``handle_signals``: SIGTERM/SIGINT set ``stop`` (installed after Ray starts, since Ray's driver installs its
        own SIGTERM handler that exits at once; restored at the end)."""
        import ray

        config = self.config
        self._t_start = time.perf_counter()
        # clear errors in a second, before Ray and the models start
        self.on_phase("checking the model name, vocabulary and mean")
        config.worker.check()
        if config.reference_history is not None:
            check_history_reference(config.reference_history)
        source = _open_source(config)
        self.on_phase(f"starting Ray ({'joining ' + redact_uri(config.ray_address) if config.ray_address else 'local'})")
        try:
            started_ray = _ensure_ray(config.ray_address)
        except BaseException:
            source.close()
            raise
        previous_handlers = _install_stop_handlers(self.stop, self.signals) if handle_signals else {}
        try:
            self.source = source
            self.start_actors()
            resumed = self.resume()
            self._announce(resumed)
            self.loop()
            stopped_by = "signal" if self.stop.is_set() and not self.exhausted else "end"
            self.finish(stopped_by)
            totals = self.totals()
            pushed_to, push_error = self.push(totals) if stopped_by == "end" else (None, None)
            return self.summary(totals, stopped_by, pushed_to, push_error)
        finally:
            for signum, handler in previous_handlers.items():
                signal.signal(signum, handler)
            self.close()
            if started_ray:
                ray.shutdown()

    # -- start-up ------------------------------------------------------------------------------------------------

    def start_actors(self) -> None:
        """Start the worker actors (each loads its model and dictionary) and the aggregator."""
        import ray

        from workers.actors import worker_actor_class
        from workers.shards import AggregatorGroup

        config = self.config
        self.gpus = _gpus_per_worker(config)
        wcfg = config.worker
        if self.gpus > 0 and not wcfg.device:
            wcfg = replace(wcfg, device="cuda")
        WorkerActor = worker_actor_class(num_cpus=config.cpus_per_worker, num_gpus=self.gpus,
                                         max_restarts=config.max_restarts)
        self.on_phase(f"starting {config.workers} worker(s): loading {wcfg.model} and its concept dictionary (the "
                      f"first run with a model and vocabulary builds the dictionary, which takes minutes on a CPU)")
        # all workers load at once; a dictionary missing from the cache is built by each (one core each) and
        # written atomically, which costs no more wall time than building it once and then loading it
        self.workers = [WorkerActor.remote(wcfg) for _ in range(config.workers)]
        _startup_get([w.ready.remote() for w in self.workers], "a worker actor")
        self.infos = ray.get([w.info.remote() for w in self.workers])
        spaces = {i["concept_space"] for i in self.infos}
        if len(spaces) != 1:
            raise PipelineError(f"workers disagree on the concept space: {sorted(spaces)}")
        self.health = WorkerHealth(self.workers, [i["pid"] for i in self.infos], wait_s=config.worker_wait_s)
        self.load = Counter({i: 0 for i in range(len(self.workers))})
        self.aggregator = AggregatorGroup.start(config, self.infos[0]["concept_names"], self.infos[0]["concept_space"],
                                                encoder=str(self.infos[0].get("encoder") or ""))
        _startup_get(self.aggregator.ready_refs(), "the aggregator actor")
        self.metrics_addresses = self.aggregator.metrics_addresses()
        self.metrics_address = self.metrics_addresses[0]
        if "actors" in self.hooks:
            self.hooks["actors"](self.workers, self.aggregator.actors[0])
        if "aggregators" in self.hooks:
            self.hooks["aggregators"](self.aggregator)

    def resume(self) -> dict | None:
        """Restore a batch job's checkpoint (monitor state and source position); None when starting afresh."""
        import ray

        if not self.job:
            return None
        try:
            resumed = self.aggregator.load_checkpoint(self.job, self.config.restart, run=self.run_token)
        except ray.exceptions.RayError as exc:  # e.g. the dead-letter sink failed republishing: its typed error
            _raise_typed_cause(exc)
            raise PipelineError(f"restoring the checkpoint failed: {_short(exc)}") from exc
        if resumed and resumed.get("source") is not None:
            self.source.resume(resumed["source"])
        self._last_checkpoint = time.monotonic()
        self.gate = AckGate(self.source, every_s=self.config.checkpoint_every_s,
                            max_held=max(4 * self.config.in_flight_limit, 8),
                            skip=(resumed or {}).get("redelivered_refs"))
        return resumed

    def _announce(self, resumed: dict | None) -> None:
        self._last_status = time.monotonic()
        if self.on_started is None:
            return
        info = self.infos[0]
        self.on_started({
            "workers": len(self.workers), "gpus_per_worker": self.gpus, "metrics_address": self.metrics_address,
            "aggregators": self.aggregator.n, "metrics_addresses": self.metrics_addresses,
            "concept_space": info["concept_space"], "n_concepts": len(info["concept_names"]),
            "encoder": info["encoder"], "mean": info.get("mean", ""), "job": self.job, "history": self.config.history,
            "checkpoint_every_s": self.config.checkpoint_every_s,
            "resumed_from": None if not resumed else resumed.get("source"),
            "resumed_done": bool(resumed and resumed.get("done")),
            "resumed_items": 0 if not resumed else
            int(resumed.get("images", 0)) + sum((resumed.get("dead_letters") or {}).values())})

    # -- the loop ------------------------------------------------------------------------------------------------

    def loop(self) -> None:
        """Read, submit and collect until everything read is committed and acknowledged and the source ended (or
        ``stop`` was set)."""
        while True:
            self.health.poll()
            while self.retry_queue and (w := self.pick()) is not None:
                batch, attempts = self.retry_queue.popleft()
                self.submit(batch, attempts, w)
            if self.gate is not None and self.gate.due() and self._can_checkpoint():
                self.checkpoint()
            if not self.exhausted and not self.stop.is_set() and not self._holding():
                self.read()
            self._maybe_status()
            if not self.flights and not self.retry_queue:
                if self.exhausted or self.stop.is_set():
                    return
                continue  # (also after a checkpoint, to read again)
            if not self.flights:  # everything waits for a worker to come back
                time.sleep(0.2)
                continue
            self.collect(timeout_s=0.5)

    def _can_checkpoint(self) -> bool:
        """One aggregator saves whatever it applied; several save together only when nothing is in flight, so that
        all of them hold the same batches (``workers/shards.py``)."""
        return self.aggregator.n == 1 or (not self.flights and not self.retry_queue)

    def _holding(self) -> bool:
        """Stop reading: too many committed batches wait for a checkpoint, or a sharded checkpoint waits for the
        batches in flight to commit."""
        gate = self.gate
        return gate is not None and (gate.full() or (self.aggregator.n > 1 and gate.due()))

    def pick(self) -> int | None:
        """The healthy worker with the fewest batches in flight (None: every worker is down)."""
        healthy = self.health.healthy()
        return min(healthy, key=lambda i: (self.load[i], i)) if healthy else None

    def read(self) -> None:
        """Read batches while there is room in flight and a worker to take them (backpressure)."""
        limit = self.config.in_flight_limit
        while len(self.flights) + len(self.retry_queue) < limit and (w := self.pick()) is not None:
            try:
                batch = self.source.read(self.config.batch_size,
                                         timeout_s=0.0 if self.flights else self.config.read_timeout_s)
            except Exception as exc:
                if not _unreachable(exc):
                    raise
                raise PipelineError(f"lost the source {redact_uri(self.config.source)}: {redact_text(_short(exc))}; "
                                    f"what was not acknowledged is delivered again on the next run") from None
            if batch is None:
                self.exhausted = True
                return
            if not len(batch):
                return
            if self.gate is not None:
                batch = self.gate.filter(batch)  # items a restored checkpoint already counted (redelivered)
            self.submit(batch, 1, w)
            if self.stop.is_set():
                return

    def submit(self, batch, attempts: int, w: int) -> None:
        """Send ``batch`` to worker ``w`` and chain its commit on the aggregator (the partial never visits the
        driver)."""
        n = self.aggregator.n
        work = batch.payload()  # a descriptor where the source allows: the worker reads the payloads itself
        if n == 1:
            proc_ref = [self.workers[w].process.remote(work)]
        else:  # one part per shard, each an object of its own that only its aggregator fetches
            proc_ref = list(self.workers[w].process.options(num_returns=n).remote(work, n))
        commit_ref = self.aggregator.commit(
            batch.seq, proc_ref, released=tuple(self.released),
            queue_depth=sum(len(f.batch) for f in self.flights.values()),
            read_at=self.read_at.setdefault(batch.seq, time.time()))
        self.released = []
        self.load[w] += 1
        self.flights[batch.seq] = _Flight(batch, w, proc_ref, commit_ref, time.perf_counter(), attempts)
        if "after_submit" in self.hooks:
            self.hooks["after_submit"](batch.seq, self.workers)

    def collect(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a commit; acknowledge what committed, queue what failed for a retry."""
        import ray

        pending = {ref: (seq, i) for seq, f in self.flights.items() for i, ref in enumerate(f.commit_ref)
                   if ref is not None and i not in f.results}
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout_s)
        for ref in ready:
            seq, shard = pending[ref]
            flight = self.flights.get(seq)
            if flight is None:  # an earlier shard's failure already took the batch out
                continue
            try:
                flight.results[shard] = ray.get(ref)
            except Exception as exc:  # the worker (or an aggregator) failed on this batch
                self.flights.pop(seq)
                if flight.worker >= 0:
                    self.load[flight.worker] -= 1
                self.retry(seq, flight, exc, shard)
                continue
            if len(flight.results) < self.aggregator.n:
                continue  # the other shards' commits of this batch are still running
            self.flights.pop(seq)
            if flight.worker >= 0:
                self.load[flight.worker] -= 1
            self.acknowledge(seq, flight, self.aggregator.merge_results(
                [flight.results[i] for i in range(self.aggregator.n)]))

    def retry(self, seq: int, flight: "_Flight", exc: Exception, shard: int = 0) -> None:
        """A batch failed: resubmit it when its worker died (up to ``max_attempts``); an aggregator failure ends
        the run, since the windows live there."""
        if not _failed(flight.proc_ref) and self.gate is not None and actor_died(exc):
            self.flights[seq] = replace(flight, worker=-1)  # its commit went to the dead aggregator like the others
            self.recover_aggregator(shard)
            return
        if not _failed(flight.proc_ref):
            _raise_typed_cause(exc)  # the typed error raised inside the aggregator
            raise PipelineError(f"the aggregator failed committing batch {seq}: {_short(exc)}") from exc
        if flight.attempts >= self.config.max_attempts:
            raise PipelineError(f"batch {seq} failed {flight.attempts} times; last error: {_short(exc)}") from exc
        self.retries += 1
        self.health.failed(flight.worker)
        log.warning("batch %d failed on worker %d (%s); resubmitting", seq, flight.worker, _short(exc))
        self.retry_queue.append((flight.batch, flight.attempts + 1))

    def acknowledge(self, seq: int, flight: "_Flight", result) -> None:
        """The batch is committed: acknowledge it at the source (a checkpointed run: once a checkpoint holds it)
        and report what it did."""
        if self.gate is None:
            self.source.ack(flight.batch)
            self.released.append(seq)
        else:
            self.gate.hold(seq, flight.batch, flight.proc_ref)
        read_at = self.read_at.pop(seq, None)
        if read_at is not None:
            self.last_latency_s = max(0.0, time.time() - read_at)
        self.done_items += result.counted
        self.done_dead += result.dead_letters
        self.windows_closed += result.windows_closed
        self.alarms_fired += sum(1 for a in result.alarms if a.state != "resolved")
        if self.on_alarm is not None:
            for alarm in result.alarms:
                self.on_alarm(alarm)
        if self.on_progress is not None:
            self.on_progress(self.done_items, self.done_dead)

    def checkpoint(self, done: bool = False) -> None:
        """Save the whole aggregator with the position of the last batch it applied, then acknowledge at the source
        exactly the batches that checkpoint holds (``workers/acks.py``); with several aggregators, the batches every
        shard's checkpoint holds."""
        import ray

        gate = self.gate
        try:
            saved = self.aggregator.save_checkpoint(self.job, None, done, positions=gate.positions(self.flights),
                                                    refs=gate.refs(self.flights), run=self.run_token)
        except ray.exceptions.RayError as exc:  # e.g. the dead-letter sink failed publishing: its typed error, one line
            _raise_typed_cause(exc)
            raise
        if saved["died"]:
            for shard in saved["died"]:
                self.recover_aggregator(shard)  # the next checkpoint covers what this one would have
            return
        self.shard_through = saved["shards"]
        self.released += [seq for seq, _ in gate.covered(saved["through_seq"])]
        self._last_checkpoint = time.monotonic()

    def recover_aggregator(self, shard: int = 0) -> None:
        """Aggregator ``shard`` died and Ray restarts it: restore it from its last checkpoint, acknowledge what every
        shard's checkpoint holds, and commit everything after it again on that shard, in order, from the workers'
        results (the driver owns them, so they outlived the actor). The other shards keep what they applied."""
        from workers.shards import skipped_commit

        log.warning("aggregator %d died; restoring it from its checkpoint of %r and replaying", shard, self.job)
        cp = self.aggregator.restore(shard, self.run_token)
        through = int((cp or {}).get("through_seq", 0))
        others = [t for i, t in enumerate(self.shard_through) if i != shard]
        self.released = [seq for seq, _ in self.gate.covered(min([through, *others]))]
        for seq, held in self.gate.replay(through):
            del self.gate.held[seq]
            # the other shards applied it already: only this shard's commit is waited for
            done = {i: skipped_commit(seq) for i in range(self.aggregator.n) if i != shard}
            self.flights[seq] = _Flight(held.batch, -1, held.proc_ref, [None] * self.aggregator.n,
                                        time.perf_counter(), 1, done)
        for seq in sorted(self.flights):  # every commit the dead actor did not answer, in source order
            flight = self.flights[seq]
            if seq <= through and shard in flight.results:
                continue  # answered, and the restored state holds it
            # a batch it answered after its checkpoint is lost with it: applied again (and answered again)
            flight.results.pop(shard, None)
            flight.commit_ref[shard] = self.aggregator.commit(seq, flight.proc_ref, released=tuple(self.released),
                                                              read_at=self.read_at.get(seq), shards=[shard])[shard]
            self.released = []

    def status(self) -> "Status":
        """What the run has done so far (the periodic status line)."""
        now = time.monotonic()
        elapsed = max(now - self._last_status, 1e-9)
        done = self.done_items + self.done_dead
        return Status(items=self.done_items, dead_letters=self.done_dead, windows_closed=self.windows_closed,
                      alarms_fired=self.alarms_fired, items_per_s=(done - self._status_items) / elapsed,
                      in_flight=sum(len(f.batch) for f in self.flights.values()),
                      latency_s=self.last_latency_s, elapsed_s=time.perf_counter() - self._t_start)

    def _maybe_status(self) -> None:
        if self.on_status is None or self.status_every_s <= 0:
            return
        if time.monotonic() - self._last_status >= self.status_every_s:
            status = self.status()
            self._last_status = time.monotonic()
            self._status_items = self.done_items + self.done_dead
            self.on_status(status)

    # -- the end -------------------------------------------------------------------------------------------------

    def finish(self, stopped_by: str) -> None:
        """Everything read is committed and acknowledged: release the ledger, then flush the windows (or, for an
        interrupted batch job, keep them open in its checkpoint to be continued)."""
        if self.released:
            self.aggregator.release(tuple(self.released))
            self.released = []
        if self.job and stopped_by == "signal":
            self.on_phase("saving the checkpoint (the open windows continue on the next run)")
            self.checkpoint()
            return
        self.on_phase("flushing the open windows")
        final_alarms = self.aggregator.flush()
        if self.on_alarm is not None:
            for alarm in final_alarms:
                self.on_alarm(alarm)
        if self.job:
            self.checkpoint(done=True)
        if self.config.linger_s > 0:
            self.stop.wait(self.config.linger_s)

    def totals(self) -> dict[str, Any]:
        """The aggregator's counts for the whole run (or job, across resumptions)."""
        return self.aggregator.summary()

    def push(self, totals: dict[str, Any]) -> tuple[str | None, str | None]:
        """Push what the finished job did to the Pushgateway; (where to, None) or (None, why it failed)."""
        config = self.config
        if not config.pushgateway:
            return None, None
        try:
            _push_batch_result(config, totals, time.perf_counter() - self._t_start)
        except Exception as exc:  # the windows and history are written; report the failed push, do not lose them
            return None, redact_text(_short(exc))
        return redact_uri(config.pushgateway), None

    def summary(self, summary: dict[str, Any], stopped_by: str, pushed_to: str | None = None,
                push_error: str | None = None) -> RunSummary:
        dead_letters = dict(summary["dead_letters"])
        duplicates = int(dead_letters.pop("duplicate", 0))
        alarms = self.aggregator.recent_alarms(1000)
        self.aggregator.close()
        result = RunSummary(
            images=summary["images"], dead_letters=dead_letters, duplicates=duplicates, alarms=alarms,
            alarm_count=summary["alarms"], windows_closed=summary["windows_closed"], batches=summary["batches"],
            retries=self.retries, duplicate_batches=summary["duplicate_batches"],
            worker_failures=self.health.failures, elapsed_s=time.perf_counter() - self._t_start,
            stopped_by=stopped_by, streams=summary["streams"], nonconverged=summary["nonconverged"],
            metrics_address=self.metrics_address, checkpoint=self.source.checkpoint(),
            alarms_resolved=summary["alarms_resolved"], pushed_to=pushed_to, push_error=push_error,
            references=summary.get("references", {}), signal=self.signals[0] if self.signals else None,
            images_per_aggregator=list(summary.get("images_per_aggregator") or [summary["images"]]))
        for note in result.notices:
            log.warning("%s", note)
        return result

    def close(self) -> None:
        """Close the source and stop the actors (also after a failure)."""
        import ray

        if self.source is not None:
            self.source.close()
        for actor in [*self.workers, *(self.aggregator.actors if self.aggregator is not None else [])]:
            if actor is not None:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already gone
                    pass


def run_pipeline(config: PipelineConfig, *, stop: threading.Event | None = None,
                 on_alarm: Callable[[Alarm], None] | None = None,
                 on_progress: Callable[[int, int], None] | None = None,
                 on_started: Callable[[dict], None] | None = None,
                 hooks: dict[str, Callable] | None = None, handle_signals: bool = False) -> RunSummary:
    """Run the pipeline until the source ends or ``stop`` is set, flush every window and return the summary (see
    :class:`Pipeline` for the callbacks)."""
    return Pipeline(config, stop=stop, on_alarm=on_alarm, on_progress=on_progress, on_started=on_started,
                    hooks=hooks).run(handle_signals=handle_signals)


def _push_batch_result(config: PipelineConfig, summary: dict, elapsed_s: float) -> None:
    """Push what the finished job did (completion time, duration, counts) under job + run; never the monitor's
    alarm gauges, which a Pushgateway would serve, and Prometheus alert on, for ever after the job ended."""
    from monitor.metrics.batch import BatchResult, batch_result_registry
    from monitor.metrics.exporter import push_metrics

    result = BatchResult(finished_at=time.time(), duration_s=elapsed_s,
                         images={s: int(n) for s, n in summary["streams"].items()},
                         dead_letters={r: int(n) for r, n in summary["dead_letters"].items()},
                         windows_closed=int(summary["windows_closed"]), alarms=int(summary["alarms_fired"]))
    push_metrics(config.pushgateway, batch_result_registry(result), job=config.push_job,
                 grouping_key={"run": config.run_id})


def _open_source(config: PipelineConfig):
    """The run's source; a service that cannot be reached (Redis down, wrong host) is one ConfigError line."""
    from workers.sources import open_source

    try:
        return open_source(config.source, kind=config.kind, stream=config.stream)
    except Exception as exc:
        if not _unreachable(exc):
            raise
        raise ConfigError(f"cannot reach the source {redact_uri(config.source)}: {redact_text(_short(exc))}; check "
                          f"the address and that the service is running") from None


def _unreachable(exc: BaseException) -> bool:
    """Whether ``exc`` says a network service could not be reached (socket errors, redis-py connection errors)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    try:
        import redis.exceptions
    except ImportError:  # pragma: no cover - redis is a dependency
        return False
    return isinstance(exc, (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError))


def check_history_reference(ref: HistoryReference) -> None:
    """ConfigError unless ``ref.store`` is a history store holding images with window start in [start, end)."""
    from monitor.history.store import HistoryStore, NoDataError

    hist = HistoryStore.open(ref.store)  # ConfigError naming the location when there is no store
    try:
        hist.merged_window(stream=None, start=ref.start, end=ref.end)
    except NoDataError as exc:
        raise ConfigError(f"--reference history: {exc}; streams stored: {hist.streams() or 'none'} (check "
                          f"--reference-from/--reference-to)") from None


def _install_stop_handlers(stop: threading.Event, received: list[str] | None = None) -> dict:
    """SIGTERM/SIGINT set ``stop``: the driver stops reading, commits what is in flight and flushes. A second signal
    raises KeyboardInterrupt (leave now; what was not acknowledged is delivered again next time). The names of the
    signals received are appended to ``received``."""
    import sys

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        name = signal.Signals(signum).name
        if received is not None:
            received.append(name)
        print(f"splice-monitor: {name} received; committing what is in flight, then flushing (again to leave at "
              "once)", file=sys.stderr, flush=True)
        stop.set()

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _startup_get(refs: list, what: str) -> list:
    """Results of start-up calls. A SpliceError raised while an actor starts (unknown model, dimension mismatch,
    metrics port in use: a ConfigError) is raised again as itself, taken from Ray's typed cause; anything else is a
    PipelineError naming ``what``."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        _raise_typed_cause(exc)
        raise PipelineError(f"{what} failed to start: {_short(exc)}") from exc


def _raise_typed_cause(exc: BaseException) -> None:
    """Raise again, as itself, the SpliceError an actor raised inside ``exc`` (one line for the CLI instead of Ray's
    wrapper); return when there is none, for the caller to raise its own error."""
    cause = _typed_cause(exc)
    if isinstance(cause, SpliceError):
        raise cause from None


def _typed_cause(exc: BaseException) -> BaseException | None:
    """The exception an actor raised, from Ray's wrapper: a task error carries it as ``cause``; an actor that died
    in its constructor carries the task error that killed it (``ActorDiedError.cause``, an ``ActorDiedErrorContext``
    in some Ray versions, which is not an exception)."""
    import ray

    seen = 0
    while isinstance(exc, ray.exceptions.RayError) and seen < 4:
        cause = getattr(exc, "cause", None)
        if not isinstance(cause, BaseException):
            return None
        exc, seen = cause, seen + 1
    return exc


def _failed(ref) -> bool:
    """Whether the worker's call behind ``ref`` (a list: its parts, which fail together) failed."""
    import ray

    if isinstance(ref, list):
        ref = ref[0]
    try:
        ray.get(ref, timeout=0)
        return False
    except ray.exceptions.GetTimeoutError:
        return False
    except Exception:
        return True


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
