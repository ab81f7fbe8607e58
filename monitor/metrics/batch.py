"""What a finished batch job (``run`` on a finite source, ``backfill``) pushes to a Pushgateway: when it last
succeeded, how long it took and what it counted. Never alarm state: a pushed group is served until someone
deletes it, so a pushed "alarm firing" gauge would keep an alert firing for ever after the job ended.

>>> reg = batch_result_registry(BatchResult(finished_at=1.7e9, duration_s=12.5, images={"cam": 90},
...                                         dead_letters={"truncated": 2}, windows_closed=2, alarms=1))
>>> reg.get_sample_value("splice_batch_images", {"stream": "cam"})
90.0
>>> reg.get_sample_value("splice_batch_last_success_timestamp_seconds")
1700000000.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Mapping

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import CollectorRegistry

from monitor.errors import ConfigError
from monitor.metrics.families import MetricSpec

__all__ = ["BATCH_METRICS", "BatchResult", "batch_result_registry"]

# Gauges, not counters: each push replaces the group with this run's totals, and a rerun of the same job id replaces
# it again; rate() over a pushed value would be meaningless.
BATCH_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("splice_batch_last_success_timestamp_seconds", "gauge", (), "seconds",
               "Unix time the batch job last finished its source (pushed only on success)."),
    MetricSpec("splice_batch_duration_seconds", "gauge", (), "seconds",
               "Wall time of the batch job's last successful run."),
    MetricSpec("splice_batch_images", "gauge", ("stream",), "images",
               "Images counted by the last successful run, per stream."),
    MetricSpec("splice_batch_dead_letters", "gauge", ("reason",), "items",
               "Items dead-lettered by the last successful run, by reason code."),
    MetricSpec("splice_batch_windows_closed", "gauge", (), "windows",
               "Monitor windows the last successful run closed (and wrote to history)."),
    MetricSpec("splice_batch_alarms", "gauge", (), "alarms",
               "Alarms the last successful run raised in total: a result count, not alarm state (see the history "
               "store for which ones)."),
)


@dataclass(frozen=True)
class BatchResult:
    """The totals of one finished batch job."""

    finished_at: float
    duration_s: float
    images: Mapping[str, int] = field(default_factory=dict)
    dead_letters: Mapping[str, int] = field(default_factory=dict)
    windows_closed: int = 0
    alarms: int = 0

    def __post_init__(self) -> None:
        for name in ("finished_at", "duration_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ConfigError(f"BatchResult.{name} must be a finite number >= 0, got {v!r}")
        for name in ("windows_closed", "alarms"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"BatchResult.{name} must be an integer >= 0, got {v!r}")


class _BatchCollector:
    def __init__(self, result: BatchResult) -> None:
        self.result = result

    def collect(self):
        r = self.result
        values = {
            "splice_batch_last_success_timestamp_seconds": [([], r.finished_at)],
            "splice_batch_duration_seconds": [([], r.duration_s)],
            "splice_batch_images": [([s], n) for s, n in sorted(r.images.items())],
            "splice_batch_dead_letters": [([k], n) for k, n in sorted(r.dead_letters.items())],
            "splice_batch_windows_closed": [([], r.windows_closed)],
            "splice_batch_alarms": [([], r.alarms)],
        }
        for spec in BATCH_METRICS:
            fam = GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
            for labels, v in values[spec.name]:
                fam.add_metric(labels, float(v))
            yield fam


def batch_result_registry(result: BatchResult) -> CollectorRegistry:
    """A fresh registry holding only ``result``'s completion metrics: the thing to push at the end of a batch job."""
    registry = CollectorRegistry()
    registry.register(_BatchCollector(result))
    return registry
