"""Parquet history of a monitored stream: closed-window aggregates, alarms and (optionally) per-image sparse codes,
partitioned by stream and UTC date, written atomically, tied to one concept space, compacted and pruned on demand.

Layout on disk (see docs/history.md)::

    ROOT/store.json                                   format, schema version, concept space, concept names
    ROOT/windows/stream=S/date=YYYY-MM-DD/B.parquet   one row per window (counts, fidelity and l0 sums)
    ROOT/window_concepts/stream=S/date=D/B.parquet    one row per (window, concept with presence > 0)
    ROOT/window_rollups/stream=S/date=D/B.parquet     per-concept totals of windows file B (whole-day queries)
    ROOT/alarms/stream=S/date=D/B.parquet             one row per alarm
    ROOT/codes/stream=S/date=D/B.parquet              one row per image: id, time, metadata, concept lists
    ROOT/checkpoints/JOB.json                         resumable-job progress (backfill)

ROOT is a local directory or an object-store prefix (``s3://bucket/prefix``, ``gs://...``, ``file:///abs``); every
file operation goes through :class:`StoreFS` (a pyarrow filesystem plus the root). On a local disk every file is
written under a dot-prefixed temporary name and renamed into place; on an object store it is uploaded as one object,
which becomes visible only when complete. Either way a reader never sees a half file; a window batch is committed by
its ``windows`` file, written after its ``window_concepts`` file, so a crash between the two leaves an orphan that
readers skip and ``compact()`` removes. Rewriting a window (same stream and start) replaces it: the batch written
last wins, which makes resumed backfills idempotent.

>>> import tempfile, numpy as np
>>> from monitor.records import WindowSummary
>>> root = tempfile.mkdtemp()
>>> store = HistoryStore(root, concept_space="demo-v1", concept_names=["cat", "dog", "snow"])
>>> w = WindowSummary("cam-7", 0.0, 3600.0, 10, np.array([1.5, 0, 2.0]), np.array([0.5, 0, 1.0]),
...                   np.array([4, 0, 7]), concept_space="demo-v1")
>>> store.write_windows([w])
1
>>> [(r.stream, r.n_images, r.presence.tolist()) for r in store.read_windows()]
[('cam-7', 10, [4, 0, 7])]
"""

from __future__ import annotations

from monitor.errors import NoDataError  # noqa: F401  (re-exported for callers of this module)
import hashlib
import json
import math
import os
import re
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monitor.atomic import atomic_put, atomic_write_bytes, is_temp_name
from monitor.errors import ConfigError
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary

__all__ = [
    "SCHEMA_VERSION",
    "URI_SCHEMES",
    "HistoryStore",
    "StoreFS",
    "NoDataError",
    "WindowData",
    "parse_time",
]

