"""What a stream monitor reports about itself: :class:`StreamProgress`, the counts that say how far a stream got
(cheap enough to read at every batch), and :class:`StreamStatus`, those counts plus what the drift tests and windows
know now (read by the exporter and the history store)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from monitor.records import Alarm, WindowSummary

__all__ = ["StreamProgress", "StreamStatus"]

@dataclass(frozen=True)
class StreamProgress:
    """How far a stream got: its reference fill and the tests run. :meth:`StreamMonitor.progress` builds it without
    reading out the drift tests, so it is cheap enough for every batch."""

    stream: str
    n_images: int
    n_windows: int  # closed windows so far
    steps: int  # tests run so far
    reference_mode: str
    reference_ready: bool


@dataclass(frozen=True)
class StreamStatus(StreamProgress):
    """What one stream's monitor knows now: its :class:`StreamProgress` and what the windows and drift tests hold;
    the exporter and the history store read this."""

    n_late: int
    n_dropped: int
    n_skewed: int  # events whose clock ran more than window.max_skew ahead of their batch
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

    @classmethod
    def extend(cls, progress: StreamProgress, **rest) -> "StreamStatus":
        """The status of a stream whose counts are ``progress``, with the other fields from ``rest``."""
        return cls(**{f.name: getattr(progress, f.name) for f in fields(StreamProgress)}, **rest)
