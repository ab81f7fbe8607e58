"""The pipeline driver: reads batches from a source, fans them out to Worker actors, commits each batch's partial on
the Aggregator exactly once, acknowledges the source after the commit, and flushes on the end of input or SIGTERM.

Backpressure: at most ``max_in_flight`` batches are read and not yet committed; the driver reads the next batch only
when one commits, so a slow model slows the reader instead of filling memory.
"""

from __future__ import annotations

from monitor.errors import PipelineError  # noqa: F401  (re-exported for callers of this module)
import logging
import re
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from monitor.errors import ConfigError, SpliceError
from monitor.records import Alarm
from monitor.uris import redact_text, redact_uri
from workers.core import WorkerConfig

__all__ = ["PipelineConfig", "RunSummary", "run_pipeline", "PipelineError"]

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class PipelineConfig:
    source: str
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    workers: int = 1
    gpus_per_worker: float | None = None  # None: 1 GPU per worker when the cluster has enough, else CPU
    cpus_per_worker: float = 1.0
    batch_size: int = 64
    max_in_flight: int = 0  # 0: 2 per worker
    monitor: dict[str, Any] = field(default_factory=dict)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # where the exporter binds: loopback locally, 0.0.0.0 (the chart) in a cluster
    history: str | None = None
    write_codes: bool = False
    dead_letter: str | None = None
    ray_address: str | None = None
    kind: str | None = None  # override the source's payload kind ("image" / "text")
    stream: str | None = None  # override the source's stream name
    max_restarts: int = -1  # worker actor restarts (-1: unlimited)
    max_attempts: int = 5  # tries per batch before the run fails
    read_timeout_s: float = 0.5
    checkpoint_job: str | None = None  # resumable batch job (backfill): checkpoint name in the history store
    restart: bool = False  # ignore the job's checkpoint
    checkpoint_every_s: float = 30.0
    linger_s: float = 0.0  # keep the exporter up this long after the end (so Prometheus can scrape the last state)
    reference_history: dict[str, Any] | None = None  # {"store", "start", "end"}: reference windows from history
    pushgateway: str | None = None  # push the final metrics to this Pushgateway when a finite source ends
    push_job: str = "splice-run"  # the Pushgateway job name
    push_run_id: str | None = None  # grouping label run=...; default: checkpoint_job, else derived from the source

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if self.max_in_flight < 0:
            raise ConfigError(f"max_in_flight must be >= 0, got {self.max_in_flight!r}")
        if self.checkpoint_job and not self.history:
            raise ConfigError("checkpoint_job needs a history store: pass history (--history DIR)")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.metrics_port is not None and not (0 <= self.metrics_port < 65536):
            raise ConfigError(f"metrics_port must be in 0..65535, got {self.metrics_port!r}")
        if self.pushgateway is not None and not re.match(r"^(https?://)?[^/\s]+(:\d+)?(/\S*)?$", self.pushgateway):
            raise ConfigError(f"pushgateway must be an address such as http://host:9091, got {self.pushgateway!r}")
        from workers.actors import monitor_config

        monitor_config(self.monitor)  # fail here, not inside the aggregator actor

    @property
    def in_flight_limit(self) -> int:
        return self.max_in_flight or 2 * self.workers

    @property
    def run_id(self) -> str:
        """The Pushgateway grouping label ``run``: stable per job, so a rerun replaces its own group."""
        if self.push_run_id:
            return self.push_run_id
        if self.checkpoint_job:
            return self.checkpoint_job
        import hashlib

        return f"run-{hashlib.sha256(self.source.encode()).hexdigest()[:12]}"


