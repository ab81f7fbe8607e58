"""Where each row of the history store goes: ``TABLE/stream=KEY/date=YYYY-MM-DD/BATCH.parquet``, the listing of
committed files by partition, and the registry that maps a hashed stream key back to the stream's name."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import PurePath

import pyarrow.fs as pafs

from monitor.history.fs import StoreFS, is_visible
from monitor.history.schema import DAY, day_from_name, day_name, stream_from_key, stream_key

__all__ = ["Layout"]

_FAR = 2**62


class Layout:
    """Partition paths and listings of one store. Streams whose name is too long for a directory (see
    :func:`~monitor.history.schema.stream_key`) are registered in ``streams/KEY.json`` before their first file is
    written, so a listing can always name the stream of a partition."""

    REGISTRY = "streams"

    def __init__(self, fs: StoreFS) -> None:
        self.fs = fs
        self._names: dict[str, str] = {}  # hashed key -> stream name, filled from the registry

    # -- stream keys ------------------------------------------------------------------------------------------
    def register(self, stream: str) -> str:
        """The directory key of ``stream``, recorded in the registry first when it is a hashed key."""
        key = stream_key(stream)
        if stream_from_key(key) is None and self._names.get(key) != stream:
            path = self.fs.join(self.REGISTRY, f"{key}.json")
            if not self.fs.exists(path):
                self.fs.write_bytes(path, json.dumps({"stream": stream}, ensure_ascii=False).encode("utf-8"))
            self._names[key] = stream
        return key

    def stream_of(self, key: str) -> str:
        """The stream name of a partition directory's key."""
        name = stream_from_key(key)
        if name is not None:
            return name
        if key not in self._names:
            try:
                doc = json.loads(self.fs.read_bytes(self.fs.join(self.REGISTRY, f"{key}.json")).decode("utf-8"))
                self._names[key] = str(doc["stream"])
            except (OSError, ValueError, KeyError):
                return key  # an unregistered key (hand-made directory): shown as it is rather than dropped
        return self._names[key]

    # -- paths ------------------------------------------------------------------------------------------------
    def partition_dir(self, table: str, stream: str, day: int) -> PurePath:
        return self.fs.join(table, f"stream={stream_key(stream)}", f"date={day_name(day)}")

    @staticmethod
    def _day_range(start: float | None, end: float | None) -> tuple[int, int]:
        lo = -_FAR if start is None else int(math.floor(start / DAY))
        hi = _FAR if end is None else int(math.ceil(end / DAY)) - 1
        return lo, hi

    def partitions(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, PurePath]]:
        """(stream, day, dir) of every partition that may hold rows with time in [start, end)."""
        base = self.fs.join(table)
        wanted = None if streams is None else {stream_key(s) for s in streams}
        lo, hi = self._day_range(start, end)
        out = []
        dirs = pafs.FileType.Directory
        for sdir in sorted(self.fs.list(base), key=lambda i: i.base_name):
            if not sdir.base_name.startswith("stream=") or sdir.type != dirs:
                continue
            key = sdir.base_name[len("stream="):]
            if wanted is not None and key not in wanted:
                continue
            stream = self.stream_of(key)
            for ddir in sorted(self.fs.list(base / sdir.base_name), key=lambda i: i.base_name):
                if not ddir.base_name.startswith("date=") or ddir.type != dirs:
                    continue
                try:
                    day = day_from_name(ddir.base_name[len("date="):])
                except ValueError:
                    continue
                if lo <= day <= hi:
                    out.append((stream, day, base / sdir.base_name / ddir.base_name))
        return out

    def listing(
        self, table: str, streams: Sequence[str] | None = None, start: float | None = None, end: float | None = None
    ) -> list[tuple[str, int, list[PurePath]]]:
        """(stream, day, committed files) of every non-empty partition that may hold rows with time in [start, end),
        from one recursive listing per table (or per wanted stream): on an object store that is one paginated LIST
        instead of one request per partition."""
        base = self.fs.join(table)
        if streams is None:
            roots = [base]
        else:
            roots = [base / f"stream={k}" for k in sorted({stream_key(s) for s in streams})]
        lo, hi = self._day_range(start, end)
        parts: dict[tuple[str, str], list[PurePath]] = {}
        for root in roots:
            selector = pafs.FileSelector(str(root), recursive=True, allow_not_found=True)
            for info in self.fs.fs.get_file_info(selector):
                if info.type != pafs.FileType.File:
                    continue
                sname, dname, fname = (info.path.rsplit("/", 3) + ["", "", ""])[1:4]
                if not (sname.startswith("stream=") and dname.startswith("date=") and is_visible(fname)):
                    continue
                parts.setdefault((sname, dname), []).append(base / sname / dname / fname)
        out = []
        for (sname, dname), files in sorted(parts.items()):
            try:
                day = day_from_name(dname[len("date="):])
            except ValueError:
                continue
            if lo <= day <= hi:
                out.append((self.stream_of(sname[len("stream="):]), day, sorted(files)))
        return out

    def files(self, directory: PurePath) -> list[PurePath]:
        """Committed Parquet files of a partition directory, sorted by name (= batch id = write time)."""
        return sorted(
            directory / i.base_name
            for i in self.fs.list(directory)
            if i.type == pafs.FileType.File and is_visible(i.base_name)
        )
