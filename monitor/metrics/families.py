"""Prometheus metric families of splice-monitor: one ``MonitorMetrics`` object holds the per-stream state the
pipeline and the drift monitor feed, and a custom collector turns it into bounded metric families on each scrape.

Every metric name lives in :data:`METRICS` (name, type, labels, unit, meaning); docs/metrics.md, the rules and the
dashboards use those names and nothing else.

Size: one collector and the state it reads; the table of names, the per-stream state, its updates, its save/load and
the scrape change together whenever a metric is added, so they stay in one module.

>>> from prometheus_client import CollectorRegistry
>>> from monitor.records import SparseCodes
>>> import numpy as np
>>> reg = CollectorRegistry()
>>> m = MonitorMetrics(["cat", "dog", "snow"], registry=reg)
>>> codes = SparseCodes.from_dense(np.array([[0.5, 0, 0.2], [0, 0, 0.1]]), fidelity=[0.9, 0.8], l1=0.25)
>>> m.observe_batch("camera-7", codes, latency_s=0.02)
>>> reg.get_sample_value("splice_images_total", {"stream": "camera-7"})
2.0
>>> reg.get_sample_value("splice_concept_presence_total", {"stream": "camera-7", "concept": "snow"})
2.0
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import REGISTRY, CollectorRegistry
from prometheus_client.utils import floatToGoString

from monitor.errors import DEAD_LETTER_REASONS, ConfigError
from monitor.records import Alarm, SparseCodes, WindowSummary
from monitor.drift.monitor import DEFAULT_MAX_STREAMS

__all__ = [
    "ALARM_KINDS",
    "FIDELITY_BUCKETS",
    "L0_BUCKETS",
    "LATENCY_BUCKETS",
    "METRICS",
    "MetricSpec",
    "MonitorMetrics",
    "OVER_LIMIT_STREAM",
]

ALARM_KINDS: tuple[str, ...] = ("prevalence", "activation", "stream", "embedding")
WINDOWS: tuple[str, ...] = ("reference", "current")
OVER_LIMIT_STREAM = "_over_limit"  # the one stream label of dead letters of streams refused by max_streams

# Cosine of the recomposed embedding; SpLiCE on real CLIP sits around 0.5-0.9, so the buckets are dense there.
FIDELITY_BUCKETS: tuple[float, ...] = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0)
L0_BUCKETS: tuple[float, ...] = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256)
LATENCY_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric family as documented in docs/metrics.md."""

    name: str  # as it appears in PromQL (counters with _total, histograms without suffix)
    type: str  # counter | gauge | histogram
    labels: tuple[str, ...]
    unit: str
    help: str


METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("splice_images_total", "counter", ("stream",), "images",
               "Images (or captions) decomposed, per stream."),
    MetricSpec("splice_concept_presence_total", "counter", ("stream", "concept"), "images",
               "Images in which the concept is active (weight > 0); exported concepts only."),
    MetricSpec("splice_concept_weight_total", "counter", ("stream", "concept"), "weight",
               "Sum of the concept's SpLiCE weights over all images; exported concepts only."),
    MetricSpec("splice_dead_letters_total", "counter", ("stream", "reason"), "items",
               "Items dead-lettered, by closed reason code (monitor.errors.DEAD_LETTER_REASONS)."),
    MetricSpec("splice_solver_nonconverged_total", "counter", ("stream",), "images",
               "Decompositions that stopped before reaching the solver tolerance."),
    MetricSpec("splice_fidelity_cosine", "histogram", ("stream",), "cosine",
               "Reconstruction cosine cos(recomposed, input) per image."),
    MetricSpec("splice_l0_concepts", "histogram", ("stream",), "concepts",
               "Active concepts (l0 norm of the code) per image."),
    MetricSpec("splice_batch_latency_seconds", "histogram", ("stream",), "seconds",
               "Wall time to process one batch (decode to decomposition)."),
    MetricSpec("splice_queue_items", "gauge", (), "items",
               "Items waiting in the pipeline's input queue."),
    MetricSpec("splice_concept_prevalence_ratio", "gauge", ("stream", "concept", "window"), "ratio",
               "Fraction of the monitor's window images with the concept active; window is reference or current."),
    MetricSpec("splice_concept_mean_activation", "gauge", ("stream", "concept", "window"), "weight",
               "Mean concept weight over the monitor's window images (zeros included)."),
    MetricSpec("splice_concept_drift_score", "gauge", ("stream", "concept"), "score",
               "The drift monitor's per-concept score for the latest window (larger is more drift); the top-K "
               "drifting concepts are always exported, so topk() over this gauge is the top-K list."),
    MetricSpec("splice_concept_alarm_firing", "gauge", ("stream", "concept"), "boolean",
               "1 while a concept-level alarm (prevalence or activation) is firing for the concept, else 0."),
    MetricSpec("splice_stream_drift_score", "gauge", ("stream",), "score",
               "The drift monitor's stream-level score for the latest window."),
    MetricSpec("splice_alarms_firing", "gauge", ("stream", "kind"), "alarms",
               "Alarms firing in the latest window, by kind (prevalence, activation, stream, embedding)."),
    MetricSpec("splice_alarm_fired_timestamp_seconds", "gauge", ("stream", "kind"), "seconds",
               "Event time of the batch in which the newest firing alarm of that kind crossed its threshold."),
    MetricSpec("splice_alarm_fired_offset_items", "gauge", ("stream", "kind"), "items",
               "Stream offset (items seen, reference included) just past the batch in which the newest firing alarm "
               "of that kind crossed its threshold."),
    MetricSpec("splice_window_images", "gauge", ("stream", "window"), "images",
               "Images in the monitor's reference or current window."),
    MetricSpec("splice_window_fidelity_mean", "gauge", ("stream", "window"), "cosine",
               "Mean reconstruction cosine over the monitor's reference or current window."),
    MetricSpec("splice_window_end_timestamp_seconds", "gauge", ("stream",), "seconds",
               "Unix time at which the latest closed window ends."),
    MetricSpec("splice_reference_timestamp_seconds", "gauge", ("stream",), "seconds",
               "Unix time the stream's reference was built; age = time() - this."),
    MetricSpec("splice_reference_fill_ratio", "gauge", ("stream",), "ratio",
               "How far the stream's reference is built (1 = complete); below 1 no drift test can run."),
    MetricSpec("splice_exported_concepts", "gauge", ("stream",), "concepts",
               "Concepts currently exported with per-concept series for the stream (bounded)."),
    MetricSpec("splice_dictionary_concepts", "gauge", (), "concepts",
               "Concepts in the dictionary (the size of the concept space)."),
)


class _StreamState:
    """Cumulative counters and latest-window gauges of one stream, dense over the concept space."""

    def __init__(self, n_concepts: int, n_fid: int, n_l0: int, n_lat: int) -> None:
        self.images = 0
        self.presence = np.zeros(n_concepts, dtype=np.int64)
        self.weight = np.zeros(n_concepts, dtype=np.float64)
        # histogram buckets are stored non-cumulative, with one extra overflow slot for +Inf
        self.fid_buckets = np.zeros(n_fid + 1, dtype=np.int64)
        self.fid_sum = 0.0
        self.l0_buckets = np.zeros(n_l0 + 1, dtype=np.int64)
        self.l0_sum = 0.0
        self.lat_buckets = np.zeros(n_lat + 1, dtype=np.int64)
        self.lat_sum = 0.0
        self.dead = dict.fromkeys(DEAD_LETTER_REASONS, 0)
        self.nonconverged = 0
        # latest window (None until the monitor has closed one)
        self.cur_prev: np.ndarray | None = None
        self.cur_mean: np.ndarray | None = None
        self.ref_prev: np.ndarray | None = None
        self.ref_mean: np.ndarray | None = None
        self.cur_n: int | None = None
        self.ref_n: int | None = None
        self.cur_fid: float | None = None
        self.ref_fid: float | None = None
        self.window_end: float | None = None
        self.scores: np.ndarray | None = None
        self.drift_score: float | None = None
        self.alarmed: set[int] = set()
        self.active: dict[tuple[str, str, int], Alarm] = {}  # (kind, direction, concept id or -1) -> alarm
        self.alarm_counts = dict.fromkeys(ALARM_KINDS, 0)
        self.top: list[tuple[int, float]] = []
        self.exported: np.ndarray | None = None  # sorted concept ids; None = not chosen yet
        self.reference_time: float | None = None
        self.reference_fill: float | None = None