@dataclass
class RunSummary:
    images: int
    dead_letters: dict[str, int]
    alarms: list[Alarm]
    alarm_count: int
    windows_closed: int
    batches: int
    retries: int
    duplicate_batches: int
    worker_failures: int
    elapsed_s: float
    stopped_by: str  # "end" | "signal"
    streams: dict[str, int]
    nonconverged: int
    metrics_address: tuple[str, int] | None = None
    checkpoint: dict | None = None
    alarms_resolved: int = 0  # of alarm_count: resolutions; the rest fired
    pushed_to: str | None = None  # the Pushgateway the final metrics went to
    push_error: str | None = None  # why the push failed (the run itself completed)
    duplicates: int = 0  # items whose id was already counted (dead-lettered as "duplicate"; not in dead_letters)

    @property
    def dead_letters_total(self) -> int:
        return sum(self.dead_letters.values())

    @property
    def items_per_s(self) -> float:
        return (self.images + self.dead_letters_total + self.duplicates) / max(self.elapsed_s, 1e-9)

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "dead_letters": self.dead_letters,
            "dead_letters_total": self.dead_letters_total,
            "duplicates": self.duplicates,
            "alarms": self.alarm_count,
            "alarms_fired": self.alarm_count - self.alarms_resolved,
            "alarms_resolved": self.alarms_resolved,
            "windows_closed": self.windows_closed,
            "batches": self.batches,
            "retries": self.retries,
            "duplicate_batches": self.duplicate_batches,
            "worker_failures": self.worker_failures,
            "elapsed_s": round(self.elapsed_s, 3),
            "items_per_s": round(self.items_per_s, 2),
            "stopped_by": self.stopped_by,
            "streams": self.streams,
            "nonconverged": self.nonconverged,
        }

    def format(self) -> str:
        dl = ", ".join(f"{k}={v}" for k, v in sorted(self.dead_letters.items())) or "none"
        lines = [
            f"images counted: {self.images}",
            f"dead letters:   {self.dead_letters_total} ({dl})",
            f"duplicates:     {self.duplicates}",
            f"alarms:         {self.alarm_count - self.alarms_resolved} fired, {self.alarms_resolved} resolved",
            f"windows closed: {self.windows_closed}",
            f"batches:        {self.batches} (retried {self.retries}, worker failures {self.worker_failures})",
            f"elapsed:        {self.elapsed_s:.1f} s ({self.items_per_s:.1f} items/s), stopped by {self.stopped_by}",
        ]
        if self.pushed_to:
            lines.append(f"pushed:         final metrics to {self.pushed_to}")
        if self.push_error:
            lines.append(f"push failed:    {self.push_error}")
        return "\n".join(lines)


@dataclass
class _Flight:
    batch: Any
    worker: int
    proc_ref: Any
    commit_ref: Any
    submitted: float
    attempts: int = 1


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


