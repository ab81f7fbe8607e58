"""Where a history store lives and how its files are committed: a pyarrow filesystem (local disk or an object store)
plus the root's path in it, the atomic commit rule of each backend, and the single-writer lock of a local root."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Sequence
from pathlib import Path, PurePath, PurePosixPath

import pyarrow as pa
import pyarrow.fs as pafs

from monitor.atomic import atomic_put, atomic_write_bytes
from monitor.errors import ConfigError
from monitor.uris import redact_uri

__all__ = ["URI_SCHEMES", "StoreFS", "WriterLock", "is_visible"]

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
ACCESS_HINTS = {
    "": "check that the directory is readable and writable",
    "file": "check that the directory is readable and writable",
    "s3": "check the credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or the pod's role), AWS_ENDPOINT_URL, "
          "AWS_REGION and the network",
    "gs": "check the credentials (GOOGLE_APPLICATION_CREDENTIALS or workload identity) and the network",
    "abfs": "check the credentials (AZURE_* variables or the managed identity) and the network",
}
ACCESS_HINTS["gcs"] = ACCESS_HINTS["gs"]
ACCESS_HINTS["abfss"] = ACCESS_HINTS["abfs"]
# "s3:", "gs:", "C:": anything that starts like a URI scheme is treated as one, never as a local folder name.
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*):")


def _redact(uri: str) -> str:
    """A URI fit for messages: the project's one redaction (monitor.uris)."""
    return redact_uri(uri)


def short_error(exc: BaseException, limit: int = 300) -> str:
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
                f"history root {shown!r}: pyarrow cannot open it here ({short_error(exc)}); expected {URI_SCHEMES[scheme]}"
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

    def move(self, src: PurePath, dst: PurePath) -> None:
        """Move a file (quarantine): a rename on a local disk, copy + delete on an object store."""
        self.makedirs(dst.parent)
        self.fs.move(str(src), str(dst))

    def delete_dir(self, path: PurePath, *, missing_ok: bool = False) -> None:
        try:
            self.fs.delete_dir(str(path))
        except FileNotFoundError:
            if not missing_ok:
                raise


def is_visible(name: str) -> bool:
    """Readers look only at committed files: temporaries start with a dot."""
    return name.endswith(".parquet") and not name.startswith(".")



# ---------------------------------------------------------------------------------------------------- writer lock

# Process-wide: every HistoryStore of one process that writes the same root shares one OS lock (the single-writer
# rule is about processes: within one, batch ids already keep concurrent writes apart).
_HELD: dict[str, list] = {}  # lock path -> [FileLock, number of holders in this process]
_HELD_GUARD = threading.Lock()
_ACQUIRE_GUARD = threading.Lock()