SCHEMA_VERSION = 1
FORMAT_NAME = "splice-monitor-history"
DAY = 86400.0
TABLES = ("windows", "window_concepts", "window_rollups", "alarms", "codes")
# Small row groups in the concept-sorted long table let a trend read only the row groups holding its concepts.
_CONCEPT_ROW_GROUP = 4096
_META_KEY_VERSION = b"splice_monitor.schema_version"
_META_KEY_SPACE = b"splice_monitor.concept_space"
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

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
    ]
)
CONCEPT_SCHEMA = pa.schema(
    [
        ("start", pa.float64()),
        ("concept_index", pa.int32()),
        ("weight_sum", pa.float64()),
        ("weight_sq_sum", pa.float64()),
        ("presence", pa.int64()),
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


def _day_numbers(t: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(t, dtype=np.float64) / DAY).astype(np.int64)


def _day_name(day: int) -> str:
    return str(np.datetime64(int(day), "D"))


def _day_from_name(name: str) -> int:
    return int(np.datetime64(name, "D").astype(np.int64))


_batch_lock = threading.Lock()
_last_batch_ns = 0


def _new_batch_id() -> str:
    """Sortable by write time (ns, strictly increasing within a process) and unique across processes."""
    global _last_batch_ns
    with _batch_lock:
        now = max(time.time_ns(), _last_batch_ns + 1)
        _last_batch_ns = now
    return f"{now:020d}-{uuid.uuid4().hex[:10]}"


_LOCAL_FS = pafs.LocalFileSystem()


# Schemes a history root may use, and what each needs (quoted in errors).
URI_SCHEMES = {
    "file": "file:///absolute/path (local disk, same as a plain path)",
    "s3": "s3://bucket/prefix (AWS or S3-compatible; credentials from AWS_* variables or the instance role)",
    "gs": "gs://bucket/prefix (Google Cloud Storage; application-default credentials)",
    "gcs": "gcs://bucket/prefix (same as gs://)",
    "abfs": "abfs://container@account.dfs.core.windows.net/prefix (Azure; AZURE_* credentials)",
    "abfss": "abfss://container@account.dfs.core.windows.net/prefix (same as abfs://)",
}
# What to check when a store cannot be reached, by scheme ("" = local path).
_ACCESS_HINTS = {
    "": "check that the directory is readable and writable",
    "file": "check that the directory is readable and writable",
    "s3": "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's role), AWS_ENDPOINT_URL, "
          "AWS_REGION and the network",
    "gs": "check the credentials (GOOGLE_APPLICATION_CREDENTIALS or workload identity) and the network",
    "abfs": "check the credentials (AZURE_* variables or the managed identity) and the network",
}
_ACCESS_HINTS["gcs"] = _ACCESS_HINTS["gs"]
_ACCESS_HINTS["abfss"] = _ACCESS_HINTS["abfs"]
# "s3:", "gs:", "C:": anything that starts like a URI scheme is treated as one, never as a local folder name.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _redact(uri: str) -> str:
    """A URI fit for messages: no user:secret@ part."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc or parts.scheme in ("abfs", "abfss"):  # abfs's user part is the container name
        return uri
    return urlunsplit(parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


class StoreFS:
    """Where a history store lives: a pyarrow filesystem, the root's path inside it, and how files are committed.

    Every file operation of :class:`HistoryStore` goes through here, so a local directory and an object-store
    prefix share one code path. ``commit`` is the atomicity rule: ``"rename"`` writes a dot-prefixed temporary,
    fsyncs it and renames it over the final name (local disks: rename(2) is atomic); ``"put"`` writes the final key
    in one upload (object stores: an object becomes visible only once its upload completes, and their "rename" is a
    non-atomic copy + delete). Paths are ``pathlib.Path`` on a local disk and ``PurePosixPath`` ("bucket/prefix/...")
    elsewhere, so nothing but this class ever touches them.
    """

    def __init__(self, fs: pafs.FileSystem, base: str, *, uri: str, commit: str | None = None) -> None:
        self.fs = fs
        self.local = isinstance(fs, pafs.LocalFileSystem)
        if commit is None:
            commit = "rename" if self.local else "put"
        if commit not in ("rename", "put"):
            raise ConfigError(f"commit must be 'rename' or 'put', got {commit!r}")
        if commit == "rename" and not self.local:
            raise ConfigError(f"history store {uri!r}: commit='rename' needs a local filesystem (an object store's "
                              f"rename is a copy + delete, not atomic); use commit='put'")
        self.commit = commit
        self.uri = uri
        match = _SCHEME.match(uri)
        self.scheme = match.group(1).lower() if match else ""
        self.base: PurePath = Path(base) if self.local else PurePosixPath(base.rstrip("/"))

    @classmethod
    def from_root(cls, root: "str | os.PathLike[str] | StoreFS", *, commit: str | None = None) -> "StoreFS":
        """A local path (str or Path) or a URI with one of :data:`URI_SCHEMES`; anything else is a ConfigError."""
        if isinstance(root, StoreFS):
            return root if commit is None else cls(root.fs, str(root.base), uri=root.uri, commit=commit)
        text = os.fspath(root)
        if not isinstance(text, str):
            raise ConfigError(f"history root must be a path or URI string, got {root!r}")
        match = _SCHEME.match(text)
        if match is None:
            if not text:
                raise ConfigError("history root is empty: give a directory or a URI such as s3://bucket/prefix")
            return cls(_LOCAL_FS, os.path.abspath(text), uri=text, commit=commit)
        scheme = match.group(1).lower()
        shown = _redact(text)
        allowed = ", ".join(v.split(" ", 1)[0] for v in URI_SCHEMES.values())
        if scheme not in URI_SCHEMES:
            local_hint = "" if "://" in text else f" (a local folder whose name contains ':' is written ./{text})"
            raise ConfigError(
                f"history root {shown!r}: unknown scheme {scheme + ':'!r}; use a local directory or one of: "
                f"{allowed}{local_hint}"
            )
        if scheme != "file" and not text[match.end():].startswith("//"):
            # "s3:/bucket" is what pathlib makes of "s3://bucket": refuse rather than guess
            raise ConfigError(
                f"history root {shown!r} is not a valid {scheme}:// URI (need {URI_SCHEMES[scheme]}); a path "
                f"object collapses '//', so pass URIs as strings"
            )
        try:
            fs, base = pafs.FileSystem.from_uri(text)
        except (pa.ArrowException, OSError, ValueError) as exc:
            raise ConfigError(
                f"history root {shown!r}: pyarrow cannot open it here ({_short(exc)}); expected {URI_SCHEMES[scheme]}"
            ) from None
        if not base.strip("/"):
            raise ConfigError(f"history root {shown!r} names no bucket or path; expected {URI_SCHEMES[scheme]}")
        return cls(fs, base, uri=shown, commit=commit)

    # paths
    def join(self, *parts: str) -> PurePath:
        return self.base.joinpath(*parts)

    # queries
    def kind(self, path: PurePath) -> pafs.FileType:
        return self.fs.get_file_info(str(path)).type

    def exists(self, path: PurePath) -> bool:
        return self.kind(path) != pafs.FileType.NotFound

    def is_dir(self, path: PurePath) -> bool:
        return self.kind(path) == pafs.FileType.Directory

    def list(self, directory: PurePath) -> list[pafs.FileInfo]:
        """Entries directly under ``directory`` (none when it does not exist)."""
        return self.fs.get_file_info(pafs.FileSelector(str(directory), allow_not_found=True))

    def sizes(self, paths: Sequence[PurePath]) -> list[int]:
        return [i.size or 0 for i in self.fs.get_file_info([str(p) for p in paths])] if paths else []

    # reads
    def read_bytes(self, path: PurePath) -> bytes:
        with self.fs.open_input_stream(str(path)) as fh:
            return fh.read()

    def open_input(self, path: PurePath) -> pa.NativeFile:
        return self.fs.open_input_file(str(path))

    # writes
    def makedirs(self, directory: PurePath) -> None:
        if self.local:  # object stores have no directories: a key's prefix exists once the key does
            self.fs.create_dir(str(directory), recursive=True)

    def write_bytes(self, final: PurePath, data: bytes | pa.Buffer, *, fresh: bool = False) -> None:
        """Make ``final`` hold exactly ``data``, atomically for readers (the rule of ``self.commit``). ``fresh``
        says no earlier version of ``final`` exists (a new batch id), so a failed upload may delete it."""
        if self.commit == "put":
            self.makedirs(final.parent)  # a local tree served as if it were an object store (file:// with put)
            atomic_put(self.fs, str(final), data, fresh=fresh)
        else:
            atomic_write_bytes(final, data)

    def delete_file(self, path: PurePath, *, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_file(str(path))
        except FileNotFoundError:
            if not missing_ok:
                raise

    def delete_dir(self, path: PurePath, *, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_dir(str(path))
        except FileNotFoundError:
            if not missing_ok:
                raise


def _is_visible(name: str) -> bool:
    """Readers look only at committed files: temporaries start with a dot."""
    return name.endswith(".parquet") and not name.startswith(".")


def retry_if_compacted(fn):
    """Run a read again (once) when a file it listed vanished: ``compact()`` or retention removed it mid-read, and
    the files that replaced it hold the same rows."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            return fn(*args, **kwargs)

    return wrapper


@dataclass
class WindowData:
    """Window aggregates of a query in columnar form: ``header`` has one row per window (WINDOW_SCHEMA columns),
    ``concepts`` one row per (window, active concept) with ``start`` and ``stream`` identifying the window."""

    header: pa.Table
    concepts: pa.Table


class HistoryStore:
    """Parquet history for one concept space, in a local directory or under an object-store prefix.

    ``HistoryStore(root, concept_space=..., concept_names=[...])`` creates the store or opens it after checking the
    stored concept space and names match (a ConfigError names both otherwise). ``HistoryStore(root)`` opens an
    existing store read-write with whatever space it holds. ``root`` is a local path, a URI with one of
    :data:`URI_SCHEMES` (``s3://bucket/prefix``, ``gs://...``, ``file:///abs/path``) or a :class:`StoreFS`; an
    unknown scheme, or one pyarrow cannot open here, is a ConfigError, never a local folder. One writer process per
    store at a time; readers may run concurrently with it.
    """

    def __init__(
        self,
        root: str | Path | StoreFS,
        *,
        concept_space: str | None = None,
        concept_names: Sequence[str] | None = None,
        codes_retention_days: float | None = None,
        create: bool = True,
    ) -> None:
        if codes_retention_days is not None and not (codes_retention_days > 0):
            raise ConfigError(f"codes_retention_days must be > 0 or None, got {codes_retention_days!r}")
        self._fs = StoreFS.from_root(root)
        # a Path for local stores (as before), the URI (credentials redacted) for object stores
        self.root: Path | str = self._fs.base if self._fs.local else self._fs.uri
        self.codes_retention_days = codes_retention_days
        meta_path = self._fs.join("store.json")
        try:
            found = self._fs.exists(meta_path)
        except OSError as exc:  # the first request: bad credentials, endpoint or network show up here
            hint = _ACCESS_HINTS.get(self._fs.scheme, "check the credentials, the endpoint and the network")
            raise ConfigError(f"history store {self.location!r}: cannot read it ({_short(exc)}); {hint}") from None
        if found:
            meta = self._load_meta(meta_path)
            self._check_compatible(meta, concept_space, concept_names)
        else:
            if not create:
                raise ConfigError(f"no history store at {self.location!r} (missing store.json)")
            if concept_space is None or concept_names is None:
                raise ConfigError(
                    f"no history store at {self.location!r}: to create one pass concept_space and concept_names"
                )
            meta = self._create(meta_path, concept_space, list(concept_names))
        self.schema_version: int = meta["schema_version"]
        self.concept_space: str = meta["concept_space"]
        self.concept_names: list[str] = list(meta["concept_names"])
        self._name_index: dict[str, int] | None = None

    # ------------------------------------------------------------------ identity
    @classmethod
    def open(cls, root: str | Path | StoreFS) -> "HistoryStore":
        """Open an existing store (no creation)."""
        return cls(root, create=False)

    @property
    def location(self) -> str:
        """The root as a user would write it: a local path or the URI (credentials redacted)."""
        return str(self.root)

    @property
    def filesystem(self) -> StoreFS:
        """The store's filesystem and root (for code that must read or write next to the store's files)."""
        return self._fs

    @staticmethod
    def _names_digest(names: Sequence[str]) -> str:
        h = hashlib.sha256()
        for name in names:
            h.update(name.encode("utf-8"))
            h.update(b"\n")
        return h.hexdigest()

    def _create(self, meta_path: PurePath, concept_space: str, names: list[str]) -> dict[str, Any]:
        if not isinstance(concept_space, str) or not concept_space:
            raise ConfigError(f"concept_space must be a non-empty string, got {concept_space!r}")
        if not names:
            raise ConfigError("concept_names must list at least one concept, got an empty list")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})[:5]
            raise ConfigError(f"concept_names must be unique, duplicates: {dupes}")
        meta = {
            "format": FORMAT_NAME,
            "schema_version": SCHEMA_VERSION,
            "concept_space": concept_space,
            "n_concepts": len(names),
            "concept_names_sha256": self._names_digest(names),
            "created": time.time(),
            "concept_names": names,
        }
        try:
            self._fs.makedirs(self._fs.base)
            self._fs.write_bytes(meta_path, json.dumps(meta).encode("utf-8"))
        except OSError as exc:
            raise ConfigError(f"history store {self.location!r}: cannot create it ({_short(exc)})") from None
        return meta

    def _load_meta(self, meta_path: PurePath) -> dict[str, Any]:
        try:
            meta = json.loads(self._fs.read_bytes(meta_path).decode("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"history store {self.location!r}: unreadable store.json ({_short(exc)})") from None
        if meta.get("format") != FORMAT_NAME:
            raise ConfigError(
                f"{self.location.rstrip('/') + '/store.json'!r} is not a splice-monitor history store "
                f"(format={meta.get('format')!r})"
            )
        version = meta.get("schema_version")
        if not isinstance(version, int) or version > SCHEMA_VERSION or version < 1:
            raise ConfigError(
                f"history store {self.location!r} has schema_version={version!r}; this splice-monitor reads "
                f"versions 1..{SCHEMA_VERSION} (upgrade splice-monitor to read newer stores)"
            )
        return meta

    def _check_compatible(
        self, meta: dict[str, Any], concept_space: str | None, concept_names: Sequence[str] | None
    ) -> None:
        stored = meta["concept_space"]
        if concept_space is not None and concept_space != stored:
            raise ConfigError(
                f"history store {self.location!r} holds concept space {stored!r} "
                f"({meta['n_concepts']} concepts) but concept space {concept_space!r} was given; "
                f"concept spaces never mix: use another store directory"
            )
        if concept_names is not None:
            names = list(concept_names)
            if len(names) != meta["n_concepts"] or self._names_digest(names) != meta["concept_names_sha256"]:
                first_diff = next(
                    (i for i, (a, b) in enumerate(zip(names, meta["concept_names"])) if a != b),
                    min(len(names), meta["n_concepts"]),
                )
                raise ConfigError(
                    f"history store {self.location!r} (concept space {stored!r}) has {meta['n_concepts']} concept "
                    f"names; the given list has {len(names)} and differs first at index {first_diff}: the "
                    f"vocabulary changed, so use a new concept space name and another store directory"
                )

    @property
    def n_concepts(self) -> int:
        return len(self.concept_names)

    def concept_index(self, names: Iterable[str | int]) -> np.ndarray:
        """Concept ids for names (ints pass through, checked); unknown names raise with close matches."""
        import difflib

        if self._name_index is None:
            self._name_index = {n: i for i, n in enumerate(self.concept_names)}
        out = []
        for name in names:
            if isinstance(name, (int, np.integer)):
                if not 0 <= int(name) < self.n_concepts:
                    raise ValueError(f"concept id {name} out of range [0, {self.n_concepts})")
                out.append(int(name))
                continue
            idx = self._name_index.get(name)
            if idx is None:
                close = difflib.get_close_matches(str(name), self.concept_names, n=5)
                raise ValueError(
                    f"concept {name!r} is not in concept space {self.concept_space!r} "
                    f"({self.n_concepts} concepts); close matches: {close or 'none'}"
                )
            out.append(idx)
        return np.asarray(out, dtype=np.int64)

    def check_same_space(self, other: "HistoryStore") -> None:
        """Raise ConfigError unless ``other`` indexes the same concepts (analysis never mixes spaces)."""
        if other.concept_space != self.concept_space or other.concept_names != self.concept_names:
            raise ConfigError(
                f"cannot mix concept spaces: {self.location!r} holds {self.concept_space!r} "
                f"({self.n_concepts} concepts) and {other.location!r} holds {other.concept_space!r} "
                f"({other.n_concepts} concepts)"
            )

    # ------------------------------------------------------------------ paths
    def _partition_dir(self, table: str, stream: str, day: int) -> PurePath:
        return self._fs.join(table, f"stream={quote(stream, safe='')}", f"date={_day_name(day)}")

    def _partitions(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, PurePath]]:
        """(stream, day, dir) of every partition that may hold rows with time in [start, end)."""
        base = self._fs.join(table)
        wanted = None if streams is None else set(streams)
        lo = -(2**62) if start is None else int(math.floor(start / DAY))
        hi = 2**62 if end is None else int(math.ceil(end / DAY)) - 1
        out = []
        dirs = pafs.FileType.Directory
        for sdir in sorted(self._fs.list(base), key=lambda i: i.base_name):
            if not sdir.base_name.startswith("stream=") or sdir.type != dirs:
                continue
            stream = unquote(sdir.base_name[len("stream=") :])
            if wanted is not None and stream not in wanted:
                continue
            for ddir in sorted(self._fs.list(base / sdir.base_name), key=lambda i: i.base_name):
                if not ddir.base_name.startswith("date=") or ddir.type != dirs:
                    continue
                try:
                    day = _day_from_name(ddir.base_name[len("date=") :])
                except ValueError:
                    continue
                if lo <= day <= hi:
                    out.append((stream, day, base / sdir.base_name / ddir.base_name))
        return out

    def _listing(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, list[PurePath]]]:
        """(stream, day, committed files) of every non-empty partition that may hold rows with time in [start, end),
        from one recursive listing per table (or per wanted stream): on an object store that is one paginated LIST
        instead of one request per partition."""
        base = self._fs.join(table)
        if streams is None:
            roots = [base]
        else:
            roots = [base / f"stream={quote(s, safe='')}" for s in sorted(set(streams))]
        lo = -(2**62) if start is None else int(math.floor(start / DAY))
        hi = 2**62 if end is None else int(math.ceil(end / DAY)) - 1
        parts: dict[tuple[str, str], list[PurePath]] = {}
        for root in roots:
            selector = pafs.FileSelector(str(root), recursive=True, allow_not_found=True)
            for info in self._fs.fs.get_file_info(selector):
                if info.type != pafs.FileType.File:
                    continue
                sname, dname, fname = (info.path.rsplit("/", 3) + ["", "", ""])[1:4]
                if not (sname.startswith("stream=") and dname.startswith("date=") and _is_visible(fname)):
                    continue
                parts.setdefault((sname, dname), []).append(base / sname / dname / fname)
        out = []
        for (sname, dname), files in sorted(parts.items()):
            try:
                day = _day_from_name(dname[len("date=") :])
            except ValueError:
                continue
            if lo <= day <= hi:
                out.append((unquote(sname[len("stream=") :]), day, sorted(files)))
        return out

    def _files(self, directory: PurePath) -> list[PurePath]:
        """Committed Parquet files of a partition directory, sorted by name (= batch id = write time)."""
        return sorted(
            directory / i.base_name
            for i in self._fs.list(directory)
            if i.type == pafs.FileType.File and _is_visible(i.base_name)
        )

    def _write_table(
        self, table_name: str, directory: PurePath, batch: str, table: pa.Table, **kwargs: Any
    ) -> PurePath:
        final = directory / f"{batch}.parquet"
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY_VERSION] = str(SCHEMA_VERSION).encode()
        meta[_META_KEY_SPACE] = self.concept_space.encode("utf-8")
        table = table.replace_schema_metadata(meta)
        # Serialised in memory first: a failure while encoding never reaches the store, and an object store gets
        # the file as one upload.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", **kwargs)
        self._fs.write_bytes(final, sink.getvalue(), fresh=True)
        return final

    # ------------------------------------------------------------------ windows: write
    def _check_window(self, w: WindowSummary) -> None:
        if w.concept_space and w.concept_space != self.concept_space:
            raise ConfigError(
                f"window of stream {w.stream!r} at {w.start} is in concept space {w.concept_space!r} but history "
                f"store {self.location!r} holds {self.concept_space!r}; concept spaces never mix"
            )
        for name in ("weight_sum", "weight_sq_sum", "presence"):
            arr = np.asarray(getattr(w, name))
            if arr.shape != (self.n_concepts,):
                raise ConfigError(
                    f"window of stream {w.stream!r} at {w.start}: {name} has shape {arr.shape}, the store's concept "
                    f"space {self.concept_space!r} has {self.n_concepts} concepts"
                )
        if not (math.isfinite(w.start) and math.isfinite(w.end)) or w.end < w.start:
            raise ValueError(f"window of stream {w.stream!r}: need finite start <= end, got [{w.start}, {w.end})")
        if w.n_images < 0:
            raise ValueError(f"window of stream {w.stream!r} at {w.start}: n_images={w.n_images} must be >= 0")
        if not isinstance(w.stream, str) or not w.stream:
            raise ValueError(f"window stream must be a non-empty string, got {w.stream!r}")

    def write_windows(self, windows: Sequence[WindowSummary]) -> int:
        """Store closed windows (only concepts with presence > 0 are written); returns the number written.

        One commit per (stream, UTC day) touched: each is atomic on its own, so a crash may leave some days of a
        multi-day call written and others not (rewriting them is harmless: a window whose (stream, start) was stored
        before replaces it).
        """
        windows = list(windows)
        for w in windows:
            self._check_window(w)
        # the same (stream, start) twice in one call: the later one wins, as it would across calls
        latest = {(w.stream, float(w.start)): w for w in windows}
        groups: dict[tuple[str, int], list[WindowSummary]] = {}
        for w in latest.values():
            groups.setdefault((w.stream, int(math.floor(w.start / DAY))), []).append(w)
        for (stream, day), group in groups.items():
            batch = _new_batch_id()
            header, concepts = self._window_tables(group, batch)
            hdir = self._partition_dir("windows", stream, day)
            fresh = not self._files(hdir)
            # The concepts (and rollup) files go first: the windows file written last commits the batch.
            self._write_table(
                "window_concepts", self._partition_dir("window_concepts", stream, day), batch, concepts,
                row_group_size=_CONCEPT_ROW_GROUP,
            )
            if fresh:  # the partition's only file: its totals serve whole-day queries until more files arrive
                self._write_table("window_rollups", self._partition_dir("window_rollups", stream, day), batch,
                                  _rollup(concepts))
            self._write_table("windows", hdir, batch, header)
        return len(windows)

    def _window_tables(self, group: list[WindowSummary], batch: str) -> tuple[pa.Table, pa.Table]:
        starts, cols, wsum, wsq, pres = [], [], [], [], []
        n_active = []
        for w in group:
            presence = np.asarray(w.presence, dtype=np.int64)
            weight_sum = np.asarray(w.weight_sum, dtype=np.float64)
            weight_sq = np.asarray(w.weight_sq_sum, dtype=np.float64)
            active = np.flatnonzero((presence != 0) | (weight_sum != 0) | (weight_sq != 0))
            n_active.append(len(active))
            starts.append(np.full(len(active), w.start, dtype=np.float64))
            cols.append(active.astype(np.int32))
            wsum.append(weight_sum[active])
            wsq.append(weight_sq[active])
            pres.append(presence[active])
        start = np.concatenate(starts) if starts else np.zeros(0)
        concept = np.concatenate(cols) if cols else np.zeros(0, np.int32)
        # Sorted by concept then time: row-group statistics then let a trend skip all other concepts.
        order = np.lexsort((start, concept))
        concepts = pa.table(
            {
                "start": start[order],
                "concept_index": concept[order],
                "weight_sum": np.concatenate(wsum)[order],
                "weight_sq_sum": np.concatenate(wsq)[order],
                "presence": np.concatenate(pres)[order],
            },
            schema=CONCEPT_SCHEMA,
        )
        header = pa.table(
            {
                "stream": [w.stream for w in group],
                "start": [float(w.start) for w in group],
                "end": [float(w.end) for w in group],
                "n_images": [int(w.n_images) for w in group],
                "n_active": n_active,
                "fidelity_sum": [float(w.fidelity_sum) for w in group],
                "fidelity_sq_sum": [float(w.fidelity_sq_sum) for w in group],
                "fidelity_min": [float(w.fidelity_min) for w in group],
                "fidelity_max": [float(w.fidelity_max) for w in group],
                "l0_sum": [float(w.l0_sum) for w in group],
                "l0_sq_sum": [float(w.l0_sq_sum) for w in group],
                "batch": [batch] * len(group),
            },
            schema=WINDOW_SCHEMA,
        )
        return header.sort_by("start"), concepts

    # ------------------------------------------------------------------ windows: read
    def streams(self, table: str = "windows") -> list[str]:
        """Streams that have at least one partition in ``table``."""
        return sorted({s for s, _, _ in self._partitions(table)})

    @retry_if_compacted
    def scan_windows(
        self,
        *,
        streams: str | Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        concepts: Sequence[int] | np.ndarray | None = None,
        with_concepts: bool = True,
    ) -> WindowData:
        """Windows whose start lies in [start, end), columnar, deduplicated (last write wins per stream+start).

        ``concepts`` restricts the concept rows to those ids (files are concept-sorted, so this skips row groups).
        The concept table gains a dictionary-encoded ``stream`` column. For large ranges prefer
        :meth:`iter_windows`, which streams record batches in bounded memory.
        """
        header, batches = self.iter_windows(
            streams=streams, start=start, end=end, concepts=concepts, with_concepts=with_concepts
        )
        tables = []
        for stream, batch in batches:
            if batch.num_rows:
                t = pa.Table.from_batches([batch])
                tables.append(t.append_column("stream", _constant_dict(stream, t.num_rows)))
        concepts_table = pa.concat_tables(tables) if tables else _concept_result_schema().empty_table()
        return WindowData(header=header, concepts=concepts_table)

    def iter_windows(
        self,
        *,
        streams: str | Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        concepts: Sequence[int] | np.ndarray | None = None,
        columns: Sequence[str] | None = None,
        with_concepts: bool = True,
        header_columns: Sequence[str] | None = None,
    ) -> tuple[pa.Table, Iterator[tuple[str, pa.RecordBatch]]]:
        """(header, iterator of (stream, concept-row batch)) for windows whose start lies in [start, end).

        The header has one row per window, deduplicated (WINDOW_SCHEMA columns, or ``header_columns`` plus the
        stream, start and batch it needs); the batches hold CONCEPT_SCHEMA columns (or ``columns``) for exactly
        those windows, so aggregating them never holds more than one batch in memory.
        """
        listing = self._list_windows(streams, start, end)
        return self._iter_listing(
            listing, start, end, concepts, columns, with_concepts, skip=set(), header_columns=header_columns
        )

    def _list_windows(
        self, streams: str | Sequence[str] | None, start: float | None, end: float | None
    ) -> list[tuple[str, int, list[PurePath]]]:
        """One snapshot of the committed windows files: (stream, day, header files) per partition."""
        if isinstance(streams, str):
            streams = [streams]
        return self._listing("windows", streams, start, end)

    def _iter_listing(
        self,
        listing: list[tuple[str, int, list[PurePath]]],
        start: float | None,
        end: float | None,
        concepts: Sequence[int] | np.ndarray | None,
        columns: Sequence[str] | None,
        with_concepts: bool,
        skip: set[tuple[str, int]],
        header_columns: Sequence[str] | None = None,
    ) -> tuple[pa.Table, Iterator[tuple[str, pa.RecordBatch]]]:
        header_files = [f for _, _, files in listing for f in files]
        header_schema = WINDOW_SCHEMA
        if header_columns is not None:
            keep = {"stream", "start", "batch", *header_columns}
            header_schema = pa.schema([f for f in WINDOW_SCHEMA if f.name in keep])
        if not header_files:
            return header_schema.empty_table(), iter(())
        concept_files: dict[str, list[PurePath]] = {}
        for stream, day, files in listing:
            if (stream, day) in skip:
                continue
            cdir = self._partition_dir("window_concepts", stream, day)
            concept_files.setdefault(stream, []).extend(cdir / f.name for f in files)
        time_filter = _range_filter("start", start, end)
        header = _read_many(self._fs, header_files, header_schema)
        header = header.filter(_range_mask(header["start"].to_numpy(), start, end))
        header, losers = _dedupe_windows(header)
        if not with_concepts or header.num_rows == 0:
            return header, iter(())
        cfilter = time_filter
        if concepts is not None:
            ids = pa.array(np.asarray(concepts, dtype=np.int32), type=pa.int32())
            cond = ds.field("concept_index").isin(ids)
            cfilter = cond if cfilter is None else (cfilter & cond)
        cols = list(CONCEPT_SCHEMA.names if columns is None else columns)
        read_cols = cols if not losers or "start" in cols else cols + ["start"]

        def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
            if concepts is not None:
                # A few concepts: read only the row groups whose statistics can hold them, many files at once.
                wanted = np.unique(np.asarray(concepts, dtype=np.int64))
                for stream, files in concept_files.items():
                    clean = [f for f in files if (stream, f.name[: -len(".parquet")]) not in losers]
                    table = _read_many(self._fs, clean, CONCEPT_SCHEMA, concepts=wanted, start=start, end=end)
                    for b in table.select(cols).to_batches():
                        yield stream, b
                yield from _loser_batches()
                return
            for stream, files in concept_files.items():
                clean = [f for f in files if (stream, f.name[: -len(".parquet")]) not in losers]
                if clean:
                    dataset = self._dataset(clean, CONCEPT_SCHEMA)
                    for b in dataset.to_batches(columns=cols, filter=cfilter):
                        yield stream, b
            yield from _loser_batches()

        def _loser_batches() -> Iterator[tuple[str, pa.RecordBatch]]:
            # Files holding a window that a later write replaced: drop the replaced windows' rows.
            for (stream, batch_id), drop in losers.items():
                f = next((f for f in concept_files.get(stream, []) if f.name == f"{batch_id}.parquet"), None)
                if f is None:
                    continue
                dataset = self._dataset([f], CONCEPT_SCHEMA)
                for b in dataset.to_batches(columns=read_cols, filter=cfilter):
                    keep = ~np.isin(b.column("start").to_numpy(), np.fromiter(drop, dtype=np.float64))
                    yield stream, b.filter(pa.array(keep)).select(cols)

        return header, batches()

    @retry_if_compacted
    def sum_windows(
        self,
        *,
        streams: str | Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
    ) -> tuple[pa.Table, np.ndarray, np.ndarray, np.ndarray]:
        """(header, presence, weight_sum, weight_sq_sum): per-concept totals over the windows whose start lies in
        [start, end), dense over the concept space.

        Whole days held in a single file are read from their rollup (one row per concept and day instead of one
        per concept and window); other days are summed from their window rows, one record batch at a time.
        """
        c = self.n_concepts
        presence, wsum, wsq = np.zeros(c), np.zeros(c), np.zeros(c)
        listing = self._list_windows(streams, start, end)
        candidates: list[tuple[tuple[str, int], PurePath]] = []
        for stream, day, files in listing:
            inside = (start is None or day * DAY >= start) and (end is None or (day + 1) * DAY <= end)
            if inside and len(files) == 1:
                candidates.append(((stream, day), self._partition_dir("window_rollups", stream, day) / files[0].name))
        # one batched existence check (a single call, not one round trip per day)
        found = self._fs.fs.get_file_info([str(r) for _, r in candidates]) if candidates else []
        rollups = [r for (_, r), info in zip(candidates, found) if info.type == pafs.FileType.File]
        rolled = {key for (key, _), info in zip(candidates, found) if info.type == pafs.FileType.File}
        header, batches = self._iter_listing(
            listing, start, end, None, ["concept_index", "presence", "weight_sum", "weight_sq_sum"], True, rolled
        )
        sources: list[Iterator] = [(b for _, b in batches)]
        if rollups:
            # 64 day files at a time: concurrent reads, memory bounded by 64 days x concepts
            cols = ["concept_index", "presence", "weight_sum", "weight_sq_sum"]
            sources.append(
                b
                for i in range(0, len(rollups), 64)
                for b in _read_many(self._fs, rollups[i : i + 64], ROLLUP_SCHEMA).select(cols).to_batches()
            )
        for source in sources:
            for b in source:
                ids = b.column(0).to_numpy()
                presence += np.bincount(ids, weights=b.column(1).to_numpy(), minlength=c)
                wsum += np.bincount(ids, weights=b.column(2).to_numpy(), minlength=c)
                wsq += np.bincount(ids, weights=b.column(3).to_numpy(), minlength=c)
        return header, presence, wsum, wsq

    @retry_if_compacted
    def read_windows(
        self,
        stream: str | Sequence[str] | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> list[WindowSummary]:
        """Stored windows with start in [start, end) as dense WindowSummary records, ordered by (stream, start)."""
        stream_list = [stream] if isinstance(stream, str) else stream
        t0, t1 = parse_time(start, name="start"), parse_time(end, name="end")
        # one call: the header and the concept batches come from the same snapshot of committed files
        header, batches = self.iter_windows(streams=stream_list, start=t0, end=t1)
        header = header.sort_by([("stream", "ascending"), ("start", "ascending")])
        c = self.n_concepts
        n = header.num_rows
        wsum = np.zeros((n, c))
        wsq = np.zeros((n, c))
        pres = np.zeros((n, c), dtype=np.int64)
        h_stream = np.asarray(header["stream"].to_pylist(), dtype=object)
        h_start = header["start"].to_numpy()
        for stream, batch in batches:
            # rows of this stream are sorted by start in the header: a binary search maps each entry to its row
            rows_of_stream = np.flatnonzero(h_stream == stream)
            starts = h_start[rows_of_stream]
            entry_start = batch.column("start").to_numpy()
            pos = np.minimum(np.searchsorted(starts, entry_start), max(len(starts) - 1, 0))
            if len(starts) == 0 or not np.array_equal(starts[pos], entry_start):
                raise RuntimeError(f"history store {self.location!r}: concept rows without a window header")
            rows = rows_of_stream[pos]
            cols = batch.column("concept_index").to_numpy()
            wsum[rows, cols] = batch.column("weight_sum").to_numpy()
            wsq[rows, cols] = batch.column("weight_sq_sum").to_numpy()
            pres[rows, cols] = batch.column("presence").to_numpy()
        h = header.to_pydict()
        return [
            WindowSummary(
                stream=h["stream"][i],
                start=h["start"][i],
                end=h["end"][i],
                n_images=h["n_images"][i],
                weight_sum=wsum[i],
                weight_sq_sum=wsq[i],
                presence=pres[i],
                fidelity_sum=h["fidelity_sum"][i],
                fidelity_sq_sum=h["fidelity_sq_sum"][i],
                fidelity_min=h["fidelity_min"][i],
                fidelity_max=h["fidelity_max"][i],
                l0_sum=h["l0_sum"][i],
                l0_sq_sum=h["l0_sq_sum"][i],
                concept_space=self.concept_space,
            )
            for i in range(n)
        ]

    def merged_window(
        self, stream: str | Sequence[str] | None = None, start: float | str | None = None, end: float | str | None = None
    ) -> WindowSummary:
        """All stored windows with start in [start, end) merged into one WindowSummary (e.g. a drift reference
        loaded from history); raises NoDataError when the range holds no images."""
        t0, t1 = parse_time(start, name="start"), parse_time(end, name="end")
        header, presence, wsum, wsq = self.sum_windows(streams=stream, start=t0, end=t1)
        n = int(pc.sum(header["n_images"]).as_py() or 0) if header.num_rows else 0
        if n == 0:
            raise NoDataError(f"history store {self.location!r}: no images for stream={stream!r} in [{t0}, {t1})")

        def total(col: str) -> float:
            return float(pc.sum(header[col]).as_py() or 0.0)

        label = stream if isinstance(stream, str) else ",".join(stream or sorted(set(header["stream"].to_pylist())))
        return WindowSummary(
            stream=label,
            start=float(pc.min(header["start"]).as_py()),
            end=float(pc.max(header["end"]).as_py()),
            n_images=n,
            weight_sum=wsum,
            weight_sq_sum=wsq,
            presence=np.rint(presence).astype(np.int64),
            fidelity_sum=total("fidelity_sum"),
            fidelity_sq_sum=total("fidelity_sq_sum"),
            fidelity_min=float(pc.min(header["fidelity_min"]).as_py()),
            fidelity_max=float(pc.max(header["fidelity_max"]).as_py()),
            l0_sum=total("l0_sum"),
            l0_sq_sum=total("l0_sq_sum"),
            concept_space=self.concept_space,
        )

    # ------------------------------------------------------------------ alarms
    def write_alarms(self, alarms: Sequence[Alarm]) -> int:
        """Append alarms (partitioned by stream and the date of their window start); returns the number written."""
        alarms = list(alarms)
        groups: dict[tuple[str, int], list[Alarm]] = {}
        for a in alarms:
            if not math.isfinite(a.window_start):
                raise ValueError(f"alarm on stream {a.stream!r} needs a finite window_start, got {a.window_start}")
            groups.setdefault((a.stream, int(math.floor(a.window_start / DAY))), []).append(a)
        for (stream, day), group in groups.items():
            batch = _new_batch_id()
            cols = {name: [getattr(a, name) for a in group] for name in ALARM_SCHEMA.names if name != "batch"}
            cols["batch"] = [batch] * len(group)
            table = pa.table(cols, schema=ALARM_SCHEMA)
            self._write_table("alarms", self._partition_dir("alarms", stream, day), batch, table)
        return len(alarms)

    @retry_if_compacted
    def read_alarms(
        self,
        stream: str | Sequence[str] | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> list[Alarm]:
        """Alarms whose window_start lies in [start, end), ordered by window_start."""
        table = self.scan_table("alarms", streams=stream, start=start, end=end)
        table = table.sort_by([("window_start", "ascending"), ("stream", "ascending")])
        fields = [f for f in ALARM_SCHEMA.names if f != "batch"]
        cols = {f: table[f].to_pylist() for f in fields}
        return [Alarm(**{f: cols[f][i] for f in fields}) for i in range(table.num_rows)]

    # ------------------------------------------------------------------ per-image codes
    def write_codes(self, codes: SparseCodes, items: Sequence[ItemMeta]) -> int:
        """Store per-image sparse codes with their ids, times and metadata; returns the number of rows written.

        Metadata values are stored as strings (``str`` for strings, JSON for anything else) so slices compare
        as text: ``--slice label=3`` matches ``{"label": 3}``. An id written again replaces the older row.
        """
        items = list(items)
        if len(items) != len(codes):
            raise ValueError(f"write_codes: {len(codes)} code rows but {len(items)} items")
        if codes.n_concepts != self.n_concepts:
            raise ConfigError(
                f"write_codes: codes index {codes.n_concepts} concepts but store {self.location!r} "
                f"(concept space {self.concept_space!r}) has {self.n_concepts}"
            )
        if not items:
            return 0
        ts = np.array([it.timestamp for it in items], dtype=np.float64)
        if not np.all(np.isfinite(ts)):
            raise ValueError("write_codes: every item needs a finite timestamp")
        days = _day_numbers(ts)
        streams = np.array([it.stream for it in items], dtype=object)
        for key in sorted({(s, int(d)) for s, d in zip(streams, days)}):
            rows = np.flatnonzero((streams == key[0]) & (days == key[1]))
            part = codes.take(rows)
            batch = _new_batch_id()
            offsets = pa.array(part.indptr.astype(np.int32), type=pa.int32())
            table = pa.table(
                {
                    "stream": [key[0]] * len(rows),
                    "id": [items[i].id for i in rows],
                    "timestamp": ts[rows],
                    "metadata": pa.array(
                        [[(str(k), _meta_text(v)) for k, v in items[i].metadata.items()] for i in rows],
                        type=pa.map_(pa.string(), pa.string()),
                    ),
                    "concept_index": pa.ListArray.from_arrays(offsets, pa.array(part.indices, type=pa.int32())),
                    "weight": pa.ListArray.from_arrays(offsets, pa.array(part.values, type=pa.float32())),
                    "fidelity": pa.array(part.fidelity, type=pa.float32()),
                    "l1": pa.array(part.l1, type=pa.float32()),
                    "batch": [batch] * len(rows),
                },
                schema=CODES_SCHEMA,
            )
            self._write_table("codes", self._partition_dir("codes", key[0], key[1]), batch, table)
        return len(items)

    def has_codes(self, stream: str | Sequence[str] | None = None) -> bool:
        streams = [stream] if isinstance(stream, str) else stream
        return bool(self._listing("codes", streams))

    @retry_if_compacted
    def scan_codes(
        self,
        *,
        streams: str | Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        where: Mapping[str, str] | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Per-image rows with timestamp in [start, end) matching every ``where`` metadata key=value (as text),
        deduplicated by (stream, id) keeping the last written."""
        table = self.scan_table("codes", streams=streams, start=start, end=end, time_column="timestamp")
        if table.num_rows and where:
            mask = None
            for key, value in where.items():
                got = pc.map_lookup(table["metadata"], pa.scalar(str(key)), "first")
                cond = pc.fill_null(pc.equal(got, pa.scalar(str(value))), False)
                mask = cond if mask is None else pc.and_(mask, cond)
            table = table.filter(mask)
        if table.num_rows:
            table = _dedupe_last(table, ["stream", "id"])
        if columns is not None:
            table = table.select(list(columns))
        return table

    @retry_if_compacted
    def read_codes(
        self,
        stream: str | Sequence[str] | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
        where: Mapping[str, str] | None = None,
    ) -> tuple[SparseCodes, list[ItemMeta]]:
        """Stored per-image codes (ordered by timestamp) and their items; metadata values come back as text."""
        table = self.scan_codes(
            streams=stream, start=parse_time(start, name="start"), end=parse_time(end, name="end"), where=where
        )
        table = table.sort_by([("timestamp", "ascending"), ("id", "ascending")])
        lists = table["concept_index"].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.int32()))
        weights = table["weight"].combine_chunks() if table.num_rows else pa.array([], pa.list_(pa.float32()))
        lengths = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False).astype(np.int64)
        indptr = np.zeros(table.num_rows + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        codes = SparseCodes(
            indptr=indptr,
            indices=pc.list_flatten(lists).to_numpy(zero_copy_only=False).astype(np.int32),
            values=pc.list_flatten(weights).to_numpy(zero_copy_only=False).astype(np.float32),
            fidelity=table["fidelity"].to_numpy(zero_copy_only=False).astype(np.float32),
            l1=table["l1"].to_numpy(zero_copy_only=False).astype(np.float32),
            n_concepts=self.n_concepts,
        )
        meta = table["metadata"].to_pylist()
        items = [
            ItemMeta(id=i, timestamp=t, stream=s, metadata=dict(m or []))
            for i, t, s, m in zip(table["id"].to_pylist(), table["timestamp"].to_pylist(), table["stream"].to_pylist(), meta)
        ]
        return codes, items

    # ------------------------------------------------------------------ generic table scan
    def scan_table(
        self,
        table: str,
        *,
        streams: str | Sequence[str] | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
        time_column: str = "window_start",
    ) -> pa.Table:
        if table not in SCHEMAS:
            raise ValueError(f"table must be one of {list(SCHEMAS)}, got {table!r}")
        if isinstance(streams, str):
            streams = [streams]
        start, end = parse_time(start, name="start"), parse_time(end, name="end")
        files = [f for _, _, part in self._listing(table, streams, start, end) for f in part]
        if not files:
            return SCHEMAS[table].empty_table()
        return self._dataset(files, SCHEMAS[table]).to_table(filter=_range_filter(time_column, start, end))

    def _dataset(self, files: Sequence[PurePath], schema: pa.Schema) -> ds.Dataset:
        return ds.dataset([str(f) for f in files], schema=schema, format="parquet", filesystem=self._fs.fs)

    # ------------------------------------------------------------------ checkpoints (resumable jobs)
    def _checkpoint_path(self, job_id: str) -> PurePath:
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id):
            raise ValueError(
                f"job_id={job_id!r}: use 1-128 characters from letters, digits, '.', '_' and '-' "
                f"(starting with a letter or digit)"
            )
        return self._fs.join("checkpoints", f"{job_id}.json")

    def get_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The last state saved for ``job_id``, or None when the job never saved one."""
        path = self._checkpoint_path(job_id)
        try:
            doc = json.loads(self._fs.read_bytes(path).decode("utf-8"))
        except FileNotFoundError:
            return None
        return doc["state"]

    def set_checkpoint(self, job_id: str, state: Mapping[str, Any]) -> None:
        """Atomically replace ``job_id``'s saved state (any JSON-serialisable mapping)."""
        path = self._checkpoint_path(job_id)
        doc = {"job_id": job_id, "updated": time.time(), "concept_space": self.concept_space, "state": dict(state)}
        try:
            data = json.dumps(doc, allow_nan=False).encode("utf-8")
        except (TypeError, ValueError) as exc:
            raise ValueError(f"set_checkpoint({job_id!r}): state must be JSON-serialisable ({exc})") from None
        self._fs.write_bytes(path, data)

    def clear_checkpoint(self, job_id: str) -> None:
        self._fs.delete_file(self._checkpoint_path(job_id), missing_ok=True)

    def list_checkpoints(self) -> list[str]:
        names = (i.base_name for i in self._fs.list(self._fs.join("checkpoints")) if i.type == pafs.FileType.File)
        return sorted(n[: -len(".json")] for n in names if n.endswith(".json") and not n.startswith("."))

    def _blob_path(self, name: str) -> PurePath:
        if not isinstance(name, str) or not _JOB_ID.match(name) or name.endswith(".json"):
            raise ValueError(
                f"checkpoint file name {name!r}: use 1-128 characters from letters, digits, '.', '_' and '-' "
                f"(starting with a letter or digit, not ending in .json, which names checkpoint records)"
            )
        return self._fs.join("checkpoints", name)

    def write_checkpoint_file(self, name: str, data: bytes) -> None:
        """Store opaque bytes (e.g. a saved monitor state) under ``checkpoints/NAME``, atomically, wherever the
        store lives: jobs keep state next to their checkpoint record without touching the local disk."""
        self._fs.write_bytes(self._blob_path(name), bytes(data))

    def read_checkpoint_file(self, name: str) -> bytes | None:
        """The bytes stored under ``checkpoints/NAME``, or None when there are none."""
        try:
            return self._fs.read_bytes(self._blob_path(name))
        except FileNotFoundError:
            return None

    def delete_checkpoint_file(self, name: str) -> None:
        self._fs.delete_file(self._blob_path(name), missing_ok=True)

    # ------------------------------------------------------------------ maintenance
    def compact(
        self,
        *,
        stream: str | Sequence[str] | None = None,
        min_files: int = 2,
        temp_age_s: float = 3600.0,
        apply_retention: bool = True,
        now: float | None = None,
    ) -> dict[str, int]:
        """Merge each partition holding at least ``min_files`` committed files into one (resolving rewritten
        windows and ids), drop orphan concept files and temporaries older than ``temp_age_s``, then apply the
        codes retention. Returns counts of what was done."""
        if min_files < 1:
            raise ValueError(f"min_files must be >= 1, got {min_files}")
        streams = [stream] if isinstance(stream, str) else stream
        stats = {"partitions_compacted": 0, "files_removed": 0, "files_written": 0, "orphans_removed": 0,
                 "temps_removed": 0}
        now_wall = time.time()
        for table in TABLES:
            for _, _, d in self._partitions(table, streams):
                for entry in self._fs.list(d):
                    if is_temp_name(entry.base_name):
                        mtime = entry.mtime_ns / 1e9 if entry.mtime_ns is not None else 0.0
                        if now_wall - mtime >= temp_age_s:
                            self._fs.delete_file(d / entry.base_name, missing_ok=True)
                            stats["temps_removed"] += 1
        for s, day, hdir in self._partitions("windows", streams):
            cdir = self._partition_dir("window_concepts", s, day)
            headers = self._files(hdir)
            committed = {f.name for f in headers}
            for orphan in [f for f in self._files(cdir) if f.name not in committed]:
                self._fs.delete_file(orphan, missing_ok=True)
                stats["orphans_removed"] += 1
            if len(headers) < min_files:
                continue
            data = self.scan_windows(streams=[s], start=day * DAY, end=(day + 1) * DAY)
            self._rewrite_windows(s, day, data, headers, stats)
        # concept files without a header, and rollups that no longer describe the partition's only file
        for s, day, cdir in self._partitions("window_concepts", streams):
            if not self._fs.is_dir(self._partition_dir("windows", s, day)):
                for f in self._files(cdir):
                    self._fs.delete_file(f, missing_ok=True)
                    stats["orphans_removed"] += 1
        for s, day, rdir in self._partitions("window_rollups", streams):
            headers = {f.name for f in self._files(self._partition_dir("windows", s, day))}
            for f in self._files(rdir):
                if len(headers) != 1 or f.name not in headers:
                    self._fs.delete_file(f, missing_ok=True)
                    stats["orphans_removed"] += 1
        for table, time_col, keys in (("alarms", "window_start", None), ("codes", "timestamp", ["stream", "id"])):
            for s, day, d in self._partitions(table, streams):
                files = self._files(d)
                if len(files) < min_files:
                    continue
                t = self._dataset(files, SCHEMAS[table]).to_table()
                if keys:
                    t = _dedupe_last(t, keys)
                t = t.sort_by(time_col)
                batch = _new_batch_id()
                t = t.set_column(t.schema.get_field_index("batch"), "batch", pa.array([batch] * t.num_rows, pa.string()))
                self._write_table(table, d, batch, t)
                stats["files_written"] += 1
                for f in files:
                    self._fs.delete_file(f, missing_ok=True)
                    stats["files_removed"] += 1
                stats["partitions_compacted"] += 1
        if apply_retention and self.codes_retention_days is not None:
            stats["codes_partitions_expired"] = self.apply_retention(codes_days=self.codes_retention_days, now=now)[
                "codes"
            ]
        self._remove_empty_dirs()
        return stats

    def _rewrite_windows(self, stream: str, day: int, data: WindowData, old: list[PurePath], stats: dict) -> None:
        batch = _new_batch_id()
        header = data.header.sort_by("start")
        header = header.set_column(
            header.schema.get_field_index("batch"), "batch", pa.array([batch] * header.num_rows, pa.string())
        )
        ct = data.concepts
        order = np.lexsort((ct["start"].to_numpy(), ct["concept_index"].to_numpy()))
        concepts = ct.select(CONCEPT_SCHEMA.names).take(pa.array(order))
        cdir = self._partition_dir("window_concepts", stream, day)
        hdir = self._partition_dir("windows", stream, day)
        rdir = self._partition_dir("window_rollups", stream, day)
        self._write_table("window_concepts", cdir, batch, concepts, row_group_size=_CONCEPT_ROW_GROUP)
        self._write_table("window_rollups", rdir, batch, _rollup(concepts))
        self._write_table("windows", hdir, batch, header)
        stats["files_written"] += 3
        # Headers go first so that no moment shows a committed batch without its concepts.
        for f in old:
            self._fs.delete_file(f, missing_ok=True)
            self._fs.delete_file(cdir / f.name, missing_ok=True)
            self._fs.delete_file(rdir / f.name, missing_ok=True)
            stats["files_removed"] += 2
        stats["partitions_compacted"] += 1

    def apply_retention(
        self,
        *,
        codes_days: float | None = None,
        windows_days: float | None = None,
        alarms_days: float | None = None,
        now: float | None = None,
    ) -> dict[str, int]:
        """Delete whole date partitions whose every row is older than ``now - N days`` (per table; None keeps
        everything). ``codes_days`` defaults to the store's ``codes_retention_days``. Returns partitions removed."""
        now = time.time() if now is None else float(now)
        if codes_days is None:
            codes_days = self.codes_retention_days
        removed = {"codes": 0, "windows": 0, "alarms": 0}
        plan = {"codes": codes_days, "windows": windows_days, "alarms": alarms_days}
        for table, days in plan.items():
            if days is None:
                continue
            if not days > 0:
                raise ValueError(f"{table}_days must be > 0 or None, got {days!r}")
            cutoff = now - days * DAY
            for s, day, d in self._partitions(table):
                if (day + 1) * DAY <= cutoff:  # every row of the partition is older than the cutoff
                    self._fs.delete_dir(d, missing_ok=True)
                    if table == "windows":
                        self._fs.delete_dir(self._partition_dir("window_concepts", s, day), missing_ok=True)
                        self._fs.delete_dir(self._partition_dir("window_rollups", s, day), missing_ok=True)
                    removed[table] += 1
        self._remove_empty_dirs()
        return removed

    def _remove_empty_dirs(self) -> None:
        dirs = pafs.FileType.Directory
        for table in TABLES:
            base = self._fs.join(table)
            for sdir in self._fs.list(base):
                if sdir.type != dirs:
                    continue
                spath = base / sdir.base_name
                for ddir in self._fs.list(spath):
                    if ddir.type == dirs and not self._fs.list(spath / ddir.base_name):
                        self._fs.delete_dir(spath / ddir.base_name, missing_ok=True)
                if not self._fs.list(spath):
                    self._fs.delete_dir(spath, missing_ok=True)

    def describe(self) -> dict[str, Any]:
        """What the store holds: identity, and per stream the time span, windows, images and files."""
        out: dict[str, Any] = {
            "root": self.location,
            "schema_version": self.schema_version,
            "concept_space": self.concept_space,
            "n_concepts": self.n_concepts,
            "streams": {},
            "checkpoints": self.list_checkpoints(),
        }
        data = self.scan_windows(with_concepts=False)
        h = data.header
        for stream in sorted(set(h["stream"].to_pylist()) | set(self.streams("codes")) | set(self.streams("alarms"))):
            mask = pc.equal(h["stream"], stream)
            sub = h.filter(mask)
            info: dict[str, Any] = {"windows": sub.num_rows, "images": int(pc.sum(sub["n_images"]).as_py() or 0)}
            if sub.num_rows:
                info["first_window_start"] = float(pc.min(sub["start"]).as_py())
                info["last_window_end"] = float(pc.max(sub["end"]).as_py())
            for table in TABLES:
                files = [f for _, _, part in self._listing(table, [stream]) for f in part]
                info[f"{table}_files"] = len(files)
                info[f"{table}_bytes"] = sum(self._fs.sizes(files))
            info["codes_rows"] = self.scan_table("codes", streams=[stream]).num_rows if info["codes_files"] else 0
            info["alarms"] = self.scan_table("alarms", streams=[stream]).num_rows if info["alarms_files"] else 0
            out["streams"][stream] = info
        return out


# ---------------------------------------------------------------------- helpers


def _range_mask(t: np.ndarray, start: float | None, end: float | None) -> pa.Array:
    mask = np.ones(len(t), dtype=bool)
    if start is not None:
        mask &= t >= start
    if end is not None:
        mask &= t < end
    return pa.array(mask)


def _read_one(fs: StoreFS, path: PurePath, schema: pa.Schema, concepts: np.ndarray | None, start, end) -> pa.Table:
    with fs.open_input(path) as fh:
        return _read_parquet(pq.ParquetFile(fh), schema, concepts, start, end)


def _read_parquet(pf: pq.ParquetFile, schema: pa.Schema, concepts: np.ndarray | None, start, end) -> pa.Table:
    if concepts is None:
        return pf.read(columns=schema.names, use_threads=False)  # the caller's pool already spans the files
    col = schema.get_field_index("concept_index")
    md = pf.metadata
    groups = []
    for i in range(md.num_row_groups):
        st = md.row_group(i).column(col).statistics
        if st is None or not st.has_min_max:
            groups.append(i)
            continue
        # some wanted id lies in [min, max]
        if np.searchsorted(concepts, st.max, side="right") > np.searchsorted(concepts, st.min, side="left"):
            groups.append(i)
    table = pf.read_row_groups(groups, columns=schema.names, use_threads=False) if groups else schema.empty_table()
    mask = np.isin(table["concept_index"].to_numpy(), concepts)
    if start is not None or end is not None:
        mask &= _range_mask(table["start"].to_numpy(), start, end).to_numpy(zero_copy_only=False)
    return table.filter(pa.array(mask))


def _read_many(
    fs: StoreFS,
    files: Sequence[PurePath],
    schema: pa.Schema,
    *,
    concepts: np.ndarray | None = None,
    start: float | None = None,
    end: float | None = None,
) -> pa.Table:
    """Read many small Parquet files concurrently (per-file open cost dominates day-partitioned queries);
    with ``concepts`` (sorted ids) only the row groups whose statistics may hold them."""
    from concurrent.futures import ThreadPoolExecutor

    if not files:
        return schema.empty_table()
    if len(files) == 1:
        tables = [_read_one(fs, files[0], schema, concepts, start, end)]
    else:
        with ThreadPoolExecutor(max_workers=min(8, 2 * (os.cpu_count() or 1), len(files))) as pool:
            tables = list(pool.map(lambda f: _read_one(fs, f, schema, concepts, start, end), files))
    return pa.concat_tables([t.cast(schema) if t.schema != schema else t for t in tables])


def _rollup(concepts: pa.Table) -> pa.Table:
    """Per-concept totals of a window_concepts table."""
    ids = concepts["concept_index"].to_numpy()
    uniq, inverse = np.unique(ids, return_inverse=True)
    sums = {
        name: np.bincount(inverse, weights=concepts[name].to_numpy(), minlength=len(uniq))
        for name in ("weight_sum", "weight_sq_sum")
    }
    presence = np.bincount(inverse, weights=concepts["presence"].to_numpy(), minlength=len(uniq))
    return pa.table(
        {"concept_index": uniq.astype(np.int32), **sums, "presence": np.rint(presence).astype(np.int64)},
        schema=ROLLUP_SCHEMA,
    )


def _meta_text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)


def _range_filter(column: str, start: float | None, end: float | None) -> ds.Expression | None:
    expr = None
    if start is not None:
        expr = ds.field(column) >= start
    if end is not None:
        cond = ds.field(column) < end
        expr = cond if expr is None else expr & cond
    return expr


def _concept_result_schema() -> pa.Schema:
    return CONCEPT_SCHEMA.append(pa.field("stream", pa.dictionary(pa.int32(), pa.string())))


def _constant_dict(value: str, n: int) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, dtype=np.int32)), pa.array([value], pa.string()))


