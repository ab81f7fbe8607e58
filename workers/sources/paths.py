"""Reading a payload named by a path (a path column, a Redis path field, a followed directory) without trusting it:
only regular files, at most ``max_bytes``, optionally only under an allowed root. ``/dev/zero``, a FIFO, a
directory or a 50 GB file is one dead letter, never a hung or exhausted worker."""

from __future__ import annotations

import os
import stat

from monitor.errors import BadInput

__all__ = ["DEFAULT_MAX_PAYLOAD_BYTES", "read_path_payload"]

# Far above any camera frame or caption file we expect, far below what would put a worker's memory at risk.
DEFAULT_MAX_PAYLOAD_BYTES = 64 * 1024 * 1024

_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def read_path_payload(path: str, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES, root: str | None = None) -> bytes:
    """The bytes of the regular file at ``path``.

    BadInput ``bad_path`` when it cannot be opened, is not a regular file or lies outside ``root`` (after resolving
    symlinks); ``payload_too_large`` when it holds more than ``max_bytes``. The file is opened non-blocking, so a
    FIFO without a writer is refused at once instead of blocking the reader forever.
    """
    if not isinstance(path, str) or not path:
        raise BadInput("bad_path", f"payload path must be a non-empty string, got {path!r}")
    real = os.path.realpath(path)
    if root is not None:
        real_root = os.path.realpath(root)
        if os.path.commonpath([real, real_root]) != real_root:
            raise BadInput("bad_path", f"path {path!r} resolves to {real!r}, outside the allowed root {root!r}")
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        # O_NOFOLLOW: the path was resolved above; a symlink swapped in since then is refused, not followed
        fd = os.open(real, flags | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        raise BadInput("bad_path", f"cannot open payload path {path!r}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
            raise BadInput("bad_path", f"payload path {path!r} is {what}; only regular files are read")
        if st.st_size > max_bytes:
            raise BadInput("payload_too_large", f"payload file {path!r} holds {st.st_size} bytes, more than the "
                                                f"limit of {max_bytes}")
        chunks, total = [], 0
        while True:  # read at most max_bytes + 1: a file that grows while read is still caught
            chunk = os.read(fd, min(1 << 20, max_bytes + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:
                raise BadInput("payload_too_large", f"payload file {path!r} grew past the limit of {max_bytes} "
                                                    f"bytes while being read")
        return b"".join(chunks)
    except OSError as exc:
        raise BadInput("bad_path", f"cannot read payload path {path!r}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
