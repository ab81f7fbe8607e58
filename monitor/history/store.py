"""Parquet history of a monitored stream: closed-window aggregates, alarms and (optionally) per-image sparse codes,
partitioned by stream and UTC date, written atomically by one writer at a time, tied to one concept space.

Size: about 850 lines because :class:`HistoryStore` is the one public face of the store (window, alarm and code
reads and writes) and its window reads (snapshot listing, last-write-wins, concept-row pruning, rollups) form one
unit; every other concern lives beside it: fs.py (filesystems, commits, writer lock), identity.py (store.json),
schema.py (schemas, batch ids, stream keys, times), layout.py (partitions), tables.py (Arrow helpers),
checkpoints.py, maintenance.py (compaction, retention, quarantine).

Layout on disk (see docs/history.md)::

    ROOT/store.json                                   format, schema version, concept space, concept names
    ROOT/windows/stream=S/date=YYYY-MM-DD/B.parquet   one row per window (counts, fidelity and l0 sums)
    ROOT/window_concepts/stream=S/date=D/B.parquet    one row per (window, concept with presence > 0)
    ROOT/window_rollups/stream=S/date=D/B.parquet     per-concept totals of windows file B (whole-day queries)
    ROOT/alarms/stream=S/date=D/B.parquet             one row per alarm
    ROOT/codes/stream=S/date=D/B.parquet              one row per image: id, time, metadata, concept lists
    ROOT/checkpoints/JOB.json                         resumable-job progress (backfill)
    ROOT/streams/KEY.json                             the name of a stream whose directory key is hashed
    ROOT/quarantine/...                               unreadable files, moved aside with their relative path

ROOT is a local directory or an object-store prefix (``s3://bucket/prefix``, ``gs://...``, ``file:///abs``); every
file operation goes through :class:`StoreFS` (a pyarrow filesystem plus the root). On a local disk every file is
written under a dot-prefixed temporary name and renamed into place; on an object store it is uploaded as one object,
which becomes visible only when complete. Either way a reader never sees a half file; a window batch is committed by
its ``windows`` file, written after its ``window_concepts`` file, so a crash between the two leaves an orphan that
readers skip and ``compact()`` removes. Rewriting a window (same stream, start and window index) replaces it: the
batch written last wins, which makes resumed backfills idempotent.

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

import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monitor.errors import ConfigError, NoDataError
from monitor.history.checkpoints import Checkpoints
from monitor.history.fs import URI_SCHEMES, StoreFS, WriterLock
from monitor.history.identity import open_store_meta
from monitor.history.layout import Layout
from monitor.history.maintenance import Maintenance
from monitor.history.schema import (
    CODES_SCHEMA, CONCEPT_ROW_GROUP, CONCEPT_SCHEMA, DAY, META_KEY_SPACE, META_KEY_VERSION,
    ROLLUP_SCHEMA, SCHEMA_VERSION, SCHEMAS, TABLES, WINDOW_SCHEMA, ALARM_SCHEMA, day_numbers, new_batch_id,
    parse_time,
)
from monitor.history.tables import (
    check_window, concept_result_schema, constant_dict, dataset, dedupe_last, dedupe_windows, fill_defaults, meta_text,
    range_filter, range_mask, read_many, rollup, window_keys, window_tables,
)
from monitor.records import Alarm, ItemMeta, SparseCodes, WindowSummary

__all__ = [
    "SCHEMA_VERSION",
    "URI_SCHEMES",
    "HistoryStore",
    "StoreFS",
    "NoDataError",
    "WindowData",
    "parse_time",
    "retry_if_compacted",
]


def retry_if_compacted(fn):
    """Make a read survive the store changing under it. A file it listed vanished: ``compact()`` or retention
    removed it mid-read and the files that replaced it hold the same rows, so the read runs again (once). A file
    does not read back as Parquet: it is quarantined (:meth:`HistoryStore.quarantine_corrupt`, which warns naming it)
    and the read runs again without it; an error that no unreadable file explains is raised as it is."""

    @functools.wraps(fn)
    def wrapper(store, *args, **kwargs):
        missing_retried = False
        for _ in range(16):  # each quarantine round removes at least one file
            try:
                return fn(store, *args, **kwargs)
            except FileNotFoundError:
                if missing_retried:
                    raise
                missing_retried = True
            except (pa.ArrowException, OSError) as exc:
                try:
                    found = store.quarantine_corrupt()
                except OSError:  # the store cannot even be read: report the first failure
                    raise exc from None
                if not found:
                    raise
        return fn(store, *args, **kwargs)

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
    unknown scheme, or one pyarrow cannot open here, is a ConfigError, never a local folder.

    One writer process per store: the first write takes the store's writer lock (local roots; see
    :class:`~monitor.history.fs.WriterLock`), waiting up to ``lock_timeout_s`` for another writer to finish before a
    ConfigError names the holder; :meth:`close` (or the end of the process) releases it. Readers never lock and may
    run beside the writer.
    """

    def __init__(
        self,
        root: str | Path | StoreFS,
        *,
        concept_space: str | None = None,
        concept_names: Sequence[str] | None = None,
        codes_retention_days: float | None = None,
        create: bool = True,
        lock_timeout_s: float = 30.0,
        writer_shard: tuple[int, int] | None = None,
    ) -> None:
        if codes_retention_days is not None and not (codes_retention_days > 0):
            raise ConfigError(f"codes_retention_days must be > 0 or None, got {codes_retention_days!r}")
        self._fs = StoreFS.from_root(root)
        # a Path for local stores (as before), the URI (credentials redacted) for object stores
        self.root: Path | str = self._fs.base if self._fs.local else self._fs.uri
        self.codes_retention_days = codes_retention_days
        self._layout = Layout(self._fs)
        # writer_shard=(i, n): one of n aggregators of a run, each writing its own streams (see WriterLock)
        self._writer = WriterLock(self._fs, location=self.location, timeout_s=lock_timeout_s, shard=writer_shard)
        meta = open_store_meta(self._fs, self.location, concept_space, concept_names, create=create,
                               before_write=self._writing)
        self.schema_version: int = meta["schema_version"]
        self.concept_space: str = meta["concept_space"]
        self.concept_names: list[str] = list(meta["concept_names"])
        self._name_index: dict[str, int] | None = None
        self._checkpoints = Checkpoints(self._fs, self.concept_space, before_write=self._writing)
        self._maintenance = Maintenance(self)

    # ------------------------------------------------------------------ the writer lock
    def _writing(self) -> None:
        """Every write starts here: the first one takes the writer lock."""
        self._writer.acquire()

    def close(self) -> None:
        """Release the writer lock (if this store took it). Reading still works; a later write takes it again."""
        self._writer.release()

    def __enter__(self) -> "HistoryStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.release()

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

    # ------------------------------------------------------------------ paths (see layout.py)
    def _partition_dir(self, table: str, stream: str, day: int) -> PurePath:
        return self._layout.partition_dir(table, stream, day)

    def _partitions(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, PurePath]]:
        return self._layout.partitions(table, streams, start, end)

    def _listing(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, list[PurePath]]]:
        return self._layout.listing(table, streams, start, end)

    def _files(self, directory: PurePath) -> list[PurePath]:
        return self._layout.files(directory)

    def _dataset(self, files: Sequence[PurePath], schema: pa.Schema) -> ds.Dataset:
        return dataset(self._fs, files, schema)

    def _write_table(
        self, table_name: str, directory: PurePath, batch: str, table: pa.Table, **kwargs: Any
    ) -> PurePath:
        final = directory / f"{batch}.parquet"
        meta = dict(table.schema.metadata or {})
        meta[META_KEY_VERSION] = str(SCHEMA_VERSION).encode()
        meta[META_KEY_SPACE] = self.concept_space.encode("utf-8")
        table = table.replace_schema_metadata(meta)
        # Serialised in memory first: a failure while encoding never reaches the store, and an object store gets
        # the file as one upload.
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd", **kwargs)
        self._fs.write_bytes(final, sink.getvalue(), fresh=True)
        return final

    # ------------------------------------------------------------------ windows: write
    def write_windows(self, windows: Sequence[WindowSummary]) -> int:
        """Store closed windows (only concepts with presence > 0 are written); returns the number written.

        A window is identified by (stream, start, index): count windows are numbered by their position in the
        stream, so windows that share a start (a source without event times) are kept apart. One commit per (stream,
        UTC day) touched: each is atomic on its own, so a crash may leave some days of a multi-day call written and
        others not (rewriting them is harmless: a window stored before under the same identity is replaced).
        """
        windows = list(windows)
        for w in windows:
            check_window(w, self.concept_space, self.n_concepts, self.location)
        if not windows:
            return 0
        self._writing()
        # the same window twice in one call: the later one wins, as it would across calls
        latest = {(w.stream, float(w.start), int(w.index)): w for w in windows}
        groups: dict[tuple[str, int], list[WindowSummary]] = {}
        for w in latest.values():
            groups.setdefault((w.stream, int(math.floor(w.start / DAY))), []).append(w)
        for (stream, day), group in groups.items():
            self._layout.register(stream)
            batch = new_batch_id()
            header, concepts = window_tables(group, batch)
            hdir = self._partition_dir("windows", stream, day)
            fresh = not self._files(hdir)
            # The concepts (and rollup) files go first: the windows file written last commits the batch.
            self._write_table(
                "window_concepts", self._partition_dir("window_concepts", stream, day), batch, concepts,
                row_group_size=CONCEPT_ROW_GROUP,
            )
            if fresh:  # the partition's only file: its totals serve whole-day queries until more files arrive
                self._write_table("window_rollups", self._partition_dir("window_rollups", stream, day), batch,
                                  rollup(concepts))
            self._write_table("windows", hdir, batch, header)
        return len(windows)

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
        """Windows whose start lies in [start, end), columnar, deduplicated (last write wins per window).

        ``concepts`` restricts the concept rows to those ids (files are concept-sorted, so this skips row groups).
        The concept table gains a dictionary-encoded ``stream`` column. For large ranges prefer
        :meth:`iter_windows`, which streams record batches in bounded memory.
        """
        return self._window_data(self._list_windows(streams, start, end), start, end, concepts, with_concepts)

    def _window_data(
        self,
        listing: list[tuple[str, int, list[PurePath]]],
        start: float | None,
        end: float | None,
        concepts: Sequence[int] | np.ndarray | None = None,
        with_concepts: bool = True,
    ) -> WindowData:
        """The windows of the header files in ``listing`` (compaction passes the files it merges)."""
        header, batches = self._iter_listing(listing, start, end, concepts, None, with_concepts, skip=set())
        tables = []
        for stream, batch in batches:
            if batch.num_rows:
                t = pa.Table.from_batches([batch])
                tables.append(t.append_column("stream", constant_dict(stream, t.num_rows)))
        concepts_table = pa.concat_tables(tables) if tables else concept_result_schema().empty_table()
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
            keep = {"stream", "start", "batch", "window_index", *header_columns}
            header_schema = pa.schema([f for f in WINDOW_SCHEMA if f.name in keep])
        if not header_files:
            return header_schema.empty_table(), iter(())
        concept_files: dict[str, list[PurePath]] = {}
        for stream, day, files in listing:
            if (stream, day) in skip:
                continue
            cdir = self._partition_dir("window_concepts", stream, day)
            concept_files.setdefault(stream, []).extend(cdir / f.name for f in files)
        time_filter = range_filter("start", start, end)
        header = read_many(self._fs, header_files, header_schema)
        header = header.filter(range_mask(header["start"].to_numpy(), start, end))
        header, losers = dedupe_windows(header)
        if not with_concepts or header.num_rows == 0:
            return header, iter(())
        cfilter = time_filter
        if concepts is not None:
            ids = pa.array(np.asarray(concepts, dtype=np.int32), type=pa.int32())
            cond = ds.field("concept_index").isin(ids)
            cfilter = cond if cfilter is None else (cfilter & cond)
        cols = list(CONCEPT_SCHEMA.names if columns is None else columns)
        read_cols = cols + [c for c in ("start", "window_index") if losers and c not in cols]
        # the columns worth decoding: the asked ones plus what the concept and time filters look at
        needed = pa.schema([f for f in CONCEPT_SCHEMA if f.name in {*cols, "concept_index", "start"}])

        def batches() -> Iterator[tuple[str, pa.RecordBatch]]:
            if concepts is not None:
                # A few concepts: read only the row groups whose statistics can hold them, many files at once.
                wanted = np.unique(np.asarray(concepts, dtype=np.int64))
                for stream, files in concept_files.items():
                    clean = [f for f in files if (stream, f.name[: -len(".parquet")]) not in losers]
                    table = read_many(self._fs, clean, needed, concepts=wanted, start=start, end=end)
                    for b in table.select(cols).to_batches():
                        yield stream, b  # read_many conforms older files already
                yield from _loser_batches()
                return
            for stream, files in concept_files.items():
                clean = [f for f in files if (stream, f.name[: -len(".parquet")]) not in losers]
                if clean:
                    for b in self._dataset(clean, CONCEPT_SCHEMA).to_batches(columns=cols, filter=cfilter):
                        yield stream, fill_defaults(b)
            yield from _loser_batches()

        def _loser_batches() -> Iterator[tuple[str, pa.RecordBatch]]:
            # Files holding a window that a later write replaced: drop the replaced windows' rows.
            for (stream, batch_id), drop in losers.items():
                f = next((f for f in concept_files.get(stream, []) if f.name == f"{batch_id}.parquet"), None)
                if f is None:
                    continue
                for b in self._dataset([f], CONCEPT_SCHEMA).to_batches(columns=read_cols, filter=cfilter):
                    b = fill_defaults(b)
                    keep = ~np.isin(window_keys(b), np.array(sorted(drop), dtype=object))
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
                for b in read_many(self._fs, rollups[i : i + 64], ROLLUP_SCHEMA).select(cols).to_batches()
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
        header = header.sort_by([("stream", "ascending"), ("start", "ascending"), ("window_index", "ascending")])
        c = self.n_concepts
        n = header.num_rows
        wsum = np.zeros((n, c))
        wsq = np.zeros((n, c))
        pres = np.zeros((n, c), dtype=np.int64)
        h_stream = np.asarray(header["stream"].to_pylist(), dtype=object)
        h_key = _window_id(header["start"].to_numpy(), header["window_index"].to_numpy())
        for stream, batch in batches:
            # rows of this stream are sorted by (start, index) in the header: a binary search maps each entry to its row
            rows_of_stream = np.flatnonzero(h_stream == stream)
            keys = h_key[rows_of_stream]
            entry = _window_id(batch.column("start").to_numpy(), batch.column("window_index").to_numpy())
            pos = np.minimum(np.searchsorted(keys, entry), max(len(keys) - 1, 0))
            if len(keys) == 0 or not np.array_equal(keys[pos], entry):
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
                index=h["window_index"][i],
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
        if groups:
            self._writing()
        for (stream, day), group in groups.items():
            self._layout.register(stream)
            batch = new_batch_id()
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
        cols["event_time"] = [math.nan if v is None else v for v in cols["event_time"]]
        cols["item_offset"] = [-1 if v is None else v for v in cols["item_offset"]]
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
        days = day_numbers(ts)
        streams = np.array([it.stream for it in items], dtype=object)
        self._writing()
        for key in sorted({(s, int(d)) for s, d in zip(streams, days)}):
            self._layout.register(key[0])
            rows = np.flatnonzero((streams == key[0]) & (days == key[1]))
            part = codes.take(rows)
            batch = new_batch_id()
            offsets = pa.array(part.indptr.astype(np.int32), type=pa.int32())
            table = pa.table(
                {
                    "stream": [key[0]] * len(rows),
                    "id": [items[i].id for i in rows],
                    "timestamp": ts[rows],
                    "metadata": pa.array(
                        [[(str(k), meta_text(v)) for k, v in items[i].metadata.items()] for i in rows],
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
            table = dedupe_last(table, ["stream", "id"])
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
        return self._dataset(files, SCHEMAS[table]).to_table(filter=range_filter(time_column, start, end))

    # ------------------------------------------------------------------ checkpoints (see checkpoints.py)
    def get_checkpoint(self, job_id: str) -> dict[str, Any] | None:
        """The last state saved for ``job_id``, or None when the job never saved one."""
        return self._checkpoints.get(job_id)

    def set_checkpoint(self, job_id: str, state: Mapping[str, Any]) -> None:
        """Atomically replace ``job_id``'s saved state (any JSON-serialisable mapping)."""
        self._checkpoints.set(job_id, state)

    def clear_checkpoint(self, job_id: str) -> None:
        self._checkpoints.clear(job_id)

    def list_checkpoints(self) -> list[str]:
        return self._checkpoints.list()

    def write_checkpoint_file(self, name: str, data: bytes) -> None:
        """Store opaque bytes (e.g. a saved monitor state) under ``checkpoints/NAME``, atomically, wherever the
        store lives: jobs keep state next to their checkpoint record without touching the local disk."""
        self._checkpoints.write_file(name, data)

    def read_checkpoint_file(self, name: str) -> bytes | None:
        """The bytes stored under ``checkpoints/NAME``, or None when there are none."""
        return self._checkpoints.read_file(name)

    def delete_checkpoint_file(self, name: str) -> None:
        self._checkpoints.delete_file(name)

    # ------------------------------------------------------------------ maintenance (see maintenance.py)
    def compact(
        self,
        *,
        stream: str | Sequence[str] | None = None,
        min_files: int = 2,
        temp_age_s: float = 3600.0,
        grace_s: float = 600.0,
        apply_retention: bool = True,
        now: float | None = None,
    ) -> dict[str, int]:
        """Merge each partition holding at least ``min_files`` committed files into one (resolving rewritten
        windows and ids), drop orphan concept files and temporaries older than ``temp_age_s``, then apply the
        codes retention. Beside a live writer (another process holds the writer lock) files younger than
        ``grace_s`` are left alone. Returns counts of what was done."""
        return self._maintenance.compact(stream=stream, min_files=min_files, temp_age_s=temp_age_s, grace_s=grace_s,
                                         apply_retention=apply_retention, now=now)

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
        return self._maintenance.apply_retention(codes_days=codes_days, windows_days=windows_days,
                                                 alarms_days=alarms_days, now=now)

    def quarantine_corrupt(self) -> list[str]:
        """Move every file that does not read back (and the rest of its window batch) to ``quarantine/``, warning
        with :class:`~monitor.errors.CorruptFileWarning` naming each; returns the moved paths, root-relative."""
        return self._maintenance.quarantine_corrupt()

    @retry_if_compacted
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


def _window_id(start: np.ndarray, index: np.ndarray) -> np.ndarray:
    """(start, window index) pairs as one sortable structured array (the identity of a window within a stream)."""
    out = np.empty(len(start), dtype=[("start", "f8"), ("index", "i8")])
    out["start"] = start
    out["index"] = index
    return out
