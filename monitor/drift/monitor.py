"""The concept monitor: windows + reference + drift tests for each stream, fed with sparse codes and returning
typed alarms. ``StreamMonitor`` handles one stream; ``ConceptMonitor`` routes a mixed batch to one per stream.

Every batch after the reference is a test: sequential per-concept detectors (:mod:`monitor.drift.sequential`) fold
it in and alarm within the batch where the evidence crosses; ``drift.ert`` is the expected number of items between
false alarms of a stream. Windows aggregate for metrics and history, and give alarms their "current" figures.

>>> from monitor.synthetic.codes import synthetic_stream, Shift
>>> names = [f"concept{j}" for j in range(300)]
>>> mon = ConceptMonitor(names, MonitorConfig(window=WindowConfig(size=1000),
...                                           reference=ReferenceConfig(n_images=5000), drift=DriftConfig(ert=100_000)))
>>> alarms = []
>>> for codes, items in synthetic_stream(300, 12_000, [Shift(7, 8_000, "prevalence", 5.0)], mean_l0=15, seed=3):
...     alarms += mon.update(codes, items)
>>> sorted({(a.concept, a.direction) for a in alarms if a.kind == "prevalence"})
[('concept7', 'up')]
"""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path
from typing import Any, Callable

import numpy as np

from monitor.drift import state as _state
from monitor.drift.config import DEFAULT_MAX_STREAMS, MonitorConfig
from monitor.drift.detectors import AlarmBook, DriftConfig, js_divergence
from monitor.drift.reporting import ColumnMoments, NarrowResult, report_at, step_result
from monitor.drift.routing import stream_groups
from monitor.drift.sequential import SequentialConceptTest
from monitor.drift.stats import ConceptMoments, WindowStats
from monitor.drift.status import StreamProgress, StreamStatus
from monitor.drift.windows import ClosedWindow, Reference, ReferenceConfig, TumblingWindows, WindowConfig, WindowRing
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary

__all__ = ["DEFAULT_MAX_STREAMS", "MonitorConfig", "StreamStatus", "StreamProgress", "StreamMonitor", "ConceptMonitor",
           "WindowConfig", "ReferenceConfig", "DriftConfig"]

