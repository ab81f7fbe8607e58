"""Stream sources for the pipeline: a directory of images (optionally followed), Parquet/Arrow files, Redis Streams.

Every source hands out numbered batches of :class:`workers.core.WorkItem` and is told ``ack(batch)`` only after
the batch's contribution is committed by the aggregator, so an item is never lost: what is not acknowledged is
delivered again (Redis: pending entries, reclaimed with XAUTOCLAIM; files: the resume checkpoint).
URIs: ``dir:///path?glob=*.jpg&follow=1`` (or a plain path), ``parquet:///path/file.parquet?image_column=image``,
``redis://127.0.0.1:6379/0?stream=frames&group=splice``; see docs/pipeline.md.
"""

from __future__ import annotations

import fnmatch
import os
import socket
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from monitor.errors import ConfigError
from monitor.uris import redact_uri
from monitor.records import ItemMeta
from workers.core import WorkItem

__all__ = ["SourceBatch", "Source", "DirectorySource", "ParquetSource", "RedisSource", "open_source", "parse_uri"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


@dataclass
class SourceBatch:
    """A numbered batch; ``seq`` counts non-empty batches from 1 per source and is the unit of idempotent commits
    (an empty batch, "nothing new yet", has seq 0)."""

    seq: int
    items: list[WorkItem]
    token: Any = None  # what ``ack`` needs: redis entry ids, a file position, ...

    def __len__(self) -> int:
        return len(self.items)


class Source:
    """Base class: ``read`` a batch, ``ack`` it after commit, ``close``.

    ``read`` returns None once a finite source is exhausted, and an empty batch when an endless source has nothing
    new within ``timeout_s``.
    """

    name: str = "source"
    finite: bool = True

    def __init__(self) -> None:
        self._seq = 0
        self._ack_next = 1  # the lowest sequence number not yet acknowledged
        self._acked_ahead: dict[int, Any] = {}  # acknowledged out of order: seq -> token
        self._ack_token: Any = None  # token of the last batch of the contiguous acknowledged prefix

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _ack_in_order(self, batch: "SourceBatch") -> None:
        """Advance the resume position only over a contiguous prefix of acknowledged batches: a batch retried after
        a worker failure commits after later ones, and a checkpoint must never skip it."""
        if batch.seq < self._ack_next:
            return
        self._acked_ahead[batch.seq] = batch.token
        while self._ack_next in self._acked_ahead:
            self._ack_token = self._acked_ahead.pop(self._ack_next)
            self._ack_next += 1

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        raise NotImplementedError

    def ack(self, batch: SourceBatch) -> None:
        """Mark ``batch`` as committed; the source will not deliver its items again."""

    def checkpoint(self) -> dict | None:
        """Position after the last acknowledged batch, for resuming (files only); None when not resumable."""
        return None

    def close(self) -> None:
        pass

    def __enter__(self) -> "Source":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------------------
# URI parsing


def _bool(value: str, name: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off", ""):
        return False
    raise ConfigError(f"source option {name} must be a boolean (1/0/true/false), got {value!r}")


def parse_uri(uri: str) -> tuple[str, str, dict[str, str], Any]:
    """Split a source or sink URI into (scheme, path, options, parsed url). A plain path is ``dir`` or ``parquet``."""
    if not isinstance(uri, str) or not uri:
        raise ConfigError(f"source URI must be a non-empty string, got {uri!r}")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and os.name == "nt"):
        path = unquote(parsed.path if scheme == "file" else uri.split("?", 1)[0])
        suffix = Path(path).suffix.lower()
        scheme = "parquet" if suffix in (".parquet", ".arrow", ".feather", ".ipc") else "dir"
    else:
        path = unquote((parsed.netloc + parsed.path) if scheme in ("dir", "parquet", "arrow") else parsed.path)
    options = {k: v[-1] for k, v in parse_qs(parsed.query, keep_blank_values=True).items()}
    return scheme, path, options, parsed


def _take(options: dict[str, str], allowed: dict[str, Any], where: str) -> dict[str, Any]:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ConfigError(f"unknown {where} option(s) {unknown}; allowed: {sorted(allowed)}")
    out = dict(allowed)
    out.update(options)
    return out


def open_source(uri: str, *, kind: str | None = None, stream: str | None = None) -> "Source":
    """Build the source named by ``uri``. ``kind`` ("image"/"text") and ``stream`` override the URI's defaults."""
    scheme, path, options, parsed = parse_uri(uri)
    if kind is not None:
        options.setdefault("kind", kind)
    if stream is not None:
        options.setdefault("stream", stream)
    if scheme == "dir":
        return DirectorySource(path, **_take(options, DirectorySource.OPTIONS, "dir source"))
    if scheme in ("parquet", "arrow"):
        return ParquetSource(path, **_take(options, ParquetSource.OPTIONS, "parquet source"))
    if scheme in ("redis", "rediss"):
        opts = _take(options, RedisSource.OPTIONS, "redis source")
        url = f"{scheme}://{parsed.netloc}{parsed.path}"
        return RedisSource(url, **opts)
    raise ConfigError("source URI scheme must be one of dir, parquet, arrow, redis or a plain path; "
                      f"got {redact_uri(uri)!r}")


def _parse_timestamp(value: Any, *, where: str) -> float:
    """Event time in unix seconds from a number, an ISO-8601 string, bytes or a datetime."""
    if value is None:
        raise ValueError(f"{where}: timestamp is missing")
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, (int, float)):
        t = float(value)
    else:
        s = str(value).strip()
        try:
            t = float(s)
        except ValueError:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=timezone.utc)
            return dt.timestamp()
    if t > 1e14:  # nanoseconds or microseconds since the epoch
        t = t / 1e9 if t > 1e17 else t / 1e6
    elif t > 1e11:  # milliseconds
        t = t / 1e3
    return t


