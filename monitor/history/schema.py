"""What the history store's files hold: the Arrow schemas of its tables, the batch ids that name its files, the
directory key of a stream, and the time helpers (user-given times, UTC day partitions) its layout is built on."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import time
import uuid
from urllib.parse import quote, unquote

import numpy as np
import pyarrow as pa

__all__ = [
    "ALARM_SCHEMA", "CODES_SCHEMA", "CONCEPT_SCHEMA", "DAY", "FORMAT_NAME", "ROLLUP_SCHEMA", "SCHEMAS",
    "SCHEMA_VERSION", "STREAM_KEY_MAX_BYTES", "TABLES", "WINDOW_SCHEMA", "batch_seconds", "conform", "day_from_name",
    "day_name", "day_numbers", "merged_batch_id", "new_batch_id", "parse_time", "stream_from_key", "stream_key",
]

# 2: windows and their concept rows carry ``window_index`` (count windows are numbered by position in the stream, so
# windows that share a start no longer replace each other). Version-1 files read with window_index = -1.
SCHEMA_VERSION = 2
FORMAT_NAME = "splice-monitor-history"
DAY = 86400.0
TABLES = ("windows", "window_concepts", "window_rollups", "alarms", "codes")
# Small row groups in the concept-sorted long table let a trend read only the row groups holding its concepts.
CONCEPT_ROW_GROUP = 4096
META_KEY_VERSION = b"splice_monitor.schema_version"
META_KEY_SPACE = b"splice_monitor.concept_space"
NO_INDEX = -1  # window_index of windows written before windows were numbered, or by callers that do not number them

WINDOW_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("n_images", pa.int64()),
        ("n_active", pa.int32()),
        ("fidelity_sum", pa.float64()),
        ("fidelity_sq_sum", pa.float64()),
        ("fidelity_min", pa.float64()),
        ("fidelity_max", pa.float64()),
        ("l0_sum", pa.float64()),
        ("l0_sq_sum", pa.float64()),
        ("batch", pa.string()),
        ("window_index", pa.int64()),
    ]
)
CONCEPT_SCHEMA = pa.schema(
    [
        ("start", pa.float64()),
        ("concept_index", pa.int32()),
        ("weight_sum", pa.float64()),
        ("weight_sq_sum", pa.float64()),
        ("presence", pa.int64()),
        ("window_index", pa.int64()),
    ]
)
# Per-concept totals of one committed windows file: a range covering whole days reads these instead of every window.
ROLLUP_SCHEMA = pa.schema(
    [
        ("concept_index", pa.int32()),
        ("weight_sum", pa.float64()),
        ("weight_sq_sum", pa.float64()),
        ("presence", pa.int64()),
    ]
)
ALARM_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("kind", pa.string()),
        ("direction", pa.string()),
        ("concept_index", pa.int32()),
        ("concept", pa.string()),
        ("reference_prevalence", pa.float64()),
        ("current_prevalence", pa.float64()),
        ("reference_mean", pa.float64()),
        ("current_mean", pa.float64()),
        ("effect_size", pa.float64()),
        ("score", pa.float64()),
        ("p_value", pa.float64()),
        ("window_start", pa.float64()),
        ("window_end", pa.float64()),
        ("reference_start", pa.float64()),
        ("reference_end", pa.float64()),
        ("state", pa.string()),
        # when the alarm fired: files written before these columns existed read back as null (nan / -1)
        ("event_time", pa.float64()),
        ("item_offset", pa.int64()),
        ("batch", pa.string()),
    ]
)
CODES_SCHEMA = pa.schema(
    [
        ("stream", pa.string()),
        ("id", pa.string()),
        ("timestamp", pa.float64()),
        ("metadata", pa.map_(pa.string(), pa.string())),
        ("concept_index", pa.list_(pa.int32())),
        ("weight", pa.list_(pa.float32())),
        ("fidelity", pa.float32()),
        ("l1", pa.float32()),
        ("batch", pa.string()),
    ]
)
SCHEMAS = {
    "windows": WINDOW_SCHEMA,
    "window_concepts": CONCEPT_SCHEMA,
    "window_rollups": ROLLUP_SCHEMA,
    "alarms": ALARM_SCHEMA,
    "codes": CODES_SCHEMA,
}
# Columns added after version 1, with the value older files stand for.
_DEFAULTS = {"window_index": NO_INDEX, "event_time": float("nan"), "item_offset": -1}


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with exactly ``schema``'s columns: columns an older file lacks (or that a dataset scan filled with
    nulls) get their documented default, so version-1 files read like current ones."""
    if table.column_names == schema.names and all(
        name not in schema.names or not table[name].null_count for name in _DEFAULTS
    ):
        return table  # the common case, kept cheap: it runs once per file read
    for name, default in _DEFAULTS.items():
        i = schema.get_field_index(name)
        if i < 0:
            continue
        if name not in table.column_names:
            table = table.append_column(name, pa.array(np.full(table.num_rows, default), schema.field(name).type))
        elif table[name].null_count:
            j = table.schema.get_field_index(name)
            table = table.set_column(j, name, table[name].fill_null(pa.scalar(default, schema.field(name).type)))
    names = [n for n in schema.names if n in table.column_names]
    table = table.select(names)
    return table.cast(pa.schema([schema.field(n) for n in names])) if table.schema != schema else table


