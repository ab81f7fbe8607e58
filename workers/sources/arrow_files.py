"""Parquet and Arrow IPC files (one file or a directory of them) as a finite, resumable source."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError
from monitor.records import ItemMeta
from workers.items import WorkItem
from workers.sources.base import Source, SourceBatch
from workers.sources.timestamps import EpochSeconds, timestamp_error

__all__ = ["ParquetSource"]

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
            cols = {name: _column_values(rb.column(name)) for name in rb.schema.names}
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
            parsed, bad = timestamp_error(cols[self.timestamp_column][j], where=self.timestamp_column)
            if bad is None:
                ts = parsed
            else:
                error = error or bad
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

    def position(self, batch: SourceBatch) -> dict | None:
        return {"file": batch.token[0], "row": batch.token[1]}

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