class MonitorMetrics:
    """Per-stream metric state fed by the pipeline and the drift monitor, exported by a custom collector.

    Counters (images, per-concept presence and weight sums, dead letters, non-convergence, histograms) accumulate
    over the whole concept space in memory, so a concept entering the exported set shows its true cumulative count;
    only the exported set becomes series. Gauges hold the drift monitor's latest window.

    The exported concept set of a stream holds at most ``max_concepts_per_stream`` concepts, chosen in this
    order: concepts with a firing concept alarm, the ``top_k`` drifting concepts, then the concepts most prevalent
    in the reference or the current window (incumbents are favoured by ``hysteresis`` so the set does not churn).
    Before the first window it is the most prevalent concepts seen so far. Memory is O(streams x concepts).

    ``observe_batch`` does not read ``codes.converged``: callers report non-convergence with
    ``observe_nonconverged`` so it is counted once.

    ``registry`` defaults to prometheus_client's global REGISTRY, like client_python's own metrics; pass a fresh
    ``CollectorRegistry`` (tests, several monitors in one process) or None to register nothing. All methods are
    thread-safe; ``state_dict``/``load_state_dict`` carry the whole state across an actor restart.
    """

    def __init__(
        self,
        concept_names: Sequence[str],
        *,
        registry: CollectorRegistry | None = REGISTRY,
        max_concepts_per_stream: int = 200,
        top_k: int = 10,
        max_streams: int = DEFAULT_MAX_STREAMS,
        hysteresis: float = 1.25,
        fidelity_buckets: Sequence[float] = FIDELITY_BUCKETS,
        l0_buckets: Sequence[float] = L0_BUCKETS,
        latency_buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        names = [str(n) for n in concept_names]
        if not names:
            raise ConfigError("concept_names must hold at least one concept name, got an empty list")
        if len(set(names)) != len(names):
            dups = sorted(n for n, k in Counter(names).items() if k > 1)
            raise ConfigError(
                f"concept_names must be unique (they become the 'concept' label), duplicates: {dups[:10]}"
            )
        for pname, value, lo in (
            ("max_concepts_per_stream", max_concepts_per_stream, 0),
            ("top_k", top_k, 0),
            ("max_streams", max_streams, 1),
        ):
            if not isinstance(value, (int, np.integer)) or value < lo:
                raise ConfigError(f"{pname} must be an integer >= {lo}, got {value!r}")
        if top_k > max_concepts_per_stream:
            raise ConfigError(
                f"top_k ({top_k}) must not exceed max_concepts_per_stream ({max_concepts_per_stream}): "
                "the top drifting concepts are part of the exported set"
            )
        if not (isinstance(hysteresis, (int, float)) and hysteresis >= 1.0):
            raise ConfigError(f"hysteresis must be a number >= 1.0, got {hysteresis!r}")
        self.concept_names: tuple[str, ...] = tuple(names)
        self.n_concepts = len(names)
        self.max_concepts_per_stream = int(max_concepts_per_stream)
        self.top_k = int(top_k)
        self.max_streams = int(max_streams)
        self.hysteresis = float(hysteresis)
        self._fid_b = _check_buckets("fidelity_buckets", fidelity_buckets)
        self._l0_b = _check_buckets("l0_buckets", l0_buckets)
        self._lat_b = _check_buckets("latency_buckets", latency_buckets)
        self._fid_le = [floatToGoString(b) for b in self._fid_b] + ["+Inf"]
        self._l0_le = [floatToGoString(b) for b in self._l0_b] + ["+Inf"]
        self._lat_le = [floatToGoString(b) for b in self._lat_b] + ["+Inf"]
        self._lock = threading.Lock()
        self._streams: dict[str, _StreamState] = {}
        self._queue_items = 0
        self._refused = dict.fromkeys(DEAD_LETTER_REASONS, 0)  # dead letters of streams beyond max_streams
        self.registry = registry
        if registry is not None:
            registry.register(self)

    # ------------------------------------------------------------------ pipeline side
    def observe_batch(self, stream: str, codes: SparseCodes, *, latency_s: float | None = None) -> None:
        """Count one decomposed batch: images, per-concept presence and weight sums, fidelity and l0."""
        if codes.n_concepts != self.n_concepts:
            raise ValueError(
                f"codes.n_concepts must equal the metrics' concept count {self.n_concepts}, got {codes.n_concepts}"
            )
        if latency_s is not None and not (math.isfinite(latency_s) and latency_s >= 0):
            raise ValueError(f"latency_s must be a finite number >= 0 or None, got {latency_s!r}")
        n = len(codes)
        presence = np.bincount(codes.indices, minlength=self.n_concepts)
        weight = np.bincount(codes.indices, weights=codes.values.astype(np.float64), minlength=self.n_concepts)
        fid = np.asarray(codes.fidelity)
        fid = fid[np.isfinite(fid)]
        # Compare in the input's precision: a float32 cosine of 0.8 must land in the le="0.8" bucket.
        bounds = self._fid_b.astype(fid.dtype) if fid.dtype.kind == "f" else self._fid_b
        fid_counts = _bucket_counts(fid, bounds)
        fid = fid.astype(np.float64)
        l0 = codes.l0.astype(np.float64)
        l0_counts = _bucket_counts(l0, self._l0_b)
        with self._lock:
            st = self._state(stream)
            st.images += n
            st.presence += presence
            st.weight += weight
            st.fid_buckets += fid_counts
            st.fid_sum += float(fid.sum())
            st.l0_buckets += l0_counts
            st.l0_sum += float(l0.sum())
            if latency_s is not None:
                st.lat_buckets[int(np.searchsorted(self._lat_b, latency_s, side="left"))] += 1
                st.lat_sum += float(latency_s)

    def observe_dead_letter(self, stream: str, reason: str, n: int = 1) -> None:
        """Count ``n`` dead-lettered items of ``stream`` under ``reason`` (one of DEAD_LETTER_REASONS); a stream
        beyond ``max_streams`` is counted under :data:`OVER_LIMIT_STREAM`, never as a new label value."""
        if reason not in DEAD_LETTER_REASONS:
            raise ValueError(f"reason must be one of {DEAD_LETTER_REASONS}, got {reason!r}")
        _check_count("n", n)
        with self._lock:
            if stream in self._streams or len(self._streams) < self.max_streams:
                self._state(stream).dead[reason] += int(n)
            else:
                self._refused[reason] += int(n)

    def observe_nonconverged(self, stream: str, n: int) -> None:
        """Count ``n`` decompositions of ``stream`` that did not reach the solver tolerance."""
        _check_count("n", n)
        with self._lock:
            self._state(stream).nonconverged += int(n)

    def set_queue_depth(self, n: int) -> None:
        """Items waiting in the pipeline's input queue."""
        _check_count("n", n)
        with self._lock:
            self._queue_items = int(n)

    def set_reference_time(self, stream: str, unix_seconds: float) -> None:
        """When the stream's current reference was built (its age is computed in PromQL)."""
        if not math.isfinite(unix_seconds):
            raise ValueError(f"unix_seconds must be finite, got {unix_seconds!r}")
        with self._lock:
            self._state(stream).reference_time = float(unix_seconds)

    def set_reference_fill(self, stream: str, ratio: float) -> None:
        """How far the stream's reference is built, in [0, 1]; drift tests run only once it reaches 1."""
        if not (0.0 <= ratio <= 1.0):
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        with self._lock:
            self._state(stream).reference_fill = float(ratio)

    # ------------------------------------------------------------------ drift monitor side
    def observe_window(
        self,
        stream: str,
        current: WindowSummary,
        reference: WindowSummary | None,
        *,
        concept_scores: np.ndarray | None,
        drift_score: float | None,
        alarms: Sequence[Alarm],
    ) -> None:
        """Publish a closed window: reference vs current gauges, drift scores, alarm states, exported set.

        ``alarms`` are this window's alarm transitions, as ``monitor.drift.detectors.AlarmBook.step`` returns them: a
        "firing" alarm stays active (``splice_concept_alarm_firing`` = 1, counted in ``splice_alarms_firing``)
        until a "resolved" alarm with the same (kind, direction, concept) arrives. Passing an active alarm again
        is harmless; never passing its resolution leaves it firing.
        """
        c = self.n_concepts
        for pname, summary in (("current", current), ("reference", reference)):
            if summary is not None and summary.n_concepts != c:
                raise ValueError(f"{pname}.n_concepts must equal the metrics' concept count {c}, got "
                                 f"{summary.n_concepts}")
        if current.stream != stream:
            raise ValueError(f"current.stream must be {stream!r}, got {current.stream!r}")
        scores = None
        if concept_scores is not None:
            scores = np.asarray(concept_scores, dtype=np.float64)
            if scores.shape != (c,):
                raise ValueError(f"concept_scores must have shape ({c},), got {scores.shape}")
        if drift_score is not None and not isinstance(drift_score, (int, float, np.floating, np.integer)):
            raise ValueError(f"drift_score must be a number or None, got {drift_score!r}")
        for a in alarms:
            if a.stream != stream:
                raise ValueError(f"alarm for stream {a.stream!r} passed to observe_window({stream!r}, ...)")
            if a.kind not in ALARM_KINDS:
                raise ValueError(f"alarm kind must be one of {ALARM_KINDS}, got {a.kind!r}")
            if a.state not in ("firing", "resolved"):
                raise ValueError(f"alarm state must be 'firing' or 'resolved', got {a.state!r}")
            if a.concept_index >= c:
                raise ValueError(f"alarm concept_index must be in [-1, {c}), got {a.concept_index}")

        cur_prev = current.prevalence.astype(np.float64)
        cur_mean = current.mean_activation.astype(np.float64)
        ref_prev = None if reference is None else reference.prevalence.astype(np.float64)
        ref_mean = None if reference is None else reference.mean_activation.astype(np.float64)
        top = self._top_drifting(scores, cur_prev, ref_prev)
        with self._lock:
            st = self._state(stream)
            st.cur_prev, st.cur_mean, st.cur_n = cur_prev, cur_mean, int(current.n_images)
            st.cur_fid = current.fidelity_sum / current.n_images if current.n_images else None
            st.ref_prev, st.ref_mean = ref_prev, ref_mean
            st.ref_n = None if reference is None else int(reference.n_images)
            st.ref_fid = (reference.fidelity_sum / reference.n_images
                          if reference is not None and reference.n_images else None)
            st.window_end = float(current.end)
            st.scores = scores
            st.drift_score = None if drift_score is None else float(drift_score)
            for a in alarms:
                key = (a.kind, a.direction, int(a.concept_index))
                if a.state == "firing":
                    st.active[key] = a
                else:
                    st.active.pop(key, None)
            alarmed: dict[int, float] = {}
            counts = dict.fromkeys(ALARM_KINDS, 0)
            for (kind, _, j), a in st.active.items():
                counts[kind] += 1
                if j >= 0 and kind in ("prevalence", "activation"):
                    score = a.score if math.isfinite(a.score) else math.inf
                    alarmed[j] = max(alarmed.get(j, -math.inf), score)
            st.alarmed = set(alarmed)
            st.alarm_counts = counts
            st.top = top
            st.exported = self._select(st, alarmed)

    # ------------------------------------------------------------------ inspection
    def can_accept(self, stream: str) -> bool:
        """True if ``stream`` already has state or one more stream fits under ``max_streams``; changes nothing."""
        with self._lock:
            return stream in self._streams or len(self._streams) < self.max_streams

    @property
    def streams(self) -> list[str]:
        with self._lock:
            return list(self._streams)

    def exported_concepts(self, stream: str) -> list[str]:
        """Names of the concepts with per-concept series for ``stream`` right now."""
        with self._lock:
            st = self._streams.get(stream)
            if st is None:
                return []
            return [self.concept_names[i] for i in self._exported(st)]

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Everything the metrics hold, as numpy arrays and plain values (for actor restarts): counters stay
        monotonic across a restart when the new object loads the old state."""
        with self._lock:
            streams = {}
            for name, st in self._streams.items():
                d = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in vars(st).items()
                     if k not in ("active", "alarmed", "dead", "alarm_counts", "top")}
                d["dead"] = dict(st.dead)
                d["alarm_counts"] = dict(st.alarm_counts)
                d["alarmed"] = sorted(st.alarmed)
                d["top"] = [list(t) for t in st.top]
                d["active"] = [dataclasses.asdict(a) for a in st.active.values()]
                streams[name] = d
            return {"concept_names": list(self.concept_names), "queue_items": self._queue_items,
                    "streams": streams}

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` output; the concept space must be the same."""
        if list(state.get("concept_names", [])) != list(self.concept_names):
            raise ConfigError("state_dict was saved for a different concept space (concept_names differ)")
        streams = {}
        for name, d in state["streams"].items():
            st = _StreamState(self.n_concepts, len(self._fid_b), len(self._l0_b), len(self._lat_b))
            for k, v in d.items():
                if k not in ("active", "alarmed", "top"):
                    setattr(st, k, v.copy() if isinstance(v, np.ndarray) else v)
            if st.fid_buckets.shape != (len(self._fid_b) + 1,):
                raise ConfigError("state_dict was saved with different histogram buckets")
            st.alarmed = set(d["alarmed"])
            st.top = [(int(i), float(v)) for i, v in d["top"]]
            st.active = {}
            for a in d["active"]:
                alarm = Alarm(**a)
                st.active[(alarm.kind, alarm.direction, int(alarm.concept_index))] = alarm
            streams[name] = st
        with self._lock:
            self._streams = streams
            self._queue_items = int(state["queue_items"])

    # ------------------------------------------------------------------ collector protocol
    def describe(self) -> Iterable[Metric]:
        # Lets the registry detect name clashes without running a full collect.
        for spec in METRICS:
            yield _family(spec)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = [(name, self._snapshot(st)) for name, st in self._streams.items()]
            queue_items, refused = self._queue_items, {r: v for r, v in self._refused.items() if v}
        fam = {spec.name: _family(spec) for spec in METRICS}
        names = self.concept_names
        for stream, s in snap:
            f = fam["splice_images_total"]
            f.add_metric([stream], float(s["images"]))
            idx = s["exported"]
            f_pres, f_w = fam["splice_concept_presence_total"], fam["splice_concept_weight_total"]
            for i, p, w in zip(idx.tolist(), s["presence"].astype(np.float64).tolist(), s["weight"].tolist()):
                f_pres.add_metric([stream, names[i]], p)
                f_w.add_metric([stream, names[i]], w)
            for reason, v in s["dead"].items():
                fam["splice_dead_letters_total"].add_metric([stream, reason], float(v))
            fam["splice_solver_nonconverged_total"].add_metric([stream], float(s["nonconverged"]))
            for key, les in (("fid", self._fid_le), ("l0", self._l0_le), ("lat", self._lat_le)):
                cum = np.cumsum(s[f"{key}_buckets"]).astype(np.float64).tolist()
                metric = {"fid": "splice_fidelity_cosine", "l0": "splice_l0_concepts",
                          "lat": "splice_batch_latency_seconds"}[key]
                fam[metric].add_metric([stream], list(zip(les, cum)), s[f"{key}_sum"])
            fam["splice_exported_concepts"].add_metric([stream], float(len(idx)))
            if s["reference_time"] is not None:
                fam["splice_reference_timestamp_seconds"].add_metric([stream], s["reference_time"])
            if s["reference_fill"] is not None:
                fam["splice_reference_fill_ratio"].add_metric([stream], s["reference_fill"])
            if s["window_end"] is None:
                continue
            fam["splice_window_end_timestamp_seconds"].add_metric([stream], s["window_end"])
            f_prev, f_mean = fam["splice_concept_prevalence_ratio"], fam["splice_concept_mean_activation"]
            for window in WINDOWS:
                prev, mean = s[f"{window}_prev"], s[f"{window}_mean"]
                if prev is None:
                    continue
                for i, p, m in zip(idx.tolist(), prev.tolist(), mean.tolist()):
                    f_prev.add_metric([stream, names[i], window], p)
                    f_mean.add_metric([stream, names[i], window], m)
                fam["splice_window_images"].add_metric([stream, window], float(s[f"{window}_n"]))
                if s[f"{window}_fid"] is not None:
                    fam["splice_window_fidelity_mean"].add_metric([stream, window], s[f"{window}_fid"])
            if s["scores"] is not None:
                f_sc = fam["splice_concept_drift_score"]
                for i, v in zip(idx.tolist(), s["scores"].tolist()):
                    f_sc.add_metric([stream, names[i]], v)
            f_al = fam["splice_concept_alarm_firing"]
            for i in idx.tolist():
                f_al.add_metric([stream, names[i]], 1.0 if i in s["alarmed"] else 0.0)
            if s["drift_score"] is not None:
                fam["splice_stream_drift_score"].add_metric([stream], s["drift_score"])
            for kind, v in s["alarm_counts"].items():
                fam["splice_alarms_firing"].add_metric([stream, kind], float(v))
            newest: dict[str, Alarm] = {}
            for a in s["active"].values():
                if math.isfinite(a.event_time) and (a.kind not in newest or a.event_time > newest[a.kind].event_time):
                    newest[a.kind] = a
            for kind, a in sorted(newest.items()):
                fam["splice_alarm_fired_timestamp_seconds"].add_metric([stream, kind], a.event_time)
                fam["splice_alarm_fired_offset_items"].add_metric([stream, kind], float(a.item_offset))
        for reason, v in refused.items():
            fam["splice_dead_letters_total"].add_metric([OVER_LIMIT_STREAM, reason], float(v))
        fam["splice_queue_items"].add_metric([], float(queue_items))
        fam["splice_dictionary_concepts"].add_metric([], float(self.n_concepts))
        yield from fam.values()

    # ------------------------------------------------------------------ internals
    def _state(self, stream: str) -> _StreamState:
        st = self._streams.get(stream)
        if st is None:
            if not isinstance(stream, str) or not stream:
                raise ValueError(f"stream must be a non-empty string, got {stream!r}")
            if len(self._streams) >= self.max_streams:
                raise ConfigError(
                    f"more than max_streams={self.max_streams} streams; refusing new stream {stream!r} to keep "
                    "the metric label set bounded (raise max_streams if this many streams are intended)"
                )
            st = _StreamState(self.n_concepts, len(self._fid_b), len(self._l0_b), len(self._lat_b))
            self._streams[stream] = st
        return st

    def _snapshot(self, st: _StreamState) -> dict:
        # Copy under the lock only what the scrape needs: O(exported), not O(concepts).
        idx = self._exported(st)
        take = (lambda a: None if a is None else a[idx])  # noqa: E731
        return {
            "images": st.images,
            "exported": idx,
            "presence": st.presence[idx],
            "weight": st.weight[idx],
            "dead": dict(st.dead),
            "nonconverged": st.nonconverged,
            "fid_buckets": st.fid_buckets.copy(), "fid_sum": st.fid_sum,
            "l0_buckets": st.l0_buckets.copy(), "l0_sum": st.l0_sum,
            "lat_buckets": st.lat_buckets.copy(), "lat_sum": st.lat_sum,
            "reference_time": st.reference_time,
            "reference_fill": st.reference_fill,
            "window_end": st.window_end,
            "active": dict(st.active),
            "current_prev": take(st.cur_prev), "current_mean": take(st.cur_mean),
            "reference_prev": take(st.ref_prev), "reference_mean": take(st.ref_mean),
            "current_n": st.cur_n, "reference_n": st.ref_n,
            "current_fid": st.cur_fid, "reference_fid": st.ref_fid,
            "scores": take(st.scores),
            "alarmed": set(st.alarmed),
            "drift_score": st.drift_score,
            "alarm_counts": dict(st.alarm_counts),
        }

    def _exported(self, st: _StreamState) -> np.ndarray:
        if st.exported is not None:
            return st.exported
        # No window yet: the most prevalent concepts seen so far.
        return _top_indices(st.presence.astype(np.float64), self.max_concepts_per_stream)

    def _top_drifting(
        self, scores: np.ndarray | None, cur_prev: np.ndarray, ref_prev: np.ndarray | None
    ) -> list[tuple[int, float]]:
        if self.top_k == 0:
            return []
        if scores is None:
            if ref_prev is None:
                return []
            scores = np.abs(cur_prev - ref_prev)  # no monitor score: rank by absolute prevalence change
        key = np.where(np.isfinite(scores), scores, -np.inf)
        k = min(self.top_k, len(key))
        part = np.argpartition(-key, k - 1)[:k]
        order = part[np.lexsort((part, -key[part]))]  # score descending, concept id breaks ties
        return [(int(i), float(scores[i])) for i in order if np.isfinite(key[i])]

    def _select(self, st: _StreamState, alarmed: dict[int, float]) -> np.ndarray:
        K = self.max_concepts_per_stream
        base = st.cur_prev.copy()
        if st.ref_prev is not None:
            np.maximum(base, st.ref_prev, out=base)
        if st.exported is not None and len(st.exported):
            base[st.exported] *= self.hysteresis
        # Priority tiers above any prevalence (<= hysteresis): top drifting, then alarmed concepts.
        tier = self.hysteresis + 1.0
        for rank, (i, _) in enumerate(st.top):
            base[i] = max(base[i], tier + (len(st.top) - rank))
        tier2 = tier + len(st.top) + 2.0
        for rank, i in enumerate(sorted(alarmed, key=lambda j: -alarmed[j])):
            base[i] = tier2 + (len(alarmed) - rank)
        return _top_indices(base, K)


def _top_indices(key: np.ndarray, k: int) -> np.ndarray:
    """Sorted ids of the (at most) k largest strictly positive entries of key."""
    positive = np.flatnonzero(key > 0)
    if len(positive) > k:
        sel = np.argpartition(-key[positive], k - 1)[:k] if k > 0 else np.zeros(0, dtype=np.int64)
        positive = positive[sel]
    return np.sort(positive)


def _bucket_counts(x: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    # Prometheus buckets are upper-inclusive (le), hence side="left".
    return np.bincount(np.searchsorted(bounds, x, side="left"), minlength=len(bounds) + 1)


def _check_buckets(pname: str, buckets: Sequence[float]) -> np.ndarray:
    b = np.asarray(list(buckets), dtype=np.float64)
    if b.ndim != 1 or len(b) == 0 or not np.all(np.isfinite(b)) or np.any(np.diff(b) <= 0):
        raise ConfigError(f"{pname} must be a non-empty strictly increasing list of finite numbers, got {buckets!r}")
    return b


def _check_count(pname: str, n: int) -> None:
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 0:
        raise ValueError(f"{pname} must be an integer >= 0, got {n!r}")


def _family(spec: MetricSpec) -> Metric:
    if spec.type == "counter":
        return CounterMetricFamily(spec.name, spec.help, labels=spec.labels)
    if spec.type == "gauge":
        return GaugeMetricFamily(spec.name, spec.help, labels=spec.labels)
    return HistogramMetricFamily(spec.name, spec.help, labels=spec.labels)