# The alarm book reads evidence, figures and gates only at its active alarms and at the hypotheses that fire: build
# just those entries (tests turn this off to check that the alarms are the same).
_ACTIVE_ONLY = True


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
        self.seq = SequentialConceptTest(c, cfg.drift)
        self._seq_source = ""  # which reference the sequential test's null was built from
        self.n_items = 0  # items of this stream seen (reference included): alarms carry this offset
        self._batches = 0
        self._stream_score = math.nan
        self.book = AlarmBook(stream, self.concept_names, cfg.drift)
        self._pending: deque[WindowSummary] = deque(maxlen=cfg.max_pending_windows)
        self.n_windows = 0
        self.steps = 0
        self._last_current: WindowSummary | None = None
        self._last_reference: WindowSummary | None = None
        # closed-window count when the fixed reference was completed / the history reference loaded: reference age
        self._fixed_mark: int | None = None
        self._history_mark = 0
        self._reference_rows: list[SparseCodes] = []  # the fixed reference's items until calibrate() (not saved)

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
        self._batches += 1
        n_ref = self.reference.offer(codes, ts)
        if n_ref and not self.seq.ready and self.config.drift.calibrate:
            self._reference_rows.append(codes if n_ref == n else codes.slice(0, n_ref))
        closed = self.windows.add(codes, ts, n_reference=n_ref)
        alarms = self._on_closed(closed)
        # a fixed reference is never tested against itself: only the rows after the ones it took
        skip = n_ref if self.reference.mode == "fixed" else 0
        self._sync_reference()
        if self.seq.ready and skip < n:
            part = codes if skip == 0 else codes.slice(skip, n)
            alarms += self._test(part, ts[skip:], self.n_items + n)
        self.n_items += n
        return alarms

    def flush(self) -> list[Alarm]:
        """Close every open window (end of a finite stream, or shutdown). Tests ran with every batch already."""
        return self._on_closed(self.windows.flush())

    def _on_closed(self, closed: list[ClosedWindow]) -> list[Alarm]:
        for win in closed:
            self.n_windows += 1
            self.ring.push(win)
            if win.n_reference > 0:
                self._fixed_mark = self.n_windows
            summary = win.summary(self.stream, self.config.concept_space)
            self._pending.append(summary)
            if self.on_window is not None:
                self.on_window(summary)
            self._describe_view()
            if self.reference.mode == "trailing":
                self._seq_source = ""  # the trailing reference moved with the ring: the null follows it
        return []

    def _describe_view(self) -> None:
        """Current view vs reference summaries and the stream-level divergence, refreshed at each window close."""
        view = self.config.window.view
        if len(self.ring) < view:
            return
        ref = self.reference.get(self.ring, view)
        if ref is None:
            return
        ref_stats, ref_start, ref_end = ref
        cur_stats, cur_start, cur_end = self.ring.view(view)
        self._last_current = cur_stats.to_summary(self.stream, cur_start, cur_end, self.config.concept_space)
        self._last_reference = ref_stats.to_summary(self.stream, ref_start, ref_end, self.config.concept_space)
        self._stream_score = js_divergence(ref_stats.concepts.weight_sum, cur_stats.concepts.weight_sum)

    def _sync_reference(self) -> None:
        """Point the sequential test's null at the reference of the current mode once that reference is ready."""
        mode = self.reference.mode
        want = mode
        if self._seq_source == want:
            return
        ref = self.reference.get(self.ring, self.config.window.view)
        if ref is None:
            return
        first = not self.seq.ready
        self.seq.set_reference(ref[0])
        self._seq_source = want
        if first and self.config.drift.calibrate:
            self.seq.calibrate(self._batch_hint(), rows=self._reference_rows)  # empties the list

    def _batch_hint(self) -> int:
        """The stream's mean batch size so far: the calibration simulates batches of that size."""
        return max(1, round((self.n_items + 1) / max(self._batches, 1)))

    def _recent_parts(self) -> list[ConceptMoments]:
        return [w.stats.concepts for w in self.ring.last(1) + self.windows.open_windows()]

    def _recent(self) -> ConceptMoments:
        """The newest closed window plus the open ones: what 'current' means in an alarm record."""
        out = ConceptMoments(len(self.concept_names))
        for part in self._recent_parts():
            out.merge(part)
        return out

    def _test(self, codes: SparseCodes, ts: np.ndarray, offset: int) -> list[Alarm]:
        seq = self.seq.update(codes)
        self.steps += 1
        if not seq.any_fire and not self.book.n_active and self.config.drift.stream_threshold is None:
            return []  # nothing can fire or resolve: skip assembling what an alarm would report
        ref_stats, ref_start, ref_end = self.reference.get(self.ring, self.config.window.view)
        if _ACTIVE_ONLY and self.config.drift.stream_threshold is None and seq.threshold > 0:
            active = self.book.active
            fh, fj = self.seq.firing_keys() if seq.any_fire else (np.zeros(0, np.int64), np.zeros(0, np.int64))
            seq = NarrowResult(seq, self.seq, active, fh, fj)
            cols = np.unique(np.concatenate([np.array([a.concept_index for a in active if a.concept_index >= 0],
                                                      dtype=np.int64), fj]))
            cur = ColumnMoments(self._recent_parts(), cols)
            report = report_at(ColumnMoments([ref_stats.concepts], cols), cur, cols, self.config.drift,
                               len(self.concept_names))
            res = step_result(seq, ref_stats.concepts, cur, self.config.drift, self._stream_score, report)
        else:
            res = step_result(seq, ref_stats.concepts, self._recent(), self.config.drift, self._stream_score)
        lo, hi = float(ts.min()), float(ts.max())
        return self.book.step(res, (lo, float(np.nextafter(hi, math.inf))), (ref_start, ref_end),
                              fired=(hi, int(offset)))

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
        cur, ref = self._last_current, self._last_reference
        age_s = (cur.end - ref.end) if (cur is not None and ref is not None) else math.nan
        mode = self.reference.mode
        if mode == "fixed":
            age_w = self.n_windows - self._fixed_mark if self._fixed_mark is not None else 0
        elif mode == "history":
            age_w = self.n_windows - self._history_mark
        else:
            age_w = self.config.window.view
        return StreamStatus.extend(
            self.progress(),
            n_late=self.windows.n_late,
            n_dropped=self.windows.n_dropped,
            n_skewed=self.windows.n_skewed,
            current=cur,
            reference=ref,
            reference_age_s=float(age_s),
            reference_age_windows=int(age_w),
            concept_scores=self.seq.evidence.max(axis=0),
            threshold=self.seq.threshold if self.seq.ready else math.nan,
            n_hypotheses=self.seq.n_hypotheses,
            stream_score=self._stream_score,
            active_alarms=self.book.active,
            n_alarms_fired=self.book.n_fired,
        )

    def progress(self) -> StreamProgress:
        """How far the stream got (the counts :meth:`status` starts from), without reading out the drift tests:
        cheap enough for every batch."""
        return StreamProgress(stream=self.stream, n_images=self.windows.n_images, n_windows=self.n_windows,
                              steps=self.steps, reference_mode=self.reference.mode,
                              reference_ready=self.reference.ready(self.ring, self.config.window.view))

    def restart_tests(self) -> None:
        """Start every sequential detector again from zero evidence and forget active alarms (an operator's reset
        after handling an alert; the benchmark's null runs use it to count independent false alarms)."""
        self.seq.reset()
        self.book.reset()

    # -- reference control ------------------------------------------------------------------------------------
    def set_reference(self, reference: WindowSummary | WindowStats) -> None:
        """Compare against a stored window from now on (``history`` mode); the fixed reference is kept."""
        self.reference.load(reference)
        self._history_mark = self.n_windows
        self._seq_source = ""  # a new null for the sequential test

    def set_reference_mode(self, mode: str, **changes: Any) -> None:
        """Switch between ``fixed``, ``trailing`` and ``history`` without losing any accumulated state."""
        self.reference.set_mode(mode, **changes)
        self._seq_source = ""
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
            "seq": self.seq.state_dict(),
            "seq_source": self._seq_source,
            "n_items": self.n_items,
            "batches": self._batches,
            "stream_score": self._stream_score,
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
        out.seq.load_state_dict(state["seq"])
        out._seq_source = str(state["seq_source"])
        out.n_items = int(state["n_items"])
        out._batches = int(state["batches"])
        out._stream_score = float(state["stream_score"])
        out._describe_view()
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
        names: dict[str, int] = {}
        index = np.fromiter((names.setdefault(it.stream, len(names)) for it in items), dtype=np.int64,
                            count=len(items))
        timestamps = np.fromiter((it.timestamp for it in items), dtype=np.float64, count=len(items))
        return self.update_columns(codes, timestamps, index, list(names))

    def update_columns(self, codes: SparseCodes, timestamps: np.ndarray, stream_index: np.ndarray,
                       stream_names: list[str]) -> list[Alarm]:
        """:meth:`update` for a batch held as columns: row i has event time ``timestamps[i]`` and belongs to stream
        ``stream_names[stream_index[i]]`` (what the pipeline's workers send), so no object per row is built."""
        n = len(codes)
        if len(timestamps) != n or len(stream_index) != n:
            raise ValueError(f"update_columns: {len(timestamps)} timestamps and {len(stream_index)} stream rows for "
                             f"{n} rows of codes")
        groups = stream_groups(stream_index, stream_names)
        new = [s for s, _ in groups if s not in self.monitors]
        if len(self.monitors) + len(new) > self.config.max_streams:
            # refuse the whole batch before any stream's state moves, so a retry cannot double-count rows
            raise ValueError(f"batch brings new streams {new[:10]} that would exceed "
                             f"max_streams={self.config.max_streams}; tracked: {sorted(self.monitors)[:10]}")
        ts = np.asarray(timestamps, dtype=np.float64)
        alarms: list[Alarm] = []
        for stream, rows in groups:
            if rows is None:
                alarms += self.monitor(stream).update(codes, timestamps=ts)
            else:
                alarms += self.monitor(stream).update(codes.select(rows), timestamps=ts[rows])
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

    def progress(self, stream: str) -> StreamProgress:
        if stream not in self.monitors:
            raise KeyError(f"unknown stream {stream!r}; known: {sorted(self.monitors)}")
        return self.monitors[stream].progress()

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