def run_pipeline(
    config: PipelineConfig,
    *,
    stop: threading.Event | None = None,
    on_alarm: Callable[[Alarm], None] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    on_started: Callable[[dict], None] | None = None,
    hooks: dict[str, Callable] | None = None,
    handle_signals: bool = False,
) -> RunSummary:
    """Run the pipeline until the source ends or ``stop`` is set, then flush every window and return the summary.

    ``on_progress(items_done, dead_letters)`` is called after each commit (counts of this run);
    ``on_started(info)`` once the workers are ready; ``handle_signals``: SIGTERM/SIGINT set ``stop`` (installed after
    Ray starts, since Ray's driver installs its own SIGTERM handler that exits at once; restored at the end);
    ``hooks`` is for tests (``actors(workers, aggregator)`` once, ``after_submit(seq, workers)`` per batch). With
    ``config.checkpoint_job`` the run resumes from, and periodically saves, a checkpoint in the history store.
    """
    import ray

    from workers.actors import AggregatorConfig, aggregator_actor_class, worker_actor_class
    from workers.sources import open_source

    stop = stop or threading.Event()
    hooks = hooks or {}
    t_start = time.perf_counter()
    if config.reference_history:
        check_history_reference(**config.reference_history)  # a clear error before Ray and the models start
    started_ray = _ensure_ray(config.ray_address)
    previous_handlers = _install_stop_handlers(stop) if handle_signals else {}
    source = open_source(config.source, kind=config.kind, stream=config.stream)
    if config.checkpoint_job and not hasattr(source, "resume"):
        source.close()
        raise ConfigError(f"checkpointed (resumable) runs need a file source (Parquet/Arrow or a directory); "
                          f"{redact_uri(config.source)!r} is not one")
    workers: list[Any] = []
    aggregator = None
    try:
        gpus = _gpus_per_worker(config)
        wcfg = config.worker
        if gpus > 0 and not wcfg.device:
            wcfg = replace(wcfg, device="cuda")
        WorkerActor = worker_actor_class(num_cpus=config.cpus_per_worker, num_gpus=gpus,
                                         max_restarts=config.max_restarts)
        # all workers load at once; a dictionary missing from the cache is built by each (one core each) and
        # written atomically, which costs no more wall time than building it once and then loading it
        workers = [WorkerActor.remote(wcfg) for _ in range(config.workers)]
        infos = _startup_get([w.info.remote() for w in workers], "a worker actor")
        spaces = {i["concept_space"] for i in infos}
        if len(spaces) != 1:
            raise PipelineError(f"workers disagree on the concept space: {sorted(spaces)}")
        pids = [i["pid"] for i in infos]
        Aggregator = aggregator_actor_class()
        aggregator = Aggregator.remote(
            AggregatorConfig(monitor=dict(config.monitor), metrics_port=config.metrics_port,
                             history=config.history, write_codes=config.write_codes, dead_letter=config.dead_letter,
                             metrics_host=config.metrics_host, encoder=str(infos[0].get("encoder") or ""),
                             reference_history=config.reference_history),
            infos[0]["concept_names"], infos[0]["concept_space"])
        metrics_address = _startup_get([aggregator.metrics_address.remote()], "the aggregator actor")[0]
        if "actors" in hooks:
            hooks["actors"](workers, aggregator)
        job = config.checkpoint_job
        resumed = ray.get(aggregator.load_checkpoint.remote(job, config.restart)) if job else None
        if resumed and resumed.get("source") is not None:
            source.resume(resumed["source"])
        if on_started is not None:
            on_started({"workers": len(workers), "gpus_per_worker": gpus, "metrics_address": metrics_address,
                        "concept_space": infos[0]["concept_space"], "n_concepts": len(infos[0]["concept_names"]),
                        "encoder": infos[0]["encoder"],
                        "resumed_from": None if not resumed else resumed.get("source"),
                        "resumed_done": bool(resumed and resumed.get("done")),
                        "resumed_items": 0 if not resumed else
                        int(resumed.get("images", 0)) + sum((resumed.get("dead_letters") or {}).values())})
        last_checkpoint = time.monotonic()

        flights: dict[int, _Flight] = {}
        retry_queue: deque[tuple[Any, int]] = deque()  # (batch, attempts) waiting for a healthy worker
        health = _WorkerHealth(workers, pids)
        load = Counter({i: 0 for i in range(len(workers))})
        released: list[int] = []
        retries = 0
        read_at: dict[int, float] = {}  # wall time each in-flight batch was read (kept across resubmissions)
        done_items = 0
        done_dead = 0
        exhausted = False
        limit = config.in_flight_limit

        def submit(batch, attempts: int, w: int) -> None:
            nonlocal released
            proc_ref = workers[w].process.remote(batch.items)
            commit_ref = aggregator.commit.remote(batch.seq, proc_ref, released=tuple(released),
                                                  queue_depth=sum(len(f.batch) for f in flights.values()),
                                                  read_at=read_at.setdefault(batch.seq, time.time()))
            released = []
            load[w] += 1
            flights[batch.seq] = _Flight(batch, w, proc_ref, commit_ref, time.perf_counter(), attempts)
            if "after_submit" in hooks:
                hooks["after_submit"](batch.seq, workers)

        def pick() -> int | None:
            healthy = health.healthy()
            return min(healthy, key=lambda i: (load[i], i)) if healthy else None

        while True:
            health.poll()
            while retry_queue and (w := pick()) is not None:
                batch, attempts = retry_queue.popleft()
                submit(batch, attempts, w)
            # a checkpoint needs a quiet moment: stop reading until everything in flight is committed
            checkpoint_due = bool(job) and time.monotonic() - last_checkpoint >= config.checkpoint_every_s
            if checkpoint_due and not flights and not retry_queue:
                ray.get(aggregator.save_checkpoint.remote(job, source.checkpoint()))
                last_checkpoint = time.monotonic()
                checkpoint_due = False
            reading = not exhausted and not stop.is_set() and not checkpoint_due
            while reading and len(flights) + len(retry_queue) < limit and (w := pick()) is not None:
                batch = source.read(config.batch_size, timeout_s=0.0 if flights else config.read_timeout_s)
                if batch is None:
                    exhausted = True
                    break
                if not batch.items:
                    break
                submit(batch, 1, w)
                if stop.is_set():
                    break
            if not flights and not retry_queue:
                if exhausted or stop.is_set():
                    break
                continue  # (also after a checkpoint, to read again)
            if not flights:  # everything waits for a worker to come back
                time.sleep(0.2)
                continue
            ready, _ = ray.wait([f.commit_ref for f in flights.values()], num_returns=1, timeout=0.5)
            for ref in ready:
                seq = next(s for s, f in flights.items() if f.commit_ref == ref)
                flight = flights.pop(seq)
                load[flight.worker] -= 1
                try:
                    result = ray.get(ref)
                except Exception as exc:  # the worker (or the aggregator) failed on this batch
                    if not _failed(flight.proc_ref):
                        cause = getattr(exc, "cause", None)  # the typed error raised inside the aggregator
                        if isinstance(cause, SpliceError):
                            raise cause from None
                        raise PipelineError(f"the aggregator failed committing batch {seq}: {_short(exc)}") from exc
                    if flight.attempts >= config.max_attempts:
                        raise PipelineError(f"batch {seq} failed {flight.attempts} times; last error: "
                                            f"{_short(exc)}") from exc
                    retries += 1
                    health.failed(flight.worker)
                    log.warning("batch %d failed on worker %d (%s); resubmitting", seq, flight.worker, _short(exc))
                    retry_queue.append((flight.batch, flight.attempts + 1))
                    continue
                source.ack(flight.batch)
                released.append(seq)
                read_at.pop(seq, None)
                done_items += result.counted
                done_dead += result.dead_letters
                if on_alarm is not None:
                    for alarm in result.alarms:
                        on_alarm(alarm)
                if on_progress is not None:
                    on_progress(done_items, done_dead)
        # everything read is committed and acknowledged
        stopped_by = "signal" if stop.is_set() and not exhausted else "end"
        if released:
            ray.get(aggregator.release.remote(tuple(released)))
        if job and stopped_by == "signal":
            # an interrupted batch job keeps its windows open in the checkpoint, to be continued, not flushed
            ray.get(aggregator.save_checkpoint.remote(job, source.checkpoint()))
        else:
            final_alarms = ray.get(aggregator.flush.remote())
            if on_alarm is not None:
                for alarm in final_alarms:
                    on_alarm(alarm)
            if job:
                ray.get(aggregator.save_checkpoint.remote(job, source.checkpoint(), True))
            if config.linger_s > 0:
                stop.wait(config.linger_s)
        pushed_to = push_error = None
        summary = ray.get(aggregator.summary.remote())
        if config.pushgateway and stopped_by == "end":
            try:
                _push_batch_result(config, summary, time.perf_counter() - t_start)
                pushed_to = redact_uri(config.pushgateway)
            except Exception as exc:  # the windows and history are written; report the failed push, do not lose them
                push_error = redact_text(_short(exc))
        dead_letters = dict(summary["dead_letters"])
        duplicates = int(dead_letters.pop("duplicate", 0))
        alarms = ray.get(aggregator.recent_alarms.remote(1000))
        ray.get(aggregator.close.remote())
        return RunSummary(
            images=summary["images"],
            dead_letters=dead_letters,
            duplicates=duplicates,
            alarms=alarms,
            alarm_count=summary["alarms"],
            windows_closed=summary["windows_closed"],
            batches=summary["batches"],
            retries=retries,
            duplicate_batches=summary["duplicate_batches"],
            worker_failures=health.failures,
            elapsed_s=time.perf_counter() - t_start,
            stopped_by=stopped_by,
            streams=summary["streams"],
            nonconverged=summary["nonconverged"],
            metrics_address=metrics_address,
            checkpoint=source.checkpoint(),
            alarms_resolved=summary["alarms_resolved"],
            pushed_to=pushed_to,
            push_error=push_error,
        )
    finally:
        for signum, handler in previous_handlers.items():
            signal.signal(signum, handler)
        source.close()
        for actor in [*workers, aggregator]:
            if actor is not None:
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # already gone
                    pass
        if started_ray:
            ray.shutdown()


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


