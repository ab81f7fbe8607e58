"""The project's one atomic write: a reader of the final name sees the old content or the new, never a part.

Bytes first, files as thin wrappers: callers serialise in memory (safetensors, Parquet, ``.npz``, JSON, HTML) and
hand the bytes to :func:`atomic_write_bytes` (a local path) or :func:`atomic_put` (one object of an object store,
through a pyarrow filesystem). Nothing here imports more than the standard library.

>>> import pathlib, tempfile
>>> path = pathlib.Path(tempfile.mkdtemp()) / "sub" / "state.json"
>>> _ = atomic_write_text(path, '{"ok": true}')
>>> path.read_text()
'{"ok": true}'
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any

__all__ = ["TEMP_MARK", "atomic_put", "atomic_write_bytes", "atomic_write_text", "fsync_path", "is_temp_name",
           "temp_path"]

# Temporaries are named ".<final name>.tmp-<random>": the leading dot hides them from every reader that lists a
# directory for committed files, and the mark lets maintenance find the ones a crash left behind.
TEMP_MARK = ".tmp-"


def temp_path(final: Path) -> Path:
    """A fresh temporary name beside ``final`` (same directory, hence same filesystem: the rename stays atomic)."""
    return final.with_name(f".{final.name}{TEMP_MARK}{uuid.uuid4().hex[:8]}")


def is_temp_name(name: str) -> bool:
    """Whether a file name is one of :func:`temp_path`'s temporaries."""
    return name.startswith(".") and TEMP_MARK in name


def fsync_path(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Flush a file, or a directory entry, to disk: a rename is durable only once its directory is."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        if directory:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on a directory
        if not directory:
            raise
    finally:
        os.close(fd)


def _commit(temp: Path, final: Path) -> None:
    """The single point where a finished temporary becomes visible: rename(2), which replaces ``final`` atomically.
    (Tests patch this to fail between the write and the commit.)"""
    os.replace(temp, final)


def atomic_write_bytes(path: str | os.PathLike[str], data: Any, *, durable: bool = True) -> Path:
    """Make the local file ``path`` hold exactly ``data`` (bytes or any buffer), atomically for readers.

    The data goes to a temporary beside ``path``, is fsynced (unless ``durable=False``), then renamed over ``path``;
    the directory entry is fsynced last. On any failure the temporary is removed and ``path`` is untouched.
    Parent directories are created.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(final)
    try:
        with open(temp, "xb") as fh:
            fh.write(data)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        _commit(temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(final.parent, directory=True)
    return final


def atomic_write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text."""
    return atomic_write_bytes(path, text.encode(encoding))


def atomic_put(fs: Any, key: str, data: Any, *, fresh: bool = False) -> None:
    """Store ``data`` as the object ``key`` of a pyarrow filesystem ``fs`` (an object store) in one upload.

    An object becomes visible only once its upload completes, so readers never see a part; object stores have no
    atomic rename (theirs is copy + delete), which is why this is their commit rather than :func:`atomic_write_bytes`.
    Below the multipart threshold (5 MiB) pyarrow sends the payload as a single PUT at close. ``fresh`` says no earlier
    version of ``key`` exists, so a failed upload may delete whatever a multipart upload left.
    """
    out = fs.open_output_stream(key)
    try:
        out.write(data)
        out.close()  # the upload completes, and the object appears, only here
    except BaseException:
        # pyarrow streams have no abort and close from their destructor: a large (multipart) upload that failed
        # part-way could still complete with what was sent, so a fresh key is removed again
        del out
        if fresh:
            try:
                fs.delete_file(key)
            except OSError:
                pass
        raise