class WriterLock:
    """One writer process per local store: an OS lock (``flock``) on ``ROOT/.writer.lock``, which the kernel releases
    when the holder dies, so a crash never leaves a stale lock; ``ROOT/.writer.json`` names the holder for the error a
    second writer gets. Object stores have no lock (see docs/history.md): there, one writer is the operator's rule.

    Sharded writers (``shard=(i, n)``, n > 1: the aggregators of one run, each writing only the streams hashed onto
    it) take ``.writer.lock`` *shared*, so they write side by side while any single writer (another run, a
    compaction) is kept out, and ``.writer-shard-i.lock`` exclusively, so two runs' shard i never write together.
    """

    LOCK_NAME = ".writer.lock"
    HOLDER_NAME = ".writer.json"

    def __init__(self, fs: StoreFS, *, location: str, timeout_s: float = 30.0, purpose: str = "writer",
                 shard: tuple[int, int] | None = None) -> None:
        self.fs = fs
        self.location = location
        self.timeout_s = float(timeout_s)
        self.purpose = purpose
        self.held = False
        self._path = str(fs.join(self.LOCK_NAME)) if fs.local else None
        self.shard = shard if shard is not None and int(shard[1]) > 1 else None
        self._shared: tuple[int, object] | None = None  # (fd holding .writer.lock shared, the shard's FileLock)

    @property
    def supported(self) -> bool:
        return self._path is not None

    def acquire(self, *, timeout_s: float | None = None, purpose: str | None = None) -> bool:
        """Take the lock (waiting up to ``timeout_s``, default the constructor's); raise ConfigError naming the store
        and the holder when another process keeps it. True once held (always True where locks are unsupported)."""
        if self.held or self._path is None:
            return True
        from filelock import FileLock, Timeout

        wait = self.timeout_s if timeout_s is None else float(timeout_s)
        if self.shard is not None:
            self._acquire_shard(wait, purpose or self.purpose)
            self.held = True
            return True
        # One thread at a time acquires: two threads of one process opening the lock file separately would
        # exclude each other (flock belongs to an open file), and they are the same writer.
        with _ACQUIRE_GUARD:
            with _HELD_GUARD:
                entry = _HELD.get(self._path)
                if entry is not None:
                    entry[1] += 1
                    self.held = True
                    return True
            self.fs.makedirs(self.fs.base)
            lock = FileLock(self._path, thread_local=False)
            try:
                lock.acquire(timeout=wait)
            except Timeout:
                raise ConfigError(
                    f"history store {self.location!r} is being written by another process ({self.holder()}); one "
                    f"writer per store: stop that writer, wait for it to finish, or write to another store "
                    f"directory (lock file {self._path})"
                ) from None
            doc = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                   "purpose": purpose or self.purpose}
            atomic_write_bytes(Path(self._path).with_name(self.HOLDER_NAME), json.dumps(doc).encode())
            with _HELD_GUARD:
                _HELD[self._path] = [lock, 1]
        self.held = True
        return True

    def try_acquire(self, purpose: str | None = None) -> bool:
        """Take the lock only if it is free now; False when another process holds it."""
        try:
            return self.acquire(timeout_s=0, purpose=purpose)
        except ConfigError:
            return False

    def _acquire_shard(self, wait: float, purpose: str) -> None:
        """Take ``.writer.lock`` shared and this shard's lock exclusively (see the class docstring)."""
        import fcntl

        from filelock import FileLock, Timeout

        index, count = self.shard
        self.fs.makedirs(self.fs.base)
        fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise ConfigError(
                        f"history store {self.location!r} is being written by another process ({self.holder()}); "
                        f"the {count} aggregators of a run share it, but not with another writer: stop that writer "
                        f"or wait for it to finish (lock file {self._path})") from None
                time.sleep(0.05)
        shard_path = str(self.fs.join(f".writer-shard-{index}.lock"))
        lock = FileLock(shard_path, thread_local=False)
        try:
            lock.acquire(timeout=max(0.0, deadline - time.monotonic()))
        except Timeout:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise ConfigError(
                f"history store {self.location!r}: aggregator shard {index} is being written by another run; one "
                f"run per store (lock file {shard_path})") from None
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
               "purpose": f"{purpose} (aggregator shard {index} of {count})"}
        atomic_write_bytes(Path(shard_path).with_suffix(".json"), json.dumps(doc).encode())
        self._shared = (fd, lock)

    def _release_shard(self) -> None:
        import fcntl

        fd, lock = self._shared
        self._shared = None
        try:
            Path(lock.lock_file).with_suffix(".json").unlink(missing_ok=True)
        finally:
            lock.release()
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def release(self) -> None:
        if not self.held or self._path is None:
            return
        self.held = False
        if self._shared is not None:
            self._release_shard()
            return
        with _HELD_GUARD:
            entry = _HELD.get(self._path)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _HELD[self._path]
            try:
                Path(self._path).with_name(self.HOLDER_NAME).unlink(missing_ok=True)
            finally:
                entry[0].release()

    def holder(self) -> str:
        """Who holds the lock, in words, from the holder file (best effort: it may be mid-write or gone)."""
        holder = Path(self._path).with_name(self.HOLDER_NAME)
        if not holder.exists():  # sharded writers name themselves per shard
            holder = next(iter(sorted(holder.parent.glob(".writer-shard-*.json"))), holder)
        try:
            doc = json.loads(holder.read_text())
        except (OSError, ValueError, TypeError):
            return "holder unknown"
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(doc.get("since", 0))))
        return f"{doc.get('purpose', 'writer')} pid {doc.get('pid')} on {doc.get('host')} since {since}"