# ---------------------------------------------------------------------------------------------------------------------
# Directory of images


class DirectorySource(Source):
    """Image files under a directory matching ``glob``, oldest first; with ``follow`` it keeps watching for new files.

    Item id: the path relative to the directory; event time: the file's mtime. Following remembers a watermark
    (mtime, name) plus the names seen at that exact mtime, not every file ever seen, so memory stays flat.
    """

    OPTIONS = {"glob": "*", "follow": "0", "recursive": "0", "stream": "default", "kind": "image",
               "poll_s": "1.0", "settle_s": "0.5"}

    def __init__(self, path: str, *, glob: str = "*", follow: str | bool = False, recursive: str | bool = False,
                 stream: str = "default", kind: str = "image", poll_s: str | float = 1.0,
                 settle_s: str | float = 0.5) -> None:
        super().__init__()
        self.root = Path(path)
        if not self.root.is_dir():
            raise ConfigError(f"dir source: {str(self.root)!r} is not a directory")
        self.pattern = glob
        self.follow = follow if isinstance(follow, bool) else _bool(follow, "follow")
        self.recursive = recursive if isinstance(recursive, bool) else _bool(recursive, "recursive")
        if kind not in ("image", "text"):
            raise ConfigError(f"dir source option kind must be 'image' or 'text', got {kind!r}")
        self.kind = kind
        self.stream = stream
        self.poll_s = float(poll_s)
        self.settle_s = float(settle_s)  # a file younger than this may still be being written
        self.finite = not self.follow
        self.name = f"dir:{self.root}"
        self._queue: list[tuple[int, str]] = []
        self._mark: tuple[int, str] = (-1, "")
        self._listed = False
        self._last_poll = 0.0

    def _scan(self) -> None:
        now_ns = time.time_ns()
        found: list[tuple[int, str]] = []
        walker = self.root.rglob("*") if self.recursive else self.root.iterdir()
        for p in walker:
            try:
                if not p.is_file():
                    continue
                rel = str(p.relative_to(self.root))
                if not fnmatch.fnmatch(p.name, self.pattern) and not fnmatch.fnmatch(rel, self.pattern):
                    continue
                if self.pattern == "*" and self.kind == "image" and p.suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                mtime = p.stat().st_mtime_ns
            except OSError:
                continue  # vanished between listing and stat
            if self.follow and now_ns - mtime < self.settle_s * 1e9:
                continue
            key = (mtime, rel)
            if key > self._mark:
                found.append(key)
        found.sort()
        queued = set(self._queue)
        self._queue.extend(k for k in found if k not in queued)
        self._queue.sort()

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        deadline = time.monotonic() + timeout_s
        while not self._queue:
            if self._listed and not self.follow:
                return None
            if self._listed:
                wait = self.poll_s - (time.monotonic() - self._last_poll)
                if wait > 0:
                    if time.monotonic() + wait > deadline:
                        time.sleep(max(0.0, deadline - time.monotonic()))
                        return SourceBatch(0, [], token=None)
                    time.sleep(wait)
            self._scan()
            self._listed = True
            self._last_poll = time.monotonic()
            if not self._queue and self.follow and time.monotonic() >= deadline:
                return SourceBatch(0, [], token=None)
        take, self._queue = self._queue[:max_items], self._queue[max_items:]
        items = []
        for mtime, rel in take:
            path = self.root / rel
            meta = ItemMeta(id=rel, timestamp=mtime / 1e9, stream=self.stream, metadata={"path": str(path)})
            try:
                data = path.read_bytes()
                if self.kind == "text":
                    data = data.decode("utf-8", "replace")
                items.append(WorkItem(meta=meta, payload=data, kind=self.kind, ref=str(path)))
            except OSError as exc:
                items.append(WorkItem(meta=meta, payload=None, kind=self.kind, ref=str(path),
                                      error=("bad_record", f"cannot read {path}: {exc}")))
        # the watermark moves at read time: within one run nothing is re-listed; a restart re-reads from the start
        # (or from a checkpoint) because acknowledgement for files is the commit itself
        self._mark = max(self._mark, take[-1])
        return SourceBatch(self._next_seq(), items, token=take[-1])

    def ack(self, batch: SourceBatch) -> None:
        self._ack_in_order(batch)

    def checkpoint(self) -> dict | None:
        acked = self._ack_token
        return None if acked is None else {"mtime_ns": acked[0], "name": acked[1]}

    def resume(self, checkpoint: dict) -> None:
        """Skip every file at or before the checkpoint's (mtime, name)."""
        self._mark = (int(checkpoint["mtime_ns"]), str(checkpoint["name"]))


