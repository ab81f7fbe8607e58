"""What a pipeline run reports: the periodic :class:`Status` while it runs and the :class:`RunSummary` at its end
(the summary the commands print, as text or JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from monitor.records import Alarm

__all__ = ["Status", "RunSummary", "reference_fill", "reference_notice"]


@dataclass(frozen=True)
class Status:
    """A running pipeline's progress, for the periodic status line: counts of this run, the throughput since the
    previous status, items read but not yet committed, and the read-to-commit latency of the latest batch."""

    items: int
    dead_letters: int
    windows_closed: int
    alarms_fired: int
    items_per_s: float
    in_flight: int
    latency_s: float
    elapsed_s: float

    def format(self) -> str:
        return (f"{self.items:,} items ({self.items_per_s:,.1f}/s), {self.windows_closed} windows closed, "
                f"{self.alarms_fired} alarms, {self.dead_letters} dead letters, {self.in_flight} in flight, "
                f"latency {self.latency_s:.1f} s")


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
    references: dict[str, dict[str, Any]] = field(default_factory=dict)  # stream -> reference_fill(...)
    signal: str | None = None  # the signal that stopped the run (stopped_by == "signal"), e.g. "SIGINT"
    images_per_aggregator: list[int] = field(default_factory=list)  # by shard (--aggregators), for load balance

    @property
    def notices(self) -> list[str]:
        """One line per stream on which no drift test ran, saying why and what to change."""
        out = []
        for stream, fill in sorted(self.references.items()):
            note = reference_notice(fill)
            if note:
                out.append(note if len(self.references) == 1 else f"{stream}: {note}")
        return out

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
            "signal": self.signal,
            "streams": self.streams,
            "nonconverged": self.nonconverged,
            "references": self.references,
            "notices": self.notices,
            "alarm_events": [_alarm_event(a) for a in self.alarms],
            "images_per_aggregator": self.images_per_aggregator,
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
        lines += [f"notice:         {note}" for note in self.notices]
        return "\n".join(lines)


def reference_fill(status, config) -> dict[str, Any]:
    """How far a stream's reference is built, from its ``StreamStatus`` and the ``MonitorConfig``: the reference
    mode, what it holds and needs (images for ``fixed``, closed windows for ``trailing``, a loaded period for
    ``history``), their ratio and how many drift tests ran."""
    mode = status.reference_mode
    if mode == "fixed":
        needed = int(config.reference.n_images)
        filled = min(int(status.n_images), needed)
    elif mode == "trailing":
        needed = int(config.window.view + config.reference.trailing_windows)
        filled = min(int(status.n_windows), needed)
    else:
        needed, filled = 1, 0
    if status.reference_ready:
        filled = needed
    return {"mode": mode, "filled": filled, "needed": needed, "ratio": filled / needed, "tests": int(status.steps)}


def reference_notice(fill: dict[str, Any]) -> str | None:
    """The line that says no drift test ran and what to change; None when tests ran."""
    if fill["tests"] > 0:
        return None
    mode, filled, needed = fill["mode"], fill["filled"], fill["needed"]
    if filled < needed:
        if mode == "fixed":
            return (f"reference {filled:,}/{needed:,}: no drift test ran; use --reference-images N or "
                    f"--reference history")
        if mode == "trailing":
            return (f"reference {filled:,}/{needed:,} windows: no drift test ran; use a smaller --window or "
                    f"--reference fixed")
        return "no history reference loaded: no drift test ran; check --reference-from/--reference-to"
    return (f"reference {filled:,}/{needed:,} but no window closed after it: no drift test ran; use a smaller "
            f"--window or --reference-images N")


def _alarm_event(alarm: Alarm) -> dict[str, Any]:
    return {"stream": alarm.stream, "kind": alarm.kind, "direction": alarm.direction, "concept": alarm.concept,
            "state": alarm.state, "effect_size": alarm.effect_size, "p_value": alarm.p_value,
            "window_start": alarm.window_start, "window_end": alarm.window_end, "event_time": alarm.event_time,
            "item_offset": alarm.item_offset, "text": alarm.describe()}