def _dedupe_windows(header: pa.Table) -> tuple[pa.Table, dict[tuple[str, str], set[float]]]:
    """Keep the last-written row per (stream, start); return the losing (stream, batch) -> starts to drop."""
    streams = header["stream"].to_numpy(zero_copy_only=False)
    starts = header["start"].to_numpy()
    keys = np.array([f"{s}\x00{t!r}" for s, t in zip(streams, starts)], dtype=object)
    if len(np.unique(keys)) == len(keys):
        return header, {}
    batches = header["batch"].to_numpy(zero_copy_only=False)
    order = np.lexsort((batches.astype(str), keys.astype(str)))  # by key, then batch ascending
    sorted_keys = keys[order]
    last = np.ones(len(order), dtype=bool)
    last[:-1] = sorted_keys[:-1] != sorted_keys[1:]
    keep_rows = np.sort(order[last])
    losers: dict[tuple[str, str], set[float]] = {}
    for r in order[~last]:
        losers.setdefault((str(streams[r]), str(batches[r])), set()).add(float(starts[r]))
    return header.take(pa.array(keep_rows)), losers


def _dedupe_last(table: pa.Table, keys: list[str]) -> pa.Table:
    """Rows unique by ``keys``, keeping the one from the greatest batch id (the last written)."""
    cols = [table[k].to_numpy(zero_copy_only=False).astype(str) for k in keys]
    batches = table["batch"].to_numpy(zero_copy_only=False).astype(str)
    order = np.lexsort((batches, *reversed(cols)))
    sk = [c[order] for c in cols]
    last = np.ones(len(order), dtype=bool)
    if len(order) > 1:
        same = np.ones(len(order) - 1, dtype=bool)
        for c in sk:
            same &= c[:-1] == c[1:]
        last[:-1] = ~same
    if last.all():
        return table
    return table.take(pa.array(np.sort(order[last])))