# ---------------------------------------------------------------------------------------------------------------------
# Parquet / Arrow files


class ParquetSource(Source):
    """Rows of one Parquet or Arrow IPC file (or every such file in a directory, in name order).

    The payload is ``image_column`` (bytes, or a string path read by the worker), or ``path_column``, or
    ``text_column`` (captions). Optional ``timestamp_column`` (timestamp/number/ISO string), ``id_column`` (default:
    ``<file>#<row>``), ``stream_column`` (e.g. the camera id) and ``metadata`` (comma-separated columns, e.g.
    ``camera,label``) are carried with each item.
    """

    OPTIONS = {"image_column": "", "path_column": "", "text_column": "", "timestamp_column": "", "id_column": "",
               "stream_column": "", "metadata": "", "stream": "default", "kind": "", "read_batch": "1024"}

    def __init__(self, path: str, *, image_column: str = "", path_column: str = "", text_column: str = "",
                 timestamp_column: str = "", id_column: str = "", stream_column: str = "", metadata: str = "",
                 stream: str = "default", kind: str = "", read_batch: str | int = 1024) -> None:
        super().__init__()
        import pyarrow.parquet as pq  # noqa: F401  (fail early when pyarrow is missing)

        root = Path(path)
        if root.is_dir():
            files = sorted(p for p in root.iterdir()
                           if p.suffix.lower() in (".parquet", ".arrow", ".feather", ".ipc"))
            if not files:
                raise ConfigError(f"parquet source: no .parquet/.arrow files in directory {str(root)!r}")
        elif root.is_file():
            files = [root]
        else:
            raise ConfigError(f"parquet source: {str(root)!r} does not exist")
        self.files = files
        self.stream = stream
        self.name = f"parquet:{root}"
        self.read_batch = int(read_batch)
        schema = self._schema(files[0])
        names = set(schema.names)
        payload_cols = [c for c in (image_column, path_column, text_column) if c]
        if len(payload_cols) > 1:
            raise ConfigError("parquet source: give only one of image_column, path_column, text_column, "
                              f"got {payload_cols}")
        if not payload_cols:  # pick the obvious column when the user did not say
            for cand, k in (("image", "image"), ("image_bytes", "image"), ("bytes", "image"), ("path", "path"),
                            ("text", "text"), ("caption", "text")):
                if cand in names:
                    payload_cols = [cand]
                    image_column, path_column, text_column = (
                        (cand, "", "") if k == "image" else ("", cand, "") if k == "path" else ("", "", cand))
                    break
            else:
                raise ConfigError(f"parquet source: no payload column; pass image_column=, path_column= or "
                                  f"text_column= (columns are {sorted(names)})")
        self.payload_column = payload_cols[0]
        self.kind = kind or ("text" if text_column else "image")
        if self.kind not in ("image", "text"):
            raise ConfigError(f"parquet source option kind must be 'image' or 'text', got {kind!r}")
        self.timestamp_column = timestamp_column
        self.id_column = id_column
        self.stream_column = stream_column
        self.metadata_columns = [c for c in metadata.split(",") if c]
        for opt, col in (("image_column/path_column/text_column", self.payload_column),
                         ("timestamp_column", timestamp_column), ("id_column", id_column),
                         ("stream_column", stream_column), *(("metadata", c) for c in self.metadata_columns)):
            if col and col not in names:
                raise ConfigError(f"parquet source: {opt}={col!r} is not a column of {files[0].name} "
                                  f"(columns are {sorted(names)})")
        self._columns = sorted({c for c in (self.payload_column, timestamp_column, id_column, stream_column,
                                            *self.metadata_columns) if c})
        self._file_idx = 0
        self._row = 0  # next row of the current file
        self._skip_to: tuple[int, int] | None = None
        self._iter = None
        self._buffer: list[WorkItem] = []
        self._t0 = time.time()

    @property
    def total(self) -> int:
        """Rows in all files (for a progress bar)."""
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        n = 0
        for f in self.files:
            if f.suffix.lower() == ".parquet":
                n += pq.ParquetFile(f).metadata.num_rows
            else:
                with ipc.open_file(f) as reader:
                    n += sum(reader.get_batch(i).num_rows for i in range(reader.num_record_batches))
        return n

    @staticmethod
    def _schema(path: Path):
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        if path.suffix.lower() == ".parquet":
            return pq.read_schema(path)
        with ipc.open_file(path) as reader:
            return reader.schema

    def _batches(self, path: Path):
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        if path.suffix.lower() == ".parquet":
            pf = pq.ParquetFile(path)
            yield from pf.iter_batches(batch_size=self.read_batch, columns=self._columns)
            return
        with ipc.open_file(path) as reader:
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i).select(self._columns)

    def resume(self, checkpoint: dict) -> None:
        """Continue after the checkpoint's (file index, row) position."""
        self._skip_to = (int(checkpoint["file"]), int(checkpoint["row"]))
        self._file_idx = self._skip_to[0]

    def _fill(self) -> bool:
        """Append the next record batch's items to the buffer; False when every file is read."""
        while self._file_idx < len(self.files):
            if self._iter is None:
                self._iter = self._batches(self.files[self._file_idx])
                self._row = 0
            rb = next(self._iter, None)
            if rb is None:
                self._iter = None
                self._file_idx += 1
                continue
            start = self._row
            self._row += rb.num_rows
            if self._skip_to is not None and (self._file_idx, self._row) <= self._skip_to:
                continue
            cols = {name: rb.column(name).to_pylist() for name in rb.schema.names}
            first = 0
            if self._skip_to is not None and self._skip_to[0] == self._file_idx:
                first = max(0, self._skip_to[1] - start)
            self._skip_to = None
            fname = self.files[self._file_idx].name
            for j in range(first, rb.num_rows):
                self._buffer.append(self._item(cols, j, start + j, fname))
            return True
        return False

    def _item(self, cols: dict[str, list], j: int, row: int, fname: str) -> "_PositionedItem":
        ref = f"{self.files[self._file_idx]}#row={row}"
        position = (self._file_idx, row + 1)
        item_id = f"{fname}#{row}"
        error = None
        if self.id_column:
            v = cols[self.id_column][j]
            if v is None:
                error = ("bad_record", f"{self.id_column} is null")
            else:
                item_id = str(v)
        ts = self._t0
        if self.timestamp_column:
            try:
                ts = _parse_timestamp(cols[self.timestamp_column][j], where=self.timestamp_column)
            except (ValueError, TypeError) as exc:
                error = error or ("bad_record", f"{self.timestamp_column}: {exc}")
        stream = self.stream
        if self.stream_column:
            v = cols[self.stream_column][j]
            stream = self.stream if v is None else str(v)
        metadata = {c: _plain(cols[c][j]) for c in self.metadata_columns}
        payload = cols[self.payload_column][j]
        if payload is None and error is None:
            error = ("bad_record", f"{self.payload_column} is null")
        meta = ItemMeta(id=item_id, timestamp=ts, stream=stream, metadata=metadata)
        return _PositionedItem(WorkItem(meta=meta, payload=payload, kind=self.kind, ref=ref, error=error), position)

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        while len(self._buffer) < max_items and self._fill():
            pass
        if not self._buffer:
            return None
        take, self._buffer = self._buffer[:max_items], self._buffer[max_items:]
        return SourceBatch(self._next_seq(), [p.item for p in take], token=take[-1].position)

    def ack(self, batch: SourceBatch) -> None:
        self._ack_in_order(batch)

    def checkpoint(self) -> dict | None:
        acked = self._ack_token
        return None if acked is None else {"file": acked[0], "row": acked[1]}


