"""The concept monitor: windows + reference + drift tests for each stream, fed with sparse codes and returning
typed alarms. ``StreamMonitor`` handles one stream; ``ConceptMonitor`` routes a mixed batch to one per stream.

A *step* is one closed tumbling window: the current view (the newest ``window.view`` closed windows) is tested
against the reference, and ``drift.ert`` is the expected number of steps between false alarms of a stream.

>>> from monitor.synthetic.codes import synthetic_stream, Shift
>>> names = [f"concept{j}" for j in range(300)]
>>> mon = ConceptMonitor(names, MonitorConfig(window=WindowConfig(size=1000),
...                                           reference=ReferenceConfig(n_images=5000), drift=DriftConfig(ert=100)))
>>> alarms = []
>>> for codes, items in synthetic_stream(300, 12_000, [Shift(7, 8_000, "prevalence", 5.0)], mean_l0=15, seed=3):
...     alarms += mon.update(codes, items)
>>> sorted({(a.concept, a.direction) for a in alarms if a.kind == "prevalence"})
[('concept7', 'up')]
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np

from monitor.drift import state as _state
from monitor.drift.detectors import AlarmBook, ConceptDriftTest, DriftConfig, StepResult
from monitor.errors import ConfigError
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary
from monitor.drift.stats import WindowStats
from monitor.drift.windows import ClosedWindow, Reference, ReferenceConfig, TumblingWindows, WindowConfig, WindowRing

__all__ = ["DEFAULT_MAX_STREAMS", "MonitorConfig", "StreamStatus", "StreamMonitor", "ConceptMonitor", "WindowConfig",
           "ReferenceConfig", "DriftConfig"]

# One bound for every per-stream structure (monitors here, metric label sets in monitor.metrics.families), so the
# aggregator hits the same limit everywhere and can check it once before it changes any state.
DEFAULT_MAX_STREAMS = 64


def _from_dict(cls, data: dict[str, Any] | None):
    if data is None:
        return None
    allowed = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{cls.__name__}: unknown keys {unknown}; allowed: {sorted(allowed)}")
    return cls(**data)


@dataclass(frozen=True)
class MonitorConfig:
    """How a stream is windowed, what it is compared with and how the tests are calibrated."""

    window: WindowConfig = field(default_factory=WindowConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    concept_space: str = ""
    max_pending_windows: int = 1024  # closed summaries kept for closed_windows(); the oldest are dropped beyond
    max_streams: int = DEFAULT_MAX_STREAMS  # ConceptMonitor: bound on the number of streams tracked

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["drift"]["kinds"] = list(d["drift"]["kinds"])
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MonitorConfig":
        """Build from plain dicts (YAML/JSON); unknown keys are rejected with the allowed ones listed."""
        data = dict(data)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ConfigError(f"MonitorConfig: unknown keys {unknown}; allowed: {sorted(allowed)}")
        drift = data.get("drift")
        if drift is not None and "kinds" in drift:
            drift = {**drift, "kinds": tuple(drift["kinds"])}
        return cls(
            window=_from_dict(WindowConfig, data.get("window")) or WindowConfig(),
            reference=_from_dict(ReferenceConfig, data.get("reference")) or ReferenceConfig(),
            drift=_from_dict(DriftConfig, drift) or DriftConfig(),
            **{k: data[k] for k in ("concept_space", "max_pending_windows", "max_streams") if k in data},
        )


@dataclass
class StreamStatus:
    """What one stream's monitor knows now; the exporter and the history store read this."""

    stream: str
    n_images: int
    n_windows: int  # closed windows so far
    steps: int  # tests run so far
    n_late: int
    n_dropped: int
    n_skewed: int  # events whose clock ran more than window.max_skew ahead of their batch
    reference_mode: str
    reference_ready: bool
    current: WindowSummary | None  # the view tested last
    reference: WindowSummary | None  # the reference it was tested against
    reference_age_s: float  # event time from the reference's end to the current view's end
    reference_age_windows: int  # closed windows since the reference ended (history: since it was loaded)
    concept_scores: np.ndarray  # (c,) evidence (-log p-bound) per concept at the last step, max over tests
    threshold: float  # evidence needed to fire at the last step
    n_hypotheses: int
    stream_score: float  # Jensen-Shannon divergence (bits) between reference and current concept mass
    active_alarms: list[Alarm]
    n_alarms_fired: int


