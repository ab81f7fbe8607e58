"""Upkeep of a history store: compaction (merge small files, drop orphans and stale temporaries), retention, and the
quarantine of files that cannot be read.

Compaction is safe beside a live writer. When it can take the store's writer lock (nobody writes), it merges
everything; otherwise it leaves alone every file younger than ``grace_s`` (a writer's batch in flight: a concept file
whose header is not yet written looks like an orphan for a moment). A merged file's batch id sorts right after the
newest file it merges (:func:`~monitor.history.schema.merged_batch_id`), so a window the writer rewrites afterwards
still wins over the merged copy.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Sequence
from pathlib import PurePath
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from monitor.atomic import is_temp_name
from monitor.errors import CorruptFileWarning
from monitor.history.schema import (
    CONCEPT_ROW_GROUP, CONCEPT_SCHEMA, DAY, SCHEMAS, TABLES, batch_seconds, merged_batch_id,
)
from monitor.history.tables import dataset, dedupe_last, rollup

if TYPE_CHECKING:
    from monitor.history.store import HistoryStore, WindowData

__all__ = ["Maintenance"]

log = logging.getLogger("splice_monitor.history")
_WINDOW_FAMILY = ("windows", "window_concepts", "window_rollups")


class Maintenance:
    """Compaction, retention and quarantine of one :class:`~monitor.history.store.HistoryStore`."""

    def __init__(self, store: "HistoryStore") -> None:
        self.store = store
        self.fs = store.filesystem
        self.layout = store._layout

    # -- compaction -------------------------------------------------------------------------------------------
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
        if min_files < 1:
            raise ValueError(f"min_files must be >= 1, got {min_files}")
        if not grace_s >= 0:
            raise ValueError(f"grace_s must be >= 0 seconds, got {grace_s!r}")
        writer = self.store._writer
        held_before = writer.held
        exclusive = writer.supported and writer.try_acquire(purpose="compact")
        try:
            return self._compact(stream, min_files, temp_age_s, 0.0 if exclusive else grace_s, apply_retention, now)
        finally:
            if exclusive and not held_before:
                writer.release()

    def _compact(self, stream, min_files, temp_age_s, grace_s, apply_retention, now) -> dict[str, int]:
        streams = [stream] if isinstance(stream, str) else stream
        stats = {"partitions_compacted": 0, "files_removed": 0, "files_written": 0, "orphans_removed": 0,
                 "temps_removed": 0, "files_too_young": 0}
        wall = time.time()
        temp_age = max(temp_age_s, grace_s)

        def young(path: PurePath, info: pafs.FileInfo | None = None) -> bool:
            if grace_s <= 0:
                return False
            born = batch_seconds(path.name)
            if born is None:
                info = info or self.fs.fs.get_file_info(str(path))
                born = info.mtime_ns / 1e9 if info.mtime_ns is not None else 0.0
            return wall - born < grace_s

        for table in TABLES:
            for _, _, d in self.layout.partitions(table, streams):
                for entry in self.fs.list(d):
                    if is_temp_name(entry.base_name):
                        mtime = entry.mtime_ns / 1e9 if entry.mtime_ns is not None else 0.0
                        if wall - mtime >= temp_age:
                            self.fs.delete_file(d / entry.base_name, missing_ok=True)
                            stats["temps_removed"] += 1
        for s, day, hdir in self.layout.partitions("windows", streams):
            cdir = self.layout.partition_dir("window_concepts", s, day)
            headers = self.layout.files(hdir)
            committed = {f.name for f in headers}
            for orphan in [f for f in self.layout.files(cdir) if f.name not in committed]:
                if young(orphan):  # its header may be on its way
                    continue
                self.fs.delete_file(orphan, missing_ok=True)
                stats["orphans_removed"] += 1
            ready = [f for f in headers if not young(f)]
            stats["files_too_young"] += len(headers) - len(ready)
            if len(ready) < min_files:
                continue
            data = self.store._window_data([(s, day, ready)], day * DAY, (day + 1) * DAY)
            self._rewrite_windows(s, day, data, ready, stats)
        # concept files without a header, and rollups that no longer describe the partition's only file
        for s, day, cdir in self.layout.partitions("window_concepts", streams):
            if not self.fs.is_dir(self.layout.partition_dir("windows", s, day)):
                for f in self.layout.files(cdir):
                    if not young(f):
                        self.fs.delete_file(f, missing_ok=True)
                        stats["orphans_removed"] += 1
        for s, day, rdir in self.layout.partitions("window_rollups", streams):
            headers = {f.name for f in self.layout.files(self.layout.partition_dir("windows", s, day))}
            for f in self.layout.files(rdir):
                if (len(headers) != 1 or f.name not in headers) and not young(f):
                    self.fs.delete_file(f, missing_ok=True)
                    stats["orphans_removed"] += 1
        for table, time_col, keys in (("alarms", "window_start", None), ("codes", "timestamp", ["stream", "id"])):
            for s, day, d in self.layout.partitions(table, streams):
                files = self.layout.files(d)
                ready = [f for f in files if not young(f)]
                stats["files_too_young"] += len(files) - len(ready)
                if len(ready) < min_files:
                    continue
                t = dataset(self.fs, ready, SCHEMAS[table]).to_table()
                if keys:
                    t = dedupe_last(t, keys)
                t = t.sort_by(time_col)
                batch = merged_batch_id([f.name[: -len(".parquet")] for f in ready])
                t = t.set_column(t.schema.get_field_index("batch"), "batch", pa.array([batch] * t.num_rows, pa.string()))
                self.store._write_table(table, d, batch, t)
                stats["files_written"] += 1
                for f in ready:
                    self.fs.delete_file(f, missing_ok=True)
                    stats["files_removed"] += 1
                stats["partitions_compacted"] += 1
        if apply_retention and self.store.codes_retention_days is not None:
            expired = self.apply_retention(codes_days=self.store.codes_retention_days, now=now, grace_s=grace_s)
            stats["codes_partitions_expired"] = expired["codes"]
        self.remove_empty_dirs()
        return stats

    def _rewrite_windows(self, stream: str, day: int, data: "WindowData", old: list[PurePath], stats: dict) -> None:
        batch = merged_batch_id([f.name[: -len(".parquet")] for f in old])
        header = data.header.sort_by([("start", "ascending"), ("window_index", "ascending")])
        header = header.set_column(
            header.schema.get_field_index("batch"), "batch", pa.array([batch] * header.num_rows, pa.string())
        )
        ct = data.concepts
        order = np.lexsort((ct["window_index"].to_numpy(), ct["start"].to_numpy(), ct["concept_index"].to_numpy()))
        concepts = ct.select(CONCEPT_SCHEMA.names).take(pa.array(order))
        cdir = self.layout.partition_dir("window_concepts", stream, day)
        hdir = self.layout.partition_dir("windows", stream, day)
        rdir = self.layout.partition_dir("window_rollups", stream, day)
        self.store._write_table("window_concepts", cdir, batch, concepts, row_group_size=CONCEPT_ROW_GROUP)
        self.store._write_table("window_rollups", rdir, batch, rollup(concepts))
        self.store._write_table("windows", hdir, batch, header)
        stats["files_written"] += 3
        # Headers go first so that no moment shows a committed batch without its concepts.
        for f in old:
            self.fs.delete_file(f, missing_ok=True)
            self.fs.delete_file(cdir / f.name, missing_ok=True)
            self.fs.delete_file(rdir / f.name, missing_ok=True)
            stats["files_removed"] += 2
        stats["partitions_compacted"] += 1

    # -- retention --------------------------------------------------------------------------------------------
    def apply_retention(
        self,
        *,
        codes_days: float | None = None,
        windows_days: float | None = None,
        alarms_days: float | None = None,
        now: float | None = None,
        grace_s: float = 0.0,
    ) -> dict[str, int]:
        now = time.time() if now is None else float(now)
        wall = time.time()
        if codes_days is None:
            codes_days = self.store.codes_retention_days
        removed = {"codes": 0, "windows": 0, "alarms": 0}
        plan = {"codes": codes_days, "windows": windows_days, "alarms": alarms_days}
        for table, days in plan.items():
            if days is None:
                continue
            if not days > 0:
                raise ValueError(f"{table}_days must be > 0 or None, got {days!r}")
            cutoff = now - days * DAY
            for s, day, d in self.layout.partitions(table):
                if (day + 1) * DAY > cutoff:  # some row of the partition may be newer than the cutoff
                    continue
                if grace_s > 0 and any(wall - (batch_seconds(f.name) or 0.0) < grace_s for f in self.layout.files(d)):
                    continue  # a writer is filling this old day right now (a backfill): leave it to the next run
                self.fs.delete_dir(d, missing_ok=True)
                if table == "windows":
                    self.fs.delete_dir(self.layout.partition_dir("window_concepts", s, day), missing_ok=True)
                    self.fs.delete_dir(self.layout.partition_dir("window_rollups", s, day), missing_ok=True)
                removed[table] += 1
        self.remove_empty_dirs()
        return removed

    def remove_empty_dirs(self) -> None:
        dirs = pafs.FileType.Directory
        for table in TABLES:
            base = self.fs.join(table)
            for sdir in self.fs.list(base):
                if sdir.type != dirs:
                    continue
                spath = base / sdir.base_name
                for ddir in self.fs.list(spath):
                    if ddir.type == dirs and not self.fs.list(spath / ddir.base_name):
                        self.fs.delete_dir(spath / ddir.base_name, missing_ok=True)
                if not self.fs.list(spath):
                    self.fs.delete_dir(spath, missing_ok=True)

    # -- quarantine -------------------------------------------------------------------------------------------
    def find_corrupt(self) -> list[tuple[PurePath, str]]:
        """(path, reason) of every committed file whose bytes read fine but do not decode as Parquet. A file whose
        bytes cannot be read at all (network, permissions) is no proof of corruption: that error is raised."""
        bad = []
        for table in TABLES:
            for _, _, files in self.layout.listing(table):
                for f in files:
                    try:
                        data = self.fs.read_bytes(f)
                    except FileNotFoundError:
                        continue  # compacted away meanwhile
                    try:
                        pq.ParquetFile(pa.BufferReader(data)).read(use_threads=False)
                    except (pa.ArrowException, OSError, ValueError) as exc:
                        bad.append((f, " ".join(str(exc).split())[:200]))
        return bad

    def quarantine_corrupt(self) -> list[str]:
        """Move every unreadable file (with the rest of its window batch) under ``quarantine/``, keeping its path
        relative to the root, and warn naming both; returns the quarantined paths (relative to the root)."""
        base = str(self.fs.base).rstrip("/") + "/"
        moved: list[str] = []
        for path, reason in self.find_corrupt():
            rel = str(path)[len(base):]
            parts = rel.split("/")
            family = [rel]
            if parts[0] in _WINDOW_FAMILY:
                # a window batch is one unit: a header without its concept rows (or the reverse) would read wrong
                family = ["/".join([t, *parts[1:]]) for t in _WINDOW_FAMILY]
            for member in family:
                src = self.fs.join(*member.split("/"))
                if member in moved or not self.fs.exists(src):
                    continue
                self.fs.move(src, self.fs.join("quarantine", *member.split("/")))
                moved.append(member)
            message = (f"history store {self.store.location!r}: unreadable file {rel} ({reason}) moved to "
                       f"quarantine/{rel}" + (" with the rest of its window batch" if len(family) > 1 else "")
                       + "; its rows are left out of results")
            log.warning(message)
            warnings.warn(message, CorruptFileWarning, stacklevel=3)
        return moved
