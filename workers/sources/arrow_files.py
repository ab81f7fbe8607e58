"""Parquet and Arrow IPC files (one file or a directory of them) as a finite, resumable source.

The driver reads only footers and hands out row ranges (:class:`RowRange`); each worker reads its rows itself,
memory-mapped, and checks them with :func:`check_rows`, so no payload passes through the driver."""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ConfigError
from workers.items import ItemBatch, ItemColumns
from workers.sources.base import Source, SourceBatch
from workers.sources.timestamps import EARLIEST_EVENT_TIME, LATEST_EVENT_TIME, EpochSeconds, timestamp_error

__all__ = ["ParquetSource", "ArrowSpec", "RowRange", "check_rows"]

# Columns taken without being named, so a user's own file is read by event time and per camera by default. An
# explicit option wins; "none" turns detection off (processing time, one stream).
_TIME_NAMES = ("timestamp", "ts", "event_time", "time", "datetime", "created_at")
_STREAM_NAMES = ("stream", "camera", "camera_id")


def _is_time(field) -> bool:
    import pyarrow as pa

    t = field.type
    return pa.types.is_timestamp(t) or pa.types.is_date(t) or pa.types.is_integer(t) or pa.types.is_floating(t) \
        or pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_label(field) -> bool:
    import pyarrow as pa

    t = field.type
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_integer(t) \
        or pa.types.is_dictionary(t)


def _pick_column(option: str, given: str, schema, names: tuple[str, ...], fits) -> str:
    """The column an option names; when none is named, a timestamp-typed column (for the time) or the first of
    ``names`` present with a fitting type, announced on stderr; "none" means no such column."""
    import sys

    import pyarrow as pa

    if given.lower() == "none":
        return ""
    if given:
        return given
    picked = ""
    if option == "timestamp_column":
        typed = [f.name for f in schema if pa.types.is_timestamp(f.type)]
        if len(typed) == 1:
            picked = typed[0]
    if not picked:
        lower = {f.name.lower(): f for f in schema}
        picked = next((lower[n].name for n in names if n in lower and fits(lower[n])), "")
    if picked:
        print(f"parquet source: using column {picked!r} as {option} (pass {option}=NAME or {option}=none to "
              f"change)", file=sys.stderr, flush=True)
    return picked

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
        # absolute: a worker process need not share the driver's working directory
        self._paths = [str(f.resolve()) for f in files]
        self.stream = stream
        self.name = f"parquet:{root}"
        self.read_batch = int(read_batch)  # accepted for old URIs; batches now follow the files' row groups
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
        timestamp_column = _pick_column("timestamp_column", timestamp_column, schema, _TIME_NAMES, _is_time)
        stream_column = _pick_column("stream_column", stream_column, schema, _STREAM_NAMES, _is_label)
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
        columns = tuple(sorted({c for c in (self.payload_column, timestamp_column, id_column, stream_column,
                                            *self.metadata_columns) if c}))
        self.spec = ArrowSpec(payload_column=self.payload_column, kind=self.kind, timestamp_column=timestamp_column,
                              id_column=id_column, stream_column=stream_column,
                              metadata_columns=tuple(self.metadata_columns), stream=stream, t0=time.time(),
                              columns=columns)
        self._groups: dict[int, list[int]] = {}  # file index -> row counts of its row groups (record batches)
        self._cached_bounds: tuple[int, np.ndarray] = (-1, np.zeros(1))
        self._file_idx = 0
        self._row = 0  # next row of the current file to hand out

    def _group_rows(self, i: int) -> list[int]:
        """Row counts of file ``i``'s row groups (Parquet) or record batches (Arrow IPC), from its footer."""
        if i not in self._groups:
            self._groups[i] = _group_rows(self.files[i])
        return self._groups[i]

    def _bounds(self, i: int) -> np.ndarray:
        if self._cached_bounds[0] != i:
            self._cached_bounds = (i, np.cumsum([0, *self._group_rows(i)]))
        return self._cached_bounds[1]

    @property
    def total(self) -> int:
        """Rows in all files (for a progress bar)."""
        return sum(sum(self._group_rows(i)) for i in range(len(self.files)))

    @staticmethod
    def _schema(path: Path):
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        if path.suffix.lower() == ".parquet":
            return pq.read_schema(path)
        with ipc.open_file(path) as reader:
            return reader.schema

    def resume(self, checkpoint: dict) -> None:
        """Continue after the checkpoint's (file index, row) position."""
        self._file_idx, self._row = int(checkpoint["file"]), int(checkpoint["row"])

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        """The next rows as a descriptor (file, first row, end row), cut at a row-group boundary so a worker
        decodes each group it reads for this batch, and never a batch that spans two files. Reads only footers."""
        while self._file_idx < len(self.files):
            bounds = self._bounds(self._file_idx)
            if self._row >= bounds[-1]:
                self._file_idx, self._row = self._file_idx + 1, 0
                continue
            group_end = int(bounds[np.searchsorted(bounds, self._row, side="right")])
            stop = min(self._row + max(1, int(max_items)), group_end)
            work = RowRange(self.spec, self._paths[self._file_idx], self._row, stop)
            self._row = stop
            return SourceBatch(self._next_seq(), token=(self._file_idx, stop), work=work)
        return None

    def ack(self, batch: SourceBatch) -> None:
        self._ack_in_order(batch)

    def position(self, batch: SourceBatch) -> dict | None:
        return {"file": batch.token[0], "row": batch.token[1]}

    def checkpoint(self) -> dict | None:
        acked = self._ack_token
        return None if acked is None else {"file": acked[0], "row": acked[1]}


