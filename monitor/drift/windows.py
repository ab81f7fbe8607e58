"""Windows over one stream: tumbling windows by event time or by image count, sliding views over the last closed
windows, and the reference a drift test compares against (fixed first N images, loaded from history, or trailing).

Late-event rule (time windows): a window closes once the watermark, the largest event time seen minus
``allowed_lateness``, passes its end. An event whose window has already closed when its batch arrives is *late*:
with ``late_policy="oldest_open"`` (default) it is counted in the oldest window still open, so no image is lost but
that window's bounds no longer contain its timestamp; with ``late_policy="drop"`` it is left out of the statistics
and only counted (``n_dropped``). Either way ``n_late`` counts it. A bad clock far in the future would otherwise
close every window at once and make the rest of the stream late: with ``max_skew`` set, an event more than
``max_skew`` seconds ahead of its batch's median event time is counted (``n_skewed``) and placed at that median
(a genuine jump moves the whole batch, and so its median). Memory is bounded by ``max_open`` open windows plus the
ring of closed ones, never by the number of images seen.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from monitor.errors import ConfigError
from monitor.records import SparseCodes, WindowSummary
from monitor.drift.stats import WindowStats

__all__ = ["WindowConfig", "ClosedWindow", "TumblingWindows", "WindowRing", "ReferenceConfig", "Reference"]

WINDOW_KINDS = ("count", "time")
LATE_POLICIES = ("oldest_open", "drop")
REFERENCE_MODES = ("fixed", "trailing", "history")


@dataclass(frozen=True)
class WindowConfig:
    """Tumbling windows: ``kind="count"`` closes every ``size`` images, ``kind="time"`` every ``size`` seconds of
    event time (aligned to ``origin``). ``view`` closed windows are merged into the current view a test sees."""

    kind: str = "count"
    size: float = 1000
    allowed_lateness: float = 0.0
    late_policy: str = "oldest_open"
    origin: float = 0.0
    max_open: int = 16
    view: int = 1
    max_skew: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in WINDOW_KINDS:
            raise ConfigError(f"WindowConfig.kind must be one of {WINDOW_KINDS}, got {self.kind!r}")
        if not (self.size > 0) or (self.kind == "count" and int(self.size) != self.size):
            raise ConfigError(f"WindowConfig.size must be a positive {'integer' if self.kind == 'count' else 'number'}"
                             f" for {self.kind} windows, got {self.size!r}")
        if self.allowed_lateness < 0:
            raise ConfigError(f"WindowConfig.allowed_lateness must be >= 0 seconds, got {self.allowed_lateness!r}")
        if self.late_policy not in LATE_POLICIES:
            raise ConfigError(f"WindowConfig.late_policy must be one of {LATE_POLICIES}, got {self.late_policy!r}")
        if self.max_open < 1:
            raise ConfigError(f"WindowConfig.max_open must be >= 1, got {self.max_open!r}")
        if self.view < 1:
            raise ConfigError(f"WindowConfig.view must be >= 1 closed windows, got {self.view!r}")
        if self.max_skew is not None and not (self.max_skew > 0):
            raise ConfigError(f"WindowConfig.max_skew must be > 0 seconds or None, got {self.max_skew!r}")


@dataclass
class ClosedWindow:
    """A closed tumbling window: its sequence ``index``, bounds, statistics and bookkeeping."""

    index: int
    start: float
    end: float
    stats: WindowStats
    n_late: int = 0
    n_reference: int = 0  # images of this window that also built the fixed reference

    def summary(self, stream: str, concept_space: str = "") -> WindowSummary:
        summary = self.stats.to_summary(stream, self.start, self.end, concept_space)
        summary.index = self.index  # count windows: the position in the stream, which keeps stored windows apart
        return summary

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "start": self.start, "end": self.end, "stats": self.stats.state_dict(),
                "n_late": self.n_late, "n_reference": self.n_reference}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "ClosedWindow":
        return cls(int(state["index"]), float(state["start"]), float(state["end"]),
                   WindowStats.from_state(state["stats"]), int(state["n_late"]), int(state["n_reference"]))


class TumblingWindows:
    """Assigns images to tumbling windows and hands back the windows that close."""

    def __init__(self, n_concepts: int, config: WindowConfig | None = None) -> None:
        self.n_concepts = int(n_concepts)
        self.config = config or WindowConfig()
        self._open: dict[int, ClosedWindow] = {}  # index -> window still accumulating
        self._next_index = 0  # count windows: index of the open one; time windows: lowest index not yet closed
        self.max_event_time = -math.inf
        self.n_late = 0
        self.n_dropped = 0
        self.n_skewed = 0
        self.n_images = 0

    # -- public ---------------------------------------------------------------------------------------------
    def add(self, codes: SparseCodes, timestamps: np.ndarray, n_reference: int = 0) -> list[ClosedWindow]:
        """Add all rows of ``codes`` (event ``timestamps`` aligned with rows); returns windows closed by this batch.

        ``n_reference``: how many leading rows of this batch also went into the fixed reference (bookkeeping only).
        """
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.shape != (len(codes),):
            raise ValueError(f"timestamps: expected shape ({len(codes)},), got {ts.shape}")
        if codes.n_concepts != self.n_concepts:
            raise ValueError(f"codes have {codes.n_concepts} concepts, the windows {self.n_concepts}")
        if len(codes) == 0:
            return []
        if self.config.kind == "count":
            return self._add_count(codes, ts, n_reference)
        return self._add_time(codes, ts, n_reference)

    def flush(self) -> list[ClosedWindow]:
        """Close every open window (end of a finite stream or shutdown)."""
        closed = [self._open.pop(i) for i in sorted(self._open)]
        if self.config.kind == "count":
            for w in closed:
                if w.stats.n_images:
                    self._close_count(w)
        if closed and self.config.kind == "time":
            self._next_index = max(self._next_index, closed[-1].index + 1)
        elif closed:
            self._next_index += 1
        return [w for w in closed if w.stats.n_images > 0]

    def open_windows(self) -> list[ClosedWindow]:
        """Windows still accumulating, oldest first (not copies: read only)."""
        return [self._open[i] for i in sorted(self._open)]

    @property
    def watermark(self) -> float:
        return self.max_event_time - self.config.allowed_lateness

    # -- count windows ----------------------------------------------------------------------------------------
    def _add_count(self, codes: SparseCodes, ts: np.ndarray, n_reference: int) -> list[ClosedWindow]:
        size = int(self.config.size)
        closed: list[ClosedWindow] = []
        n = len(codes)
        pos = 0
        while pos < n:
            win = self._open.get(self._next_index)
            if win is None:
                win = self._open[self._next_index] = ClosedWindow(self._next_index, math.nan, math.nan,
                                                                    WindowStats(self.n_concepts))
            take = min(size - win.stats.n_images, n - pos)
            win.stats.update(codes, ts, rows=slice(pos, pos + take))  # a view of the batch's rows, no mask
            win.n_reference += max(0, min(n_reference, pos + take) - pos)
            pos += take
            if win.stats.n_images >= size:
                self._close_count(win)
                closed.append(self._open.pop(win.index))
                self._next_index += 1
        self.n_images += n
        self.max_event_time = max(self.max_event_time, float(ts.max()))
        return closed

    @staticmethod
    def _close_count(win: ClosedWindow) -> None:
        t = win.stats.time
        win.start = t.min
        win.end = float(np.nextafter(t.max, math.inf))

    # -- time windows -----------------------------------------------------------------------------------------
    def _window_bounds(self, index: int) -> tuple[float, float]:
        start = self.config.origin + index * self.config.size
        return start, start + self.config.size

    def _add_time(self, codes: SparseCodes, ts: np.ndarray, n_reference: int) -> list[ClosedWindow]:
        cfg = self.config
        if not np.all(np.isfinite(ts)):
            raise ValueError("timestamps: event times must be finite for time windows")
        if cfg.max_skew is not None and len(ts) > 1:
            med = float(np.median(ts))
            ahead = ts > med + cfg.max_skew
            if ahead.any():
                self.n_skewed += int(ahead.sum())
                ts = np.where(ahead, med, ts)
        idx = np.floor((ts - cfg.origin) / cfg.size).astype(np.int64)
        late = idx < self._next_index
        n_late = int(late.sum())
        keep = np.ones(len(codes), dtype=bool)
        if n_late:
            self.n_late += n_late
            if cfg.late_policy == "drop":
                keep &= ~late
                self.n_dropped += n_late
            else:
                target = min(self._open) if self._open else self._next_index
                idx = np.where(late, target, idx)
        is_ref = np.arange(len(codes)) < n_reference
        for w in np.unique(idx[keep]):
            rows = keep & (idx == w)
            win = self._open.get(int(w))
            if win is None:
                start, end = self._window_bounds(int(w))
                win = self._open[int(w)] = ClosedWindow(int(w), start, end, WindowStats(self.n_concepts))
            win.stats.update(codes, ts, rows=rows)
            if n_late:
                win.n_late += int((rows & late).sum())
            win.n_reference += int((rows & is_ref).sum())
        self.n_images += int(keep.sum())
        self.max_event_time = max(self.max_event_time, float(ts.max()))
        return self._close_time()

    def _close_time(self) -> list[ClosedWindow]:
        cfg = self.config
        floor = int(math.floor((self.watermark - cfg.origin) / cfg.size)) if math.isfinite(self.watermark) else None
        closed = []
        for i in sorted(self._open):
            too_many = len(self._open) > cfg.max_open
            if (floor is not None and i < floor) or too_many:
                closed.append(self._open.pop(i))
                self._next_index = max(self._next_index, i + 1)
        if floor is not None:
            self._next_index = max(self._next_index, floor)
        return closed

    # -- state ------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "n_concepts": self.n_concepts,
            "open": {str(i): w.state_dict() for i, w in self._open.items()},
            "next_index": self._next_index,
            "max_event_time": self.max_event_time,
            "n_late": self.n_late,
            "n_dropped": self.n_dropped,
            "n_skewed": self.n_skewed,
            "n_images": self.n_images,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "TumblingWindows":
        out = cls(int(state["n_concepts"]), WindowConfig(**state["config"]))
        out._open = {int(i): ClosedWindow.from_state(w) for i, w in state["open"].items()}
        out._next_index = int(state["next_index"])
        out.max_event_time = float(state["max_event_time"])
        out.n_late, out.n_dropped = int(state["n_late"]), int(state["n_dropped"])
        out.n_skewed = int(state.get("n_skewed", 0))
        out.n_images = int(state["n_images"])
        return out


class WindowRing:
    """The last ``capacity`` closed windows; sliding views are merges over the newest of them."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"WindowRing capacity must be >= 1, got {capacity!r}")
        self.capacity = int(capacity)
        self._windows: deque[ClosedWindow] = deque(maxlen=self.capacity)

    def push(self, window: ClosedWindow) -> None:
        self._windows.append(window)

    def __len__(self) -> int:
        return len(self._windows)

    def __iter__(self):
        return iter(self._windows)

    def last(self, k: int, skip: int = 0) -> list[ClosedWindow]:
        """The ``k`` windows before the newest ``skip`` ones, oldest first (fewer if the ring is short)."""
        items = list(self._windows)
        end = len(items) - skip
        return items[max(0, end - k): max(0, end)]

    def view(self, k: int, skip: int = 0) -> tuple[WindowStats, float, float] | None:
        """Merged statistics and bounds of :meth:`last`; None when no window is available."""
        wins = self.last(k, skip)
        if not wins:
            return None
        merged = wins[0].stats.copy()
        for w in wins[1:]:
            merged.merge(w.stats)
        return merged, wins[0].start, wins[-1].end

    def state_dict(self) -> dict[str, Any]:
        return {"capacity": self.capacity, "windows": {str(i): w.state_dict() for i, w in enumerate(self._windows)}}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "WindowRing":
        out = cls(int(state["capacity"]))
        for key in sorted(state["windows"], key=int):
            out.push(ClosedWindow.from_state(state["windows"][key]))
        return out