def check_history_reference(store: str, start: float, end: float) -> None:
    """ConfigError unless ``store`` is a history store holding images with window start in [start, end)."""
    from monitor.history.store import HistoryStore, NoDataError

    hist = HistoryStore.open(store)  # ConfigError naming the location when there is no store
    try:
        hist.merged_window(stream=None, start=start, end=end)
    except NoDataError as exc:
        raise ConfigError(f"--reference history: {exc}; streams stored: {hist.streams() or 'none'} (check "
                          f"--reference-from/--reference-to)") from None


def _install_stop_handlers(stop: threading.Event) -> dict:
    """SIGTERM/SIGINT set ``stop``: the driver stops reading, commits what is in flight and flushes. A second signal
    raises KeyboardInterrupt (leave now; what was not acknowledged is delivered again next time)."""
    import sys

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        print(f"splice-monitor: {signal.Signals(signum).name} received; committing what is in flight, then "
              "flushing", file=sys.stderr, flush=True)
        stop.set()

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.getsignal(signum)
        signal.signal(signum, handler)
    return previous


def _startup_get(refs: list, what: str) -> list:
    """Results of start-up calls; a ConfigError raised while an actor starts (unknown model, dimension mismatch,
    metrics port in use, ...) comes back as a ConfigError, anything else as a PipelineError naming ``what``."""
    import ray

    try:
        return ray.get(refs)
    except ray.exceptions.RayError as exc:
        text = str(exc)
        marker = "ConfigError: "
        if marker in text:
            raise ConfigError(text[text.rindex(marker) + len(marker):].strip().splitlines()[0]) from None
        raise PipelineError(f"{what} failed to start: {_short(exc)}") from exc