@dataclass(frozen=True)
class ArrowSpec:
    """How to read and check the rows of one source's files; travels (a few hundred bytes) with every batch."""

    payload_column: str
    kind: str
    timestamp_column: str
    id_column: str
    stream_column: str
    metadata_columns: tuple[str, ...]
    stream: str
    t0: float  # the time given to every row when there is no timestamp column (when the run started)
    columns: tuple[str, ...]


@dataclass(frozen=True)
class RowRange:
    """Rows [start, stop) of one file: what the driver hands a worker instead of the rows themselves."""

    spec: ArrowSpec
    path: str
    start: int
    stop: int
    skip: frozenset[int] = frozenset()  # rows a restored checkpoint already counted (see ``without``)

    def __len__(self) -> int:
        return self.stop - self.start - len(self.skip)

    def load(self) -> ItemBatch:
        """Read the rows (memory-mapped) and check them: run on the worker."""
        batch = check_rows(_read_rows(self.path, self.start, self.stop, self.spec.columns), self.spec, self.path,
                           self.start)
        return batch if not self.skip else batch.take([j for j in range(self.stop - self.start)
                                                       if self.start + j not in self.skip])

    def refs(self) -> list[str]:
        # Only a checkpoint asks (every few seconds, for the batches it may cover), never the per-batch path.
        return [f"{self.path}#row={r}" for r in range(self.start, self.stop) if r not in self.skip]

    def without(self, refs: set[str]) -> "RowRange":
        prefix = f"{self.path}#row="
        rows = {int(r[len(prefix):]) for r in refs if r.startswith(prefix)}
        return replace(self, skip=self.skip | {r for r in rows if self.start <= r < self.stop})


def check_rows(table, spec: ArrowSpec, path: str, first_row: int) -> ItemBatch:
    """Rows of ``table`` (rows ``first_row``.. of ``path``) as an :class:`ItemBatch`, each bad row with its reason:
    a null id or payload is ``bad_record``, a missing, unparsable or implausible time ``bad_timestamp`` (the first
    problem of a row wins, in that order: id, time, payload)."""
    n = table.num_rows
    rows = range(first_row, first_row + n)
    fname = Path(path).name
    errors: dict[int, tuple[str, str]] = {}
    default_ids = [f"{fname}#{r}" for r in rows]
    if spec.id_column:
        ids = table.column(spec.id_column).to_pylist()
        for j, v in enumerate(ids):
            if v is None:
                errors[j] = ("bad_record", f"{spec.id_column} is null")
                ids[j] = default_ids[j]
            else:
                ids[j] = str(v)
    else:
        ids = default_ids
    if spec.timestamp_column:
        times, bad = _times(table.column(spec.timestamp_column), spec.timestamp_column)
        for j, detail in bad.items():
            errors.setdefault(j, detail)
            times[j] = spec.t0
    else:
        times = np.full(n, spec.t0, dtype=np.float64)
    names: dict[str, int] = {}
    if spec.stream_column:
        values = table.column(spec.stream_column).to_pylist()
        index = [names.setdefault(spec.stream if v is None else str(v), len(names)) for v in values]
    else:
        names[spec.stream] = 0
        index = np.zeros(n, dtype=np.int32)
    metadata = None
    if spec.metadata_columns:
        cols = {c: table.column(c).to_pylist() for c in spec.metadata_columns}
        metadata = [{c: _plain(cols[c][j]) for c in spec.metadata_columns} for j in range(n)]
    payloads = table.column(spec.payload_column).to_pylist()
    if table.column(spec.payload_column).null_count:
        for j, p in enumerate(payloads):
            if p is None:
                errors.setdefault(j, ("bad_record", f"{spec.payload_column} is null"))
    return ItemBatch(columns=ItemColumns(ids, times, index, list(names), metadata), payloads=payloads,
                     kinds=spec.kind, refs=[f"{path}#row={r}" for r in rows], errors=errors)