@dataclass(frozen=True)
class ReferenceConfig:
    """What the current view is compared with: ``fixed`` (the stream's first ``n_images`` images), ``trailing``
    (the ``trailing_windows`` closed windows just before the current view) or ``history`` (a loaded window)."""

    mode: str = "fixed"
    n_images: int = 10_000
    trailing_windows: int = 10

    def __post_init__(self) -> None:
        if self.mode not in REFERENCE_MODES:
            raise ConfigError(f"ReferenceConfig.mode must be one of {REFERENCE_MODES}, got {self.mode!r}")
        if self.n_images < 1:
            raise ConfigError(f"ReferenceConfig.n_images must be >= 1, got {self.n_images!r}")
        if self.trailing_windows < 1:
            raise ConfigError(f"ReferenceConfig.trailing_windows must be >= 1, got {self.trailing_windows!r}")


class Reference:
    """Holds every kind of reference at once so that switching mode never loses state: the fixed reference keeps
    accumulating its first N images whatever the mode, a loaded history window stays loaded, and the trailing
    reference is a view over the ring of closed windows."""

    def __init__(self, n_concepts: int, config: ReferenceConfig | None = None) -> None:
        self.config = config or ReferenceConfig()
        self.n_concepts = int(n_concepts)
        self.fixed = WindowStats(n_concepts)
        self.history: WindowStats | None = None
        self.history_bounds = (math.nan, math.nan)

    @property
    def mode(self) -> str:
        return self.config.mode

    @property
    def fixed_complete(self) -> bool:
        return self.fixed.n_images >= self.config.n_images

    def set_mode(self, mode: str, **changes: Any) -> None:
        """Switch mode (and optionally ``n_images`` / ``trailing_windows``); accumulated state is kept."""
        self.config = ReferenceConfig(**{**asdict(self.config), "mode": mode, **changes})

    def offer(self, codes: SparseCodes, timestamps: np.ndarray) -> int:
        """Feed the fixed reference from the head of a batch; returns how many leading rows it took."""
        need = self.config.n_images - self.fixed.n_images
        if need <= 0:
            return 0
        take = min(need, len(codes))
        self.fixed.update(codes, timestamps, rows=np.arange(take))
        return take

    def load(self, reference: WindowSummary | WindowStats, start: float | None = None,
             end: float | None = None) -> None:
        """Use a stored window (e.g. from the history store) as the reference and switch to ``history`` mode."""
        if isinstance(reference, WindowSummary):
            stats = WindowStats.from_summary(reference)
            start = reference.start if start is None else start
            end = reference.end if end is None else end
        elif isinstance(reference, WindowStats):
            stats = reference.copy()
        else:
            raise TypeError(f"reference must be a WindowSummary or WindowStats, got {type(reference).__name__}")
        if stats.n_concepts != self.n_concepts:
            raise ValueError(f"reference has {stats.n_concepts} concepts, the monitor {self.n_concepts}")
        self.history = stats
        self.history_bounds = (math.nan if start is None else float(start), math.nan if end is None else float(end))
        self.set_mode("history")

    def ready(self, ring: WindowRing, view: int) -> bool:
        """Whether :meth:`get` would return a reference (without merging anything)."""
        if self.mode == "fixed":
            return self.fixed_complete
        if self.mode == "history":
            return self.history is not None
        return len(ring) >= view + self.config.trailing_windows

    def get(self, ring: WindowRing, view: int) -> tuple[WindowStats, float, float] | None:
        """The reference for a test whose current view is the newest ``view`` windows of ``ring``; None if not
        ready (fixed: fewer than N images yet; trailing: not enough closed windows; history: nothing loaded)."""
        if self.mode == "fixed":
            if not self.fixed_complete:
                return None
            t = self.fixed.time
            return self.fixed, t.min, float(np.nextafter(t.max, math.inf))
        if self.mode == "history":
            if self.history is None:
                return None
            return self.history, *self.history_bounds
        k = self.config.trailing_windows
        if len(ring) < view + k:
            return None
        return ring.view(k, skip=view)

    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config),
            "n_concepts": self.n_concepts,
            "fixed": self.fixed.state_dict(),
            "history": None if self.history is None else self.history.state_dict(),
            "history_bounds": list(self.history_bounds),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "Reference":
        out = cls(int(state["n_concepts"]), ReferenceConfig(**state["config"]))
        out.fixed = WindowStats.from_state(state["fixed"])
        out.history = None if state["history"] is None else WindowStats.from_state(state["history"])
        out.history_bounds = tuple(float(x) for x in state["history_bounds"])
        return out