@dataclass
class _PositionedItem:
    item: WorkItem
    position: tuple[int, int]


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v


# ---------------------------------------------------------------------------------------------------------------------
# Redis Streams


class RedisSource(Source):
    """A Redis stream read through a consumer group.

    Entries are read with XREADGROUP and acknowledged (XACK) only after their batch is committed. On start the
    consumer first re-reads its own pending entries (a restart under the same ``consumer`` name); entries left
    pending by any consumer for longer than ``claim_idle_ms`` (a dead one) are taken over with XAUTOCLAIM. Entry
    fields: ``image`` (bytes) or ``path`` or ``text`` (names configurable), optional ``ts`` and ``id``; every other
    field becomes item metadata. With ``drain=1`` the source is finite: it ends when the stream has nothing new and
    nothing pending.
    """

    OPTIONS = {"stream": "", "group": "splice", "consumer": "", "image_field": "image", "path_field": "path",
               "text_field": "text", "timestamp_field": "ts", "id_field": "", "stream_field": "", "kind": "",
               "claim_idle_ms": "60000", "drain": "0", "start": "0"}

    def __init__(self, url: str, *, stream: str = "", group: str = "splice", consumer: str = "",
                 image_field: str = "image", path_field: str = "path", text_field: str = "text",
                 timestamp_field: str = "ts", id_field: str = "", stream_field: str = "", kind: str = "",
                 claim_idle_ms: str | int = 60000, drain: str | bool = False, start: str = "0") -> None:
        super().__init__()
        import redis

        from workers.redisconn import connect

        if not stream:
            raise ConfigError("redis source: the URI needs ?stream=KEY (the Redis stream to read), "
                              "e.g. redis://127.0.0.1:6379/0?stream=frames&group=splice")
        if kind not in ("", "image", "text"):
            raise ConfigError(f"redis source option kind must be 'image' or 'text', got {kind!r}")
        self.url = url
        self._ref_base = redact_uri(url)  # dead letters and logs carry the reference, never the password
        self.key = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.fields = {"image": image_field, "path": path_field, "text": text_field}
        self.timestamp_field = timestamp_field
        self.id_field = id_field
        self.stream_field = stream_field
        self.kind = kind
        self.claim_idle_ms = int(claim_idle_ms)
        self.finite = drain if isinstance(drain, bool) else _bool(drain, "drain")
        self.name = f"redis:{self.key}/{self.group}"
        self.client = connect(url)
        try:
            self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # entry ids handed out and not yet acknowledged: a reclaim or re-read must not hand them out twice
        self._inflight: set[bytes] = set()
        self._own_pending = True  # first read our own PEL (restart under the same consumer name)
        self._pel_cursor: bytes | str = "0"
        self._claim_cursor = b"0-0"
        self._last_claim = 0.0

    def _entries_to_items(self, entries) -> tuple[list[WorkItem], list[bytes]]:
        items, ids = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending: ack it away, nothing to count
                self.client.xack(self.key, self.group, entry_id)
                continue
            if entry_id in self._inflight:
                continue
            self._inflight.add(entry_id)
            ids.append(entry_id)
            items.append(self._item(entry_id, fields))
        return items, ids

    def _item(self, entry_id: bytes, fields: dict[bytes, bytes]) -> WorkItem:
        f = {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in fields.items()}
        eid = entry_id.decode()
        ref = f"{self._ref_base}?stream={self.key}#{eid}"
        error = None
        item_id = eid
        if self.id_field and self.id_field in f:
            item_id = f.pop(self.id_field).decode("utf-8", "replace")
        ts = time.time()
        if self.timestamp_field in f:
            raw = f.pop(self.timestamp_field)
            try:
                ts = _parse_timestamp(raw, where=self.timestamp_field)
            except (ValueError, TypeError) as exc:
                error = ("bad_record", f"{self.timestamp_field}: {exc}")
        else:
            ts = int(eid.split("-", 1)[0]) / 1000.0  # the entry id's milliseconds are the arrival time
        stream = self.key
        if self.stream_field and self.stream_field in f:
            stream = f[self.stream_field].decode("utf-8", "replace")
        payload, kind = None, self.kind or "image"
        if self.fields["image"] in f and self.kind != "text":
            payload, kind = f.pop(self.fields["image"]), "image"
        elif self.fields["path"] in f and self.kind != "text":
            payload, kind = f.pop(self.fields["path"]).decode("utf-8", "replace"), "image"
        elif self.fields["text"] in f:
            payload, kind = f.pop(self.fields["text"]), "text"
        elif error is None:
            error = ("bad_record", f"entry has none of the payload fields {sorted(set(self.fields.values()))}")
        metadata = {k: v.decode("utf-8", "replace") for k, v in f.items()}
        meta = ItemMeta(id=item_id, timestamp=ts, stream=stream, metadata=metadata)
        return WorkItem(meta=meta, payload=payload, kind=kind, ref=ref, error=error)

    def _claim(self, max_items: int) -> list:
        """Take over entries pending longer than ``claim_idle_ms`` on any consumer (one that died)."""
        out = []
        cursor = self._claim_cursor
        while len(out) < max_items:
            cursor, entries, *_ = self.client.xautoclaim(self.key, self.group, self.consumer,
                                                         min_idle_time=self.claim_idle_ms, start_id=cursor,
                                                         count=max_items - len(out))
            out.extend(e for e in entries if e[0] not in self._inflight)
            if cursor in (b"0-0", "0-0"):
                break
        self._claim_cursor = b"0-0" if cursor in ("0-0",) else cursor
        return out

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        items: list[WorkItem] = []
        ids: list[bytes] = []
        if self._own_pending:
            resp = self.client.xreadgroup(self.group, self.consumer, {self.key: self._pel_cursor}, count=max_items)
            entries = resp[0][1] if resp else []
            if not entries:
                self._own_pending = False
            else:
                self._pel_cursor = entries[-1][0]
            items, ids = self._entries_to_items(entries)
        now = time.monotonic()
        if len(items) < max_items and now - self._last_claim >= min(5.0, self.claim_idle_ms / 2000):
            self._last_claim = now
            more, more_ids = self._entries_to_items(self._claim(max_items - len(items)))
            items += more
            ids += more_ids
        if len(items) < max_items:
            block = None if items else max(1, int(timeout_s * 1000))
            resp = self.client.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=max_items - len(items),
                                          block=block)
            more, more_ids = self._entries_to_items(resp[0][1] if resp else [])
            items += more
            ids += more_ids
        if not items:
            if self.finite and not self._inflight and self._nothing_pending():
                return None
            return SourceBatch(0, [], token=[])
        return SourceBatch(self._next_seq(), items, token=ids)

    def _nothing_pending(self) -> bool:
        info = self.client.xpending(self.key, self.group)
        return int(info["pending"]) == 0

    def ack(self, batch: SourceBatch) -> None:
        ids = batch.token or []
        if ids:
            self.client.xack(self.key, self.group, *ids)
            self._inflight.difference_update(ids)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not an error worth reporting
            pass