def _times(column, where: str) -> tuple[np.ndarray, dict[int, tuple[str, str]]]:
    """A time column as unix seconds, vectorised for Arrow timestamps and numbers (the same scaling and range
    check as ``parse_timestamp``); other types (ISO strings, dates) value by value. Bad rows come back with the
    detail ``timestamp_error`` gives, so the dead letters read the same whichever way a row was checked."""
    import pyarrow as pa
    import pyarrow.compute as pc

    t = column.type
    if pa.types.is_timestamp(t) or pa.types.is_integer(t) or pa.types.is_floating(t):
        nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), dtype=bool)
        if pa.types.is_timestamp(t):
            per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[t.unit]
            raw = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
            secs = np.where(nulls, 0, raw).astype(np.float64) / per_second  # seconds already: never rescaled
        else:
            secs = np.where(nulls, 0.0, column.to_numpy(zero_copy_only=False)).astype(np.float64)
            with np.errstate(invalid="ignore"):
                secs = np.where(secs > 1e17, secs / 1e9, np.where(secs > 1e14, secs / 1e6,
                                                                   np.where(secs > 1e11, secs / 1e3, secs)))
        with np.errstate(invalid="ignore"):
            ok = ~nulls & np.isfinite(secs) & (secs >= EARLIEST_EVENT_TIME) & (secs < LATEST_EVENT_TIME)
        bad: dict[int, tuple[str, str]] = {}
        if not ok.all():
            values = _column_values(column)
            for j in np.flatnonzero(~ok).tolist():
                bad[j] = timestamp_error(values[j], where=where)[1] or ("bad_timestamp", f"{where}: not a time")
        return secs, bad
    times = np.zeros(len(column), dtype=np.float64)
    bad = {}
    for j, v in enumerate(column.to_pylist()):
        parsed, err = timestamp_error(v, where=where)
        if err is None:
            times[j] = parsed
        else:
            bad[j] = err
    return times, bad