def _failed(ref) -> bool:
    import ray

    try:
        ray.get(ref, timeout=0)
        return False
    except ray.exceptions.GetTimeoutError:
        return False
    except Exception:
        return True


class _WorkerHealth:
    """Which worker actors can take work. A worker whose batch failed is pinged until it answers again (Ray is
    restarting it and reloading its model meanwhile) and gets no new batches until then."""

    def __init__(self, workers: list[Any], pids: list[int]) -> None:
        self.workers = workers
        self.pids = list(pids)
        self.down: dict[int, tuple[Any, float]] = {}  # worker -> (ping ref or None, time of the next ping)
        self.dead: set[int] = set()
        self.failures = 0  # times a healthy worker failed a batch (a crash; Ray restarts it)

    def failed(self, idx: int) -> None:
        if idx not in self.down and idx not in self.dead:
            self.down[idx] = (None, 0.0)
            self.failures += 1

    def healthy(self) -> list[int]:
        return [i for i in range(len(self.workers)) if i not in self.down and i not in self.dead]

    def poll(self) -> None:
        import ray

        now = time.monotonic()
        for idx, (ref, next_at) in list(self.down.items()):
            if ref is None:
                if now >= next_at:
                    self.down[idx] = (self.workers[idx].pid.remote(), now)
                continue
            done, _ = ray.wait([ref], timeout=0)
            if not done:
                continue
            try:
                pid = ray.get(ref)
            except ray.exceptions.ActorDiedError:
                self.dead.add(idx)  # out of restarts
                del self.down[idx]
                continue
            except ray.exceptions.RayError:  # still restarting: ask again shortly
                self.down[idx] = (None, now + 0.5)
                continue
            if pid != self.pids[idx]:
                log.warning("worker %d is back as process %s (was %s)", idx, pid, self.pids[idx])
                self.pids[idx] = pid
            del self.down[idx]
        if len(self.dead) == len(self.workers):
            raise PipelineError("every worker actor died and is out of restarts (see --workers, max_restarts)")


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[-1] if text else ''}"[:300]
