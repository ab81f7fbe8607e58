"""A directory of images (or caption files), read once or followed for files that appear later.

The driver lists the directory and hands out file names (:class:`FileList`); each worker reads its files itself,
with the same size limit and the same dead-letter reasons."""

from __future__ import annotations

import fnmatch
import time
from pathlib import Path

from dataclasses import dataclass

from monitor.errors import BadInput, ConfigError
from workers.items import ItemBatch, ItemColumns
from workers.sources.base import Source, SourceBatch, option_bool
from workers.sources.paths import DEFAULT_MAX_PAYLOAD_BYTES, read_path_payload
from workers.sources.timestamps import check_event_time

__all__ = ["DirectorySource", "FileList", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class DirectorySource(Source):
    """Image files under a directory matching ``glob``, oldest first; with ``follow`` it keeps watching for new files.

    Item id: the path relative to the directory; event time: the file's mtime. Following remembers the names it has
    handed out that are still in the directory, not a modification-time watermark: a file moved in with an old
    mtime (``mv``, ``rsync -a``, ``cp -p``, ``tar``) is read like any other, and memory is bounded by the files
    present, not by the files ever seen (names that leave the directory are forgotten at the next scan).
    """

    OPTIONS = {"glob": "*", "follow": "0", "recursive": "0", "stream": "default", "kind": "image",
               "poll_s": "1.0", "settle_s": "0.5", "max_bytes": str(DEFAULT_MAX_PAYLOAD_BYTES)}

    def __init__(self, path: str, *, glob: str = "*", follow: str | bool = False, recursive: str | bool = False,
                 stream: str = "default", kind: str = "image", poll_s: str | float = 1.0,
                 settle_s: str | float = 0.5, max_bytes: str | int = DEFAULT_MAX_PAYLOAD_BYTES) -> None:
        super().__init__()
        self.root = Path(path)
        self._absolute = str(self.root.resolve())  # workers read from here: their working directory may differ
        if not self.root.is_dir():
            raise ConfigError(f"dir source: {str(self.root)!r} is not a directory")
        self.pattern = glob
        self.follow = follow if isinstance(follow, bool) else option_bool(follow, "follow")
        self.recursive = recursive if isinstance(recursive, bool) else option_bool(recursive, "recursive")
        if kind not in ("image", "text"):
            raise ConfigError(f"dir source option kind must be 'image' or 'text', got {kind!r}")
        self.kind = kind
        self.stream = stream
        self.poll_s = float(poll_s)
        self.settle_s = float(settle_s)  # a file younger than this may still be being written
        try:
            self.max_bytes = int(max_bytes)
        except ValueError:
            raise ConfigError(f"dir source option max_bytes must be a number of bytes, got {max_bytes!r}") from None
        if self.max_bytes < 1:
            raise ConfigError(f"dir source option max_bytes must be >= 1, got {self.max_bytes}")
        self.finite = not self.follow
        self.name = f"dir:{self.root}"
        self._queue: list[tuple[int, str]] = []
        self._queued: set[str] = set()
        self._seen: set[str] = set()  # names handed out that were still present at the last scan
        self._mark: tuple[int, str] | None = None  # resume position of a checkpointed (finite) run
        self._listed = False
        self._last_poll = 0.0

    def _scan(self) -> None:
        now_ns = time.time_ns()
        present: set[str] = set()
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
                st = p.stat()
            except OSError:
                continue  # vanished between listing and stat
            present.add(rel)
            if rel in self._seen or rel in self._queued:
                continue
            # "settled" by change time too: mv/rsync -a/cp -p keep an old mtime, but the ctime of the new directory
            # entry is fresh, so a half-copied file still waits
            if self.follow and now_ns - max(st.st_mtime_ns, st.st_ctime_ns) < self.settle_s * 1e9:
                continue
            key = (st.st_mtime_ns, rel)
            if self._mark is not None and key <= self._mark:
                continue
            found.append(key)
        self._seen &= present  # forget files that left the directory: memory follows the directory, not history
        found.sort()
        self._queue.extend(found)
        self._queued.update(rel for _, rel in found)
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
        work = FileList(root=str(self.root), absolute=self._absolute, files=tuple(take), stream=self.stream,
                        kind=self.kind, max_bytes=self.max_bytes)
        for _, rel in take:
            self._queued.discard(rel)
            self._seen.add(rel)
        # within one run nothing is handed out twice; a restart re-reads from the start (or from a checkpoint)
        # because acknowledgement for files is the commit itself
        return SourceBatch(self._next_seq(), token=max(take), work=work)

    def ack(self, batch: SourceBatch) -> None:
        self._ack_in_order(batch)

    def position(self, batch: SourceBatch) -> dict | None:
        return {"mtime_ns": batch.token[0], "name": batch.token[1]}

    def checkpoint(self) -> dict | None:
        acked = self._ack_token
        return None if acked is None else {"mtime_ns": acked[0], "name": acked[1]}

    def resume(self, checkpoint: dict) -> None:
        """Skip every file at or before the checkpoint's (mtime, name) (finite runs, which list the directory once
        and read it in that order)."""
        self._mark = (int(checkpoint["mtime_ns"]), str(checkpoint["name"]))


@dataclass(frozen=True)
class FileList:
    """Files of a directory by (modification time in ns, path relative to the directory): what a worker is sent."""

    root: str
    absolute: str
    files: tuple[tuple[int, str], ...]
    stream: str
    kind: str
    max_bytes: int

    def __len__(self) -> int:
        return len(self.files)

    def load(self) -> ItemBatch:
        """Read the files (run on the worker). The event time is the modification time; a file that is missing,
        unreadable, empty or over ``max_bytes`` keeps its reason from ``read_path_payload``."""
        ids, times, payloads, refs, metadata = [], [], [], [], []
        errors: dict[int, tuple[str, str]] = {}
        for j, (mtime_ns, rel) in enumerate(self.files):
            path = Path(self.root) / rel
            ts = mtime_ns / 1e9
            error = None
            try:
                check_event_time(ts, where="file modification time")
            except ValueError as exc:
                error, ts = ("bad_timestamp", f"{path}: {exc}"), time.time()
            data: bytes | str | None = None
            if error is None:
                try:
                    where = path if path.is_absolute() else Path(self.absolute) / rel
                    data = read_path_payload(str(where), max_bytes=self.max_bytes)
                    if self.kind == "text":
                        data = data.decode("utf-8", "replace")
                except BadInput as exc:
                    error = (exc.reason, exc.detail)
            if error is not None:
                errors[j] = error
            ids.append(rel)
            times.append(ts)
            payloads.append(data)
            refs.append(str(path))
            metadata.append({"path": str(path)})
        n = len(ids)
        return ItemBatch(columns=ItemColumns(ids, times, [0] * n, [self.stream], metadata), payloads=payloads,
                         kinds=self.kind, refs=refs, errors=errors)

    def refs(self) -> list[str]:
        return [str(Path(self.root) / rel) for _, rel in self.files]

    def without(self, refs: set[str]) -> "FileList":
        return FileList(self.root, self.absolute, tuple(f for f in self.files if str(Path(self.root) / f[1]) not in refs),
                        self.stream, self.kind, self.max_bytes)