class StreamMonitor:
    """Windows, reference and drift tests of one stream.

    ``on_window(summary)`` is called for every closed window; closed summaries are also queued for
    :meth:`closed_windows`. Memory: (open windows + ring + reference) x concepts, independent of images seen.
    """

    def __init__(self, concept_names: list[str], config: MonitorConfig | None = None, *, stream: str = "default",
                 on_window: Callable[[WindowSummary], None] | None = None) -> None:
        self.concept_names = list(concept_names)
        if not self.concept_names:
            raise ValueError("concept_names must not be empty")
        self.config = config or MonitorConfig()
        self.stream = stream
        self.on_window = on_window
        c = len(self.concept_names)
        cfg = self.config
        self.windows = TumblingWindows(c, cfg.window)
        self.ring = WindowRing(cfg.window.view + cfg.reference.trailing_windows)
        self.reference = Reference(c, cfg.reference)
        self.tester = ConceptDriftTest(cfg.drift)
        self.book = AlarmBook(stream, self.concept_names, cfg.drift)
        self._pending: deque[WindowSummary] = deque(maxlen=cfg.max_pending_windows)
        self.n_windows = 0
        self.steps = 0
        self._last: StepResult | None = None
        self._last_current: WindowSummary | None = None
        self._last_reference: WindowSummary | None = None
        # closed-window count when the fixed reference was completed / the history reference loaded: reference age
        self._fixed_mark: int | None = None
        self._history_mark = 0

    # -- feeding ----------------------------------------------------------------------------------------------
    def update(self, codes: SparseCodes, items: list[ItemMeta] | None = None, *,
               timestamps: np.ndarray | None = None) -> list[Alarm]:
        """Add a batch (rows aligned with ``items``, or with ``timestamps`` when items are not at hand); returns
        the alarms (firing and resolved) raised by the windows this batch closed."""
        n = len(codes)
        if codes.n_concepts != len(self.concept_names):
            raise ValueError(f"codes have n_concepts={codes.n_concepts}, the monitor has "
                             f"{len(self.concept_names)} concept names")
        if timestamps is None:
            if items is None:
                raise ValueError("update needs items (list[ItemMeta]) or timestamps")
            if len(items) != n:
                raise ValueError(f"items: {len(items)} items for {n} rows of codes")
            timestamps = np.fromiter((it.timestamp for it in items), dtype=np.float64, count=n)
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.shape != (n,):
            raise ValueError(f"timestamps: expected shape ({n},), got {ts.shape}")
        if n == 0:
            return []
        n_ref = self.reference.offer(codes, ts)
        closed = self.windows.add(codes, ts, n_reference=n_ref)
        return self._on_closed(closed)

    def flush(self) -> list[Alarm]:
        """Close and test every open window (end of a finite stream, or shutdown)."""
        return self._on_closed(self.windows.flush())

    def _on_closed(self, closed: list[ClosedWindow]) -> list[Alarm]:
        alarms: list[Alarm] = []
        for win in closed:
            self.n_windows += 1
            self.ring.push(win)
            if win.n_reference > 0:
                self._fixed_mark = self.n_windows
            summary = win.summary(self.stream, self.config.concept_space)
            self._pending.append(summary)
            if self.on_window is not None:
                self.on_window(summary)
            alarms += self._test()
        return alarms

    def _test(self) -> list[Alarm]:
        view = self.config.window.view
        if len(self.ring) < view:
            return []
        current_windows = self.ring.last(view)
        if self.reference.mode == "fixed" and any(w.n_reference for w in current_windows):
            return []  # the view overlaps the images the reference was built from
        ref = self.reference.get(self.ring, view)
        if ref is None:
            return []
        ref_stats, ref_start, ref_end = ref
        cur_stats, cur_start, cur_end = self.ring.view(view)
        res = self.tester.run(ref_stats, cur_stats)
        self.steps += 1
        self._last = res
        self._last_current = cur_stats.to_summary(self.stream, cur_start, cur_end, self.config.concept_space)
        self._last_reference = ref_stats.to_summary(self.stream, ref_start, ref_end, self.config.concept_space)
        alarms = self.book.step(res, (cur_start, cur_end), (ref_start, ref_end))
        return alarms

    # -- reading ----------------------------------------------------------------------------------------------
    def closed_windows(self) -> list[WindowSummary]:
        """Summaries of the windows closed since the last call (drains the queue)."""
        out = list(self._pending)
        self._pending.clear()
        return out

    @property
    def active_alarms(self) -> list[Alarm]:
        return self.book.active

    def status(self) -> StreamStatus:
        res = self._last
        c = len(self.concept_names)
        cur, ref = self._last_current, self._last_reference
        age_s = (cur.end - ref.end) if (cur is not None and ref is not None) else math.nan
        mode = self.reference.mode
        if mode == "fixed":
            age_w = self.n_windows - self._fixed_mark if self._fixed_mark is not None else 0
        elif mode == "history":
            age_w = self.n_windows - self._history_mark
        else:
            age_w = self.config.window.view
        return StreamStatus(
            stream=self.stream,
            n_images=self.windows.n_images,
            n_windows=self.n_windows,
            steps=self.steps,
            n_late=self.windows.n_late,
            n_dropped=self.windows.n_dropped,
            n_skewed=self.windows.n_skewed,
            reference_mode=self.reference.mode,
            reference_ready=self.reference.ready(self.ring, self.config.window.view),
            current=cur,
            reference=ref,
            reference_age_s=float(age_s),
            reference_age_windows=int(age_w),
            concept_scores=res.concept_scores if res is not None else np.zeros(c),
            threshold=res.threshold if res is not None else math.nan,
            n_hypotheses=res.n_hypotheses if res is not None else 0,
            stream_score=res.stream_score if res is not None else math.nan,
            active_alarms=self.book.active,
            n_alarms_fired=self.book.n_fired,
        )

    # -- reference control ------------------------------------------------------------------------------------
    def set_reference(self, reference: WindowSummary | WindowStats) -> None:
        """Compare against a stored window from now on (``history`` mode); the fixed reference is kept."""
        self.reference.load(reference)
        self._history_mark = self.n_windows

    def set_reference_mode(self, mode: str, **changes: Any) -> None:
        """Switch between ``fixed``, ``trailing`` and ``history`` without losing any accumulated state."""
        self.reference.set_mode(mode, **changes)
        if self.reference.config.trailing_windows + self.config.window.view > self.ring.capacity:
            old = list(self.ring)
            self.ring = WindowRing(self.reference.config.trailing_windows + self.config.window.view)
            for w in old:
                self.ring.push(w)

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume after a restart ."""
        return {
            "stream": self.stream,
            "config": self.config.to_dict(),
            "concept_names": np.array(self.concept_names, dtype=np.str_),
            "windows": self.windows.state_dict(),
            "ring": self.ring.state_dict(),
            "reference": self.reference.state_dict(),
            "book": self.book.state_dict(),
            "n_windows": self.n_windows,
            "steps": self.steps,
            "fixed_mark": -1 if self._fixed_mark is None else self._fixed_mark,
            "history_mark": self._history_mark,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any], on_window: Callable[[WindowSummary], None] | None = None
                   ) -> "StreamMonitor":
        out = cls([str(x) for x in state["concept_names"]], MonitorConfig.from_dict(state["config"]),
                  stream=str(state["stream"]), on_window=on_window)
        out.windows = TumblingWindows.from_state(state["windows"])
        out.ring = WindowRing.from_state(state["ring"])
        out.reference = Reference.from_state(state["reference"])
        out.book.load_state_dict(state["book"])
        out.n_windows = int(state["n_windows"])
        out.steps = int(state["steps"])
        out._fixed_mark = None if int(state["fixed_mark"]) < 0 else int(state["fixed_mark"])
        out._history_mark = int(state["history_mark"])
        return out

    def to_bytes(self) -> bytes:
        """The whole state as bytes (:func:`monitor.drift.state.dumps`)."""
        return _state.dumps(self)

    @classmethod
    def from_bytes(cls, blob: bytes, on_window: Callable[[WindowSummary], None] | None = None) -> "StreamMonitor":
        return _state.loads(blob, cls, on_window=on_window)

    def save(self, path: str | Path) -> None:
        _state.save(self, path)

    @classmethod
    def load(cls, path: str | Path, on_window: Callable[[WindowSummary], None] | None = None) -> "StreamMonitor":
        return _state.load(path, cls, on_window=on_window)


class ConceptMonitor:
    """One :class:`StreamMonitor` per stream, created on first sight; batches may mix streams
    (``items[i].stream``)."""

    def __init__(self, concept_names: list[str], config: MonitorConfig | None = None, *,
                 on_window: Callable[[WindowSummary], None] | None = None) -> None:
        self.concept_names = list(concept_names)
        if not self.concept_names:
            raise ValueError("concept_names must not be empty")
        self.config = config or MonitorConfig()
        self.on_window = on_window
        self.monitors: dict[str, StreamMonitor] = {}

    def can_accept(self, stream: str) -> bool:
        """True if ``stream`` is already tracked or one more stream fits under ``config.max_streams``; cheap, and
        changes nothing, so a caller can check capacity before it mutates any state."""
        return stream in self.monitors or len(self.monitors) < self.config.max_streams

    def monitor(self, stream: str) -> StreamMonitor:
        mon = self.monitors.get(stream)
        if mon is None:
            if len(self.monitors) >= self.config.max_streams:
                raise ValueError(f"stream {stream!r} would exceed max_streams={self.config.max_streams}; "
                                 f"tracked: {sorted(self.monitors)[:10]}...")
            mon = self.monitors[stream] = StreamMonitor(self.concept_names, self.config, stream=stream,
                                                        on_window=self.on_window)
        return mon

    def update(self, codes: SparseCodes, items: list[ItemMeta]) -> list[Alarm]:
        """Route the rows of a batch to their streams' monitors; returns all alarms raised."""
        if len(items) != len(codes):
            raise ValueError(f"items: {len(items)} items for {len(codes)} rows of codes")
        streams = [it.stream for it in items]
        new = [s for s in dict.fromkeys(streams) if s not in self.monitors]
        if len(self.monitors) + len(new) > self.config.max_streams:
            # refuse the whole batch before any stream's state moves, so a retry cannot double-count rows
            raise ValueError(f"batch brings new streams {new[:10]} that would exceed "
                             f"max_streams={self.config.max_streams}; tracked: {sorted(self.monitors)[:10]}")
        first = streams[0] if streams else None
        if all(s == first for s in streams):
            return self.monitor(first).update(codes, items) if first is not None else []
        names = np.array(streams, dtype=object)
        alarms: list[Alarm] = []
        for stream in dict.fromkeys(streams):
            mask = names == stream
            sel = np.flatnonzero(mask)
            alarms += self.monitor(stream).update(codes.select(mask), [items[i] for i in sel])
        return alarms

    def flush(self) -> list[Alarm]:
        alarms: list[Alarm] = []
        for mon in self.monitors.values():
            alarms += mon.flush()
        return alarms

    def closed_windows(self) -> list[WindowSummary]:
        out: list[WindowSummary] = []
        for mon in self.monitors.values():
            out += mon.closed_windows()
        return out

    def streams(self) -> list[str]:
        return list(self.monitors)

    def status(self, stream: str) -> StreamStatus:
        if stream not in self.monitors:
            raise KeyError(f"unknown stream {stream!r}; known: {sorted(self.monitors)}")
        return self.monitors[stream].status()

    @property
    def active_alarms(self) -> list[Alarm]:
        return [a for mon in self.monitors.values() for a in mon.active_alarms]

    def set_reference(self, stream: str, reference: WindowSummary | WindowStats) -> None:
        self.monitor(stream).set_reference(reference)

    def set_reference_mode(self, mode: str, stream: str | None = None, **changes: Any) -> None:
        for name, mon in self.monitors.items():
            if stream is None or name == stream:
                mon.set_reference_mode(mode, **changes)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.config.to_dict(), "concept_names": np.array(self.concept_names, dtype=np.str_),
                "streams": {str(i): m.state_dict() for i, m in enumerate(self.monitors.values())}}

    @classmethod
    def from_state(cls, state: dict[str, Any], on_window: Callable[[WindowSummary], None] | None = None
                   ) -> "ConceptMonitor":
        out = cls([str(x) for x in state["concept_names"]], MonitorConfig.from_dict(state["config"]),
                  on_window=on_window)
        for key in sorted(state["streams"], key=int):
            mon = StreamMonitor.from_state(state["streams"][key], on_window=on_window)
            out.monitors[mon.stream] = mon
        return out

    def to_bytes(self) -> bytes:
        """The whole state (every stream) as bytes (:func:`monitor.drift.state.dumps`)."""
        return _state.dumps(self)

    @classmethod
    def from_bytes(cls, blob: bytes, on_window: Callable[[WindowSummary], None] | None = None) -> "ConceptMonitor":
        return _state.loads(blob, cls, on_window=on_window)

    def save(self, path: str | Path) -> None:
        _state.save(self, path)

    @classmethod
    def load(cls, path: str | Path, on_window: Callable[[WindowSummary], None] | None = None) -> "ConceptMonitor":
        return _state.load(path, cls, on_window=on_window)