def _group_rows(path: Path) -> list[int]:
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    if path.suffix.lower() == ".parquet":
        meta = pq.ParquetFile(path).metadata
        return [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    with ipc.open_file(path) as reader:
        return [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]


class _OpenFiles:
    """A worker's open files and the row groups it decoded last. Consecutive batches of one row group often come
    to the same worker, and a Parquet row group is decoded whole, so the last few decoded groups are kept (bounded by
    count, not size: write row groups of a few batches, docs/pipeline.md)."""

    def __init__(self, max_files: int = 8, max_groups: int = 2, max_group_bytes: int = 256 << 20) -> None:
        from collections import OrderedDict

        self.files: OrderedDict[str, tuple[Any, np.ndarray]] = OrderedDict()
        self.groups: OrderedDict[tuple[str, int, tuple[str, ...]], Any] = OrderedDict()
        self.streams: OrderedDict[tuple[str, int, tuple[str, ...]], _GroupStream] = OrderedDict()
        self.max_files, self.max_groups = max_files, max_groups
        self.max_group_bytes = max_group_bytes  # a larger Parquet row group is streamed, never decoded whole

    def rows(self, path: str, g: int, lo: int, hi: int, columns: tuple[str, ...]):
        """Rows [lo, hi) of row group ``g``. A Parquet row group above ``max_group_bytes`` (uncompressed) is read
        as a stream of small record batches from a position kept per group, so memory stays bounded whatever the
        file's writer chose; a request behind that position starts the stream again (reads from the group's start)."""
        reader, _ = self.reader(path)
        if not path.lower().endswith(".parquet") or \
                reader.metadata.row_group(g).total_byte_size <= self.max_group_bytes:
            return self.group(path, g, columns).slice(lo, hi - lo)
        key = (path, g, columns)
        stream = self.streams.get(key)
        if stream is None or stream.pos > lo:
            stream = _GroupStream(reader, g, columns)
            self.streams[key] = stream
            while len(self.streams) > self.max_groups:
                self.streams.popitem(last=False)
        self.streams.move_to_end(key)
        return stream.take(lo, hi)

    def reader(self, path: str) -> tuple[Any, np.ndarray]:
        import pyarrow as pa
        import pyarrow.ipc as ipc
        import pyarrow.parquet as pq

        hit = self.files.get(path)
        if hit is None:
            if path.lower().endswith(".parquet"):
                reader = pq.ParquetFile(path, memory_map=True)
                sizes = [reader.metadata.row_group(i).num_rows for i in range(reader.metadata.num_row_groups)]
            else:
                reader = ipc.open_file(pa.memory_map(path))
                sizes = [reader.get_batch(i).num_rows for i in range(reader.num_record_batches)]
            hit = (reader, np.cumsum([0, *sizes]))
            self.files[path] = hit
            while len(self.files) > self.max_files:
                self.files.popitem(last=False)
        self.files.move_to_end(path)
        return hit

    def group(self, path: str, g: int, columns: tuple[str, ...]):
        key = (path, g, columns)
        table = self.groups.get(key)
        if table is None:
            reader, _ = self.reader(path)
            if path.lower().endswith(".parquet"):
                table = reader.read_row_group(g, columns=list(columns))
            else:  # Arrow IPC: a zero-copy view of the memory-mapped batch
                table = reader.get_batch(g).select(list(columns))
            self.groups[key] = table
            while len(self.groups) > self.max_groups:
                self.groups.popitem(last=False)
        self.groups.move_to_end(key)
        return table


class _GroupStream:
    """One Parquet row group read front to back in record batches of 1,024 rows; ``pos`` is the next row."""

    def __init__(self, reader, g: int, columns: tuple[str, ...]) -> None:
        self._it = reader.iter_batches(batch_size=1024, row_groups=[g], columns=list(columns), use_threads=False)
        self._buf = None  # the current record batch, its first row at ``pos``
        self.pos = 0

    def take(self, lo: int, hi: int):
        import pyarrow as pa

        out = []
        while self.pos < hi:
            if self._buf is None or self._buf.num_rows == 0:
                self._buf = next(self._it)
            n = self._buf.num_rows
            if self.pos + n <= lo:  # wholly before the request: skip it
                self.pos += n
                self._buf = None
                continue
            a = max(lo - self.pos, 0)
            b = min(hi - self.pos, n)
            out.append(self._buf.slice(a, b - a))
            self._buf = self._buf.slice(b)
            self.pos += b
        return pa.Table.from_batches(out) if out else None


_open_files = _OpenFiles()


def _read_rows(path: str, start: int, stop: int, columns: tuple[str, ...]):
    """Rows [start, stop) of ``path``'s ``columns`` as one Arrow table (a worker's read of a descriptor)."""
    import pyarrow as pa

    _, bounds = _open_files.reader(path)
    if not 0 <= start <= stop <= bounds[-1]:
        raise ValueError(f"rows {start}..{stop} are outside {path!r}, which has {int(bounds[-1])} rows")
    first = int(np.searchsorted(bounds, start, side="right")) - 1
    parts = []
    g = first
    while g < len(bounds) - 1 and int(bounds[g]) < stop:
        lo, hi = max(start, int(bounds[g])) - int(bounds[g]), min(stop, int(bounds[g + 1])) - int(bounds[g])
        part = _open_files.rows(path, g, lo, hi, columns)
        if part is not None:
            parts.append(part)
        g += 1
    if len(parts) == 1:
        return parts[0] if isinstance(parts[0], pa.Table) else pa.Table.from_batches([parts[0]])
    return pa.Table.from_batches([b for p in parts
                                  for b in (p.to_batches() if isinstance(p, pa.Table) else [p])])


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return v



def _column_values(column) -> list:
    """A column as Python values. Arrow timestamps become unix seconds computed from the raw integers, so a value
    beyond Python's datetime range (year 10000 and up) is one bad row, not an exception for the whole batch."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_timestamp(column.type):
        per_second = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}[column.type.unit]
        raw = pc.cast(column, pa.int64()).to_pylist()
        return [None if v is None else EpochSeconds(v / per_second) for v in raw]
    return column.to_pylist()

