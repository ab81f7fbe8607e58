"""The pipeline's configuration as typed, frozen objects: what the driver runs (:class:`PipelineConfig`), the history
period a reference is read from (:class:`HistoryReference`), and what the aggregator actor owns
(:class:`AggregatorConfig`).

Every entry point builds these once (the command line through ``workers.cli.settings``; the benchmarks and tests
directly) and hands the objects down unchanged to the driver and the actors: the worker's ``WorkerConfig`` and the
library's ``monitor.drift.MonitorConfig`` travel as they are, never as dicts rebuilt on the way.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field

from monitor.drift.monitor import MonitorConfig
from monitor.errors import ConfigError
from workers.core import WorkerConfig

__all__ = ["HistoryReference", "PipelineConfig", "AggregatorConfig"]


@dataclass(frozen=True)
class HistoryReference:
    """``--reference history``: every stream is compared with its own windows stored in ``store`` with a window start
    in [``start``, ``end``) (unix seconds); a stream the store does not hold, with all stored streams merged."""

    store: str
    start: float
    end: float

    def __post_init__(self) -> None:
        if not self.store:
            raise ConfigError("the history reference needs a store (--reference-store DIR or --history DIR)")
        if not self.start < self.end:
            raise ConfigError(f"the history reference period must start before it ends, got start={self.start!r} "
                              f"end={self.end!r} (--reference-from/--reference-to)")


@dataclass(frozen=True)
class PipelineConfig:
    """One pipeline run: the source, how workers decompose (``worker``), how the aggregator windows and tests
    (``monitor``), where results go, and how Ray places the actors."""

    source: str
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    workers: int = 1
    aggregators: int = 1  # aggregator actors; streams are hashed onto them (workers/shards.py)
    gpus_per_worker: float | None = None  # None: 1 GPU per worker when the cluster has enough, else CPU
    cpus_per_worker: float = 1.0
    batch_size: int = 64
    max_in_flight: int = 0  # 0: 2 per worker
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
    worker_wait_s: float = 300.0  # every worker down this long (cannot be placed again): the run fails
    read_timeout_s: float = 0.5
    checkpoint_job: str | None = None  # resumable batch job (backfill): checkpoint name in the history store
    restart: bool = False  # ignore the job's checkpoint
    checkpoint_every_s: float = 30.0
    linger_s: float = 0.0  # keep the exporter up this long after the end (so Prometheus can scrape the last state)
    reference_history: HistoryReference | None = None
    pushgateway: str | None = None  # push the final metrics to this Pushgateway when a finite source ends
    push_job: str = "splice-run"  # the Pushgateway job name
    push_run_id: str | None = None  # grouping label run=...; default: checkpoint_job, else derived from the source

    def __post_init__(self) -> None:
        if not isinstance(self.worker, WorkerConfig):
            raise ConfigError(f"worker must be a WorkerConfig, got {type(self.worker).__name__}")
        if not isinstance(self.monitor, MonitorConfig):
            raise ConfigError(f"monitor must be a MonitorConfig (monitor.drift), got {type(self.monitor).__name__}")
        if self.reference_history is not None and not isinstance(self.reference_history, HistoryReference):
            raise ConfigError(f"reference_history must be a HistoryReference, got "
                              f"{type(self.reference_history).__name__}")
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {self.workers!r}")
        if not isinstance(self.aggregators, int) or self.aggregators < 1:
            raise ConfigError(f"aggregators must be an integer >= 1, got {self.aggregators!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not self.worker_wait_s > 0:
            raise ConfigError(f"worker_wait_s must be > 0 seconds, got {self.worker_wait_s!r}")
        if self.max_in_flight < 0:
            raise ConfigError(f"max_in_flight must be >= 0, got {self.max_in_flight!r}")
        if self.cpus_per_worker < 0:
            raise ConfigError(f"cpus_per_worker must be >= 0, got {self.cpus_per_worker!r}")
        if self.checkpoint_job and not self.history:
            raise ConfigError("checkpoint_job needs a history store: pass history (--history DIR)")
        if self.gpus_per_worker is not None and self.gpus_per_worker < 0:
            raise ConfigError(f"gpus_per_worker must be >= 0, got {self.gpus_per_worker!r}")
        if self.metrics_port is not None and not (0 <= self.metrics_port < 65536):
            raise ConfigError(f"metrics_port must be in 0..65535, got {self.metrics_port!r}")
        if self.pushgateway is not None and not re.match(r"^(https?://)?[^/\s]+(:\d+)?(/\S*)?$", self.pushgateway):
            raise ConfigError(f"pushgateway must be an address such as http://host:9091, got {self.pushgateway!r}")

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
        return f"run-{hashlib.sha256(self.source.encode()).hexdigest()[:12]}"

    def aggregator_config(self, encoder: str = "", shard: int = 0) -> "AggregatorConfig":
        """What aggregator actor ``shard`` (of ``aggregators``) is made with; ``encoder``: the workers' encoder id
        (for splice_build_info). Shard i serves metrics on ``metrics_port + i`` (0: each a free port)."""
        if not 0 <= shard < self.aggregators:
            raise ConfigError(f"shard must be in 0..{self.aggregators - 1}, got {shard!r}")
        port = self.metrics_port
        if port:
            port += shard
            if port > 65535:
                raise ConfigError(f"metrics_port {self.metrics_port} + {self.aggregators - 1} aggregators runs past "
                                  f"port 65535: choose a lower --metrics-port")
        return AggregatorConfig(encoder=encoder, monitor=self.monitor, metrics_port=port, history=self.history,
                                metrics_host=self.metrics_host, write_codes=self.write_codes,
                                dead_letter=self.dead_letter, reference_history=self.reference_history,
                                shard=(shard, self.aggregators))


@dataclass(frozen=True)
class AggregatorConfig:
    """What the aggregator owns besides the commit ledger: the monitor, exporter port, history and dead letters."""

    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"  # the chart passes 0.0.0.0 (--metrics-host); a laptop run exposes nothing
    encoder: str = ""  # for splice_build_info
    history: str | None = None
    write_codes: bool = False
    dead_letter: str | None = None
    keep_alarms: int = 1000
    reference_history: HistoryReference | None = None
    recent_ids: int = 65_536  # ids of acknowledged batches remembered to catch repeated ids (bounded memory)
    shard: tuple[int, int] = (0, 1)  # (index, count): this aggregator owns the streams hashed onto index

    def __post_init__(self) -> None:
        if not isinstance(self.monitor, MonitorConfig):
            raise ConfigError(f"monitor must be a MonitorConfig (monitor.drift), got {type(self.monitor).__name__}")
        index, count = self.shard
        if not (isinstance(count, int) and count >= 1 and isinstance(index, int) and 0 <= index < count):
            raise ConfigError(f"shard must be (index, count) with 0 <= index < count, got {self.shard!r}")