# ---------------------------------------------------------------------------------------------------- times


def parse_time(value: str | float | int | None, *, name: str = "time") -> float | None:
    """Unix seconds from a number, an ISO-8601 date/time (naive means UTC) or ``now``; None passes through.

    >>> parse_time("2026-03-01")
    1772323200.0
    >>> parse_time("1772323200")
    1772323200.0
    """
    from datetime import datetime, timezone

    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
        return float(value)
    text = str(value).strip()
    if text.lower() == "now":
        return time.time()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{name}={value!r} is not a time: use unix seconds, an ISO-8601 date or time "
            f"(e.g. 2026-03-01 or 2026-03-01T12:00:00Z) or 'now'"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def day_numbers(t: np.ndarray) -> np.ndarray:
    """UTC day numbers (days since the epoch) of unix times."""
    return np.floor(np.asarray(t, dtype=np.float64) / DAY).astype(np.int64)


def day_name(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def day_from_name(name: str) -> int:
    return int(np.datetime64(name, "D").astype(np.int64))


# ---------------------------------------------------------------------------------------------------- batch ids

_batch_lock = threading.Lock()
_last_batch_ns = 0


def new_batch_id() -> str:
    """Sortable by write time (ns, strictly increasing within a process) and unique across processes."""
    global _last_batch_ns
    with _batch_lock:
        now = max(time.time_ns(), _last_batch_ns + 1)
        _last_batch_ns = now
    return f"{now:020d}-{uuid.uuid4().hex[:10]}"


def merged_batch_id(inputs: list[str]) -> str:
    """The id of a file that merges ``inputs``: it sorts right after the newest of them and before any batch written
    later, so a window rewritten after the merge's inputs were listed still wins over the merged copy."""
    return f"{max(inputs)}-c"


def batch_seconds(batch: str) -> float | None:
    """The write time (unix seconds) a batch id starts with, or None for a name that is no batch id."""
    head = batch[:20]
    return int(head) / 1e9 if len(head) == 20 and head.isdigit() else None


# ---------------------------------------------------------------------------------------------------- stream keys

# A stream's directory is "stream=<key>". Names whose escaped form is short keep it (readable and reversible, as in
# version 1); longer ones (a 29-character non-ASCII name escapes to 261 bytes, past the 255-byte limit of most
# filesystems) get a readable prefix and a hash, and the name itself is kept in the rows and in streams/<key>.json.
STREAM_KEY_MAX_BYTES = 120
_HASH_MARK = "%~"  # quote() never writes "%" without two hex digits after it, so no escaped name contains this
_READABLE = re.compile(r"[^A-Za-z0-9._-]+")


def stream_key(stream: str) -> str:
    """The bounded, collision-free directory key of a stream name."""
    escaped = quote(stream, safe="")
    if len(escaped) <= STREAM_KEY_MAX_BYTES:
        return escaped
    prefix = _READABLE.sub("_", stream)[:40].strip("_.") or "stream"
    digest = hashlib.sha256(stream.encode("utf-8", "surrogatepass")).hexdigest()[:32]
    return f"{prefix}{_HASH_MARK}{digest}"


def stream_from_key(key: str) -> str | None:
    """The stream name of a reversible key, or None for a hashed key (its name lives in the registry)."""
    return None if _HASH_MARK in key else unquote(key)
