"""Event times from source records, checked at the edge: a timestamp that is missing, unparsable, not finite or
outside the plausible range is a property of that one item (dead-lettered as ``bad_timestamp``), never an error
that stops the stream or, on Redis, crashes every restart on the same unacknowledged entry."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

__all__ = ["EARLIEST_EVENT_TIME", "LATEST_EVENT_TIME", "EpochSeconds", "parse_timestamp", "check_event_time", "timestamp_error"]

# Plausible event times: from the Unix epoch to 2100-01-01 UTC. Anything outside is a unit mix-up or garbage (year
# 9999 sentinels, 1e400 parsed as inf); letting it through would open a window centuries away and stall the
# watermark of every event-time window of the stream.
EARLIEST_EVENT_TIME = 0.0
LATEST_EVENT_TIME = 4_102_444_800.0


class EpochSeconds(float):
    """A time already in unix seconds (decoded from an Arrow timestamp): never rescaled as ms, µs or ns."""


def check_event_time(t: float, *, where: str) -> float:
    """``t`` as a float if it is a finite unix time within [EARLIEST_EVENT_TIME, LATEST_EVENT_TIME); else ValueError."""
    t = float(t)
    if not math.isfinite(t):
        raise ValueError(f"{where}: event time must be finite, got {t!r}")
    if not EARLIEST_EVENT_TIME <= t < LATEST_EVENT_TIME:
        raise ValueError(f"{where}: event time {t!r} is outside 1970-01-01..2100-01-01 UTC (unix seconds "
                         f"{EARLIEST_EVENT_TIME:.0f}..{LATEST_EVENT_TIME:.0f})")
    return t


def parse_timestamp(value: Any, *, where: str) -> float:
    """Event time in unix seconds from a number (s, ms, µs or ns since the epoch), an ISO-8601 string, bytes or a
    datetime; ValueError when it is missing, unparsable or implausible (see :func:`check_event_time`)."""
    if value is None:
        raise ValueError(f"{where}: timestamp is missing")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return check_event_time(value.timestamp(), where=where)
    if isinstance(value, EpochSeconds):
        return check_event_time(value, where=where)
    if isinstance(value, bool):
        raise ValueError(f"{where}: a boolean is not a timestamp")
    if isinstance(value, (int, float)):
        try:
            t = float(value)
        except OverflowError:  # an int beyond float range
            raise ValueError(f"{where}: timestamp {value!r} is out of range") from None
    else:
        s = str(value).strip()
        try:
            t = float(s)
        except ValueError:
            try:
                dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            except ValueError:
                raise ValueError(f"{where}: {s[:60]!r} is neither a number nor an ISO-8601 time") from None
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return check_event_time(dt.timestamp(), where=where)
    if math.isfinite(t):
        if t > 1e14:  # nanoseconds or microseconds since the epoch
            t = t / 1e9 if t > 1e17 else t / 1e6
        elif t > 1e11:  # milliseconds
            t = t / 1e3
    return check_event_time(t, where=where)


def timestamp_error(value: Any, *, where: str) -> tuple[float | None, tuple[str, str] | None]:
    """(event time, None), or (None, ("bad_timestamp", detail)) for a value :func:`parse_timestamp` refuses."""
    try:
        return parse_timestamp(value, where=where), None
    except (ValueError, TypeError, OverflowError) as exc:
        return None, ("bad_timestamp", str(exc))
