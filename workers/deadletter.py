"""Dead-letter sinks: where items that cannot be processed go, with their reason, so the stream goes on.

``redis://host:port/db?stream=deadletters`` appends entries to a Redis stream; ``parquet:///dir`` (or a plain path)
writes Parquet part files atomically (temp file + rename) into a directory; no URI keeps only counts and the last
few letters in memory for the run summary.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Iterable

from monitor.atomic import atomic_write_bytes
from monitor.errors import ConfigError
from monitor.uris import redact_text, redact_uri
from workers.core import DeadLetter

__all__ = ["DeadLetterSink", "MemorySink", "ParquetSink", "RedisSink", "open_sink", "read_parquet_dead_letters"]

FIELDS = ("item_id", "stream", "timestamp", "reason", "detail", "ref")


class DeadLetterSink:
    """Counts letters by reason and keeps the last ``keep`` for the summary; subclasses also persist them."""

    def __init__(self, keep: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[DeadLetter] = deque(maxlen=keep)

    def write(self, letters: Iterable[DeadLetter]) -> int:
        # The last line of defence: whatever a source put in ref or detail, no URI password is ever persisted.
        letters = [dataclasses.replace(d, ref=redact_uri(d.ref), detail=redact_text(d.detail)) for d in letters]
        if letters:
            self._persist(letters)
            for dl in letters:
                self.counts[dl.reason] += 1
                self.recent.append(dl)
        return len(letters)

    def _persist(self, letters: list[DeadLetter]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()

    @property
    def total(self) -> int:
        return sum(self.counts.values())


class MemorySink(DeadLetterSink):
    """No persistence: counts and the last few letters only."""


class ParquetSink(DeadLetterSink):
    """Parquet part files in a directory; letters are buffered and written every ``flush_every`` letters or on flush.

    Each part is written to a hidden temp file and renamed into place, so a reader never sees half a file.
    """

    def __init__(self, path: str, *, flush_every: int = 1000, keep: int = 20) -> None:
        super().__init__(keep=keep)
        self.root = Path(path)
        if self.root.suffix.lower() == ".parquet":
            raise ConfigError(f"parquet dead-letter sink takes a directory (part files are added to it), got "
                              f"{path!r}; use e.g. parquet://{self.root.with_suffix('')}")
        self.root.mkdir(parents=True, exist_ok=True)
        self.flush_every = int(flush_every)
        self._buffer: list[DeadLetter] = []
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        self._part = 0

    def _persist(self, letters: list[DeadLetter]) -> None:
        self._buffer.extend(letters)
        if len(self._buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "item_id": pa.array([d.item_id for d in self._buffer], pa.string()),
            "stream": pa.array([d.stream for d in self._buffer], pa.string()),
            "timestamp": pa.array([d.timestamp for d in self._buffer], pa.float64()),
            "reason": pa.array([d.reason for d in self._buffer], pa.string()),
            "detail": pa.array([d.detail for d in self._buffer], pa.string()),
            "ref": pa.array([d.ref for d in self._buffer], pa.string()),
            "written_at": pa.array([time.time()] * len(self._buffer), pa.float64()),
        })
        final = self.root / f"deadletters-{self._run}-{self._part:06d}.parquet"
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        atomic_write_bytes(final, sink.getvalue())
        self._part += 1
        self._buffer = []


class RedisSink(DeadLetterSink):
    """XADD each letter to a Redis stream (capped at ``maxlen`` entries, approximately)."""

    def __init__(self, url: str, *, stream: str = "splice:deadletters", maxlen: int = 1_000_000, keep: int = 20):
        super().__init__(keep=keep)
        from workers.redisconn import connect

        self.client = connect(url)
        self.key = stream
        self.maxlen = int(maxlen)

    def _persist(self, letters: list[DeadLetter]) -> None:
        pipe = self.client.pipeline(transaction=False)
        for d in letters:
            pipe.xadd(self.key, {"item_id": d.item_id, "stream": d.stream, "timestamp": repr(d.timestamp),
                                 "reason": d.reason, "detail": d.detail[:2000], "ref": d.ref},
                      maxlen=self.maxlen, approximate=True)
        pipe.execute()

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # the sink is closing anyway
            pass


def open_sink(uri: str | None, **kwargs) -> DeadLetterSink:
    """The sink named by ``uri``: ``redis://...?stream=KEY``, ``parquet:///dir`` or a plain directory, or None."""
    if not uri:
        return MemorySink(**kwargs)
    from workers.sources import parse_uri

    scheme, path, options, parsed = parse_uri(uri)
    if scheme in ("redis", "rediss"):
        unknown = sorted(set(options) - {"stream", "maxlen"})
        if unknown:
            raise ConfigError(f"unknown redis dead-letter option(s) {unknown}; allowed: ['maxlen', 'stream']")
        return RedisSink(f"{scheme}://{parsed.netloc}{parsed.path}", stream=options.get("stream") or
                         "splice:deadletters", maxlen=int(options.get("maxlen", 1_000_000)), **kwargs)
    if scheme in ("parquet", "dir"):
        unknown = sorted(set(options) - {"flush_every"})
        if unknown:
            raise ConfigError(f"unknown parquet dead-letter option(s) {unknown}; allowed: ['flush_every']")
        return ParquetSink(path, flush_every=int(options.get("flush_every", 1000)), **kwargs)
    raise ConfigError("dead-letter URI scheme must be redis or parquet (or a directory path), "
                      f"got {redact_uri(uri)!r}")


def read_parquet_dead_letters(path: str):
    """All letters written under a Parquet sink directory, as a pyarrow Table (temp files excluded)."""
    import pyarrow.parquet as pq
    import pyarrow as pa

    files = sorted(p for p in Path(path).glob("deadletters-*.parquet"))
    if not files:
        return pa.table({k: pa.array([], pa.string()) for k in FIELDS})
    return pa.concat_tables([pq.read_table(f) for f in files])
