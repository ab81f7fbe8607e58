"""Dead-letter sinks: where items that cannot be processed go, with their reason, so the stream goes on.

``redis://host:port/db?stream=deadletters`` appends entries to a Redis stream; ``parquet:///dir`` (or a plain path)
writes Parquet part files atomically (temp file + fsync + rename) into a directory; no URI keeps only counts and the
last few letters in memory for the run summary. ``write`` returns only once its letters are durable (or raises), so
the source can acknowledge the batch that produced them right after.

A checkpointed run (``staging``) writes letters exactly once instead: ``write`` only counts and keeps them, the
aggregator's checkpoint saves them with its state, and once the checkpoint is saved ``publish`` writes them under
the checkpoint's tag, idempotently (a Parquet file named by the tag; a Redis script that adds the letters and the
tag in one step and does nothing when the tag is already there). A crash before the checkpoint loses nothing: its
batches are delivered again and produce the same letters; a crash after it republishes from the checkpoint, which
changes nothing the second time (docs/pipeline.md, "Delivery guarantee per source and sink").
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import Iterable

from monitor.atomic import atomic_write_bytes
from monitor.errors import ConfigError, PipelineError
from monitor.uris import redact_text, redact_uri
from workers.items import DeadLetter

__all__ = ["DeadLetterSink", "MemorySink", "ParquetSink", "RedisSink", "open_sink", "read_parquet_dead_letters",
           "letters_to_bytes", "letters_from_bytes"]

FIELDS = ("item_id", "stream", "timestamp", "reason", "detail", "ref")


class DeadLetterSink:
    """Counts letters by reason and keeps the last ``keep`` for the summary; subclasses also persist them."""

    def __init__(self, keep: int = 20) -> None:
        self.counts: Counter[str] = Counter()
        self.recent: deque[DeadLetter] = deque(maxlen=keep)
        self.staging = False  # a checkpointed run: keep letters for the checkpoint, publish them after it
        self.pending: list[DeadLetter] = []

    def write(self, letters: Iterable[DeadLetter]) -> int:
        # The last line of defence: whatever a source put in ref or detail, no URI password is ever persisted.
        letters = [dataclasses.replace(d, ref=redact_uri(d.ref), detail=redact_text(d.detail)) for d in letters]
        if letters:
            if self.staging:
                self.pending.extend(letters)
            else:
                self._persist(letters)
            for dl in letters:
                self.counts[dl.reason] += 1
                self.recent.append(dl)
        return len(letters)

    def take_pending(self) -> list[DeadLetter]:
        """The letters kept since the last checkpoint (now to be saved with the next one)."""
        letters, self.pending = self.pending, []
        return letters

    def publish(self, letters: list[DeadLetter], tag: str) -> None:
        """Write ``letters`` (already redacted and counted) exactly once under ``tag``: calling it again with the same
        tag, after a crash or a lost reply, writes nothing more."""
        if letters:
            self._persist(letters, tag=tag)

    def _persist(self, letters: list[DeadLetter], tag: str | None = None) -> None:
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
    """Parquet part files in a directory, one per ``write`` (the aggregator writes once per committed batch).

    Nothing is buffered: when ``write`` returns, the letters are in a complete file that has been fsynced and renamed
    into place (and the directory entry synced), so the source may acknowledge the batch that produced them. Each
    part is written to a hidden temp file first, so a reader never sees half a file.
    """

    def __init__(self, path: str, *, keep: int = 20) -> None:
        super().__init__(keep=keep)
        self.root = Path(path)
        if self.root.suffix.lower() == ".parquet":
            raise ConfigError(f"parquet dead-letter sink takes a directory (part files are added to it), got "
                              f"{path!r}; use e.g. parquet://{self.root.with_suffix('')}")
        self.root.mkdir(parents=True, exist_ok=True)
        self._run = f"{int(time.time())}-{uuid.uuid4().hex[:8]}"
        self._part = 0

    def _persist(self, letters: list[DeadLetter], tag: str | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.table({
            "item_id": pa.array([d.item_id for d in letters], pa.string()),
            "stream": pa.array([d.stream for d in letters], pa.string()),
            "timestamp": pa.array([d.timestamp for d in letters], pa.float64()),
            "reason": pa.array([d.reason for d in letters], pa.string()),
            "detail": pa.array([d.detail for d in letters], pa.string()),
            "ref": pa.array([d.ref for d in letters], pa.string()),
            "written_at": pa.array([time.time()] * len(letters), pa.float64()),
        })
        # a tagged part has the tag's name, so publishing it again replaces it with the same letters
        final = self.root / (f"deadletters-{_safe(tag)}.parquet" if tag else
                             f"deadletters-{self._run}-{self._part:06d}.parquet")
        buffer = pa.BufferOutputStream()
        pq.write_table(table, buffer)
        try:
            # fsync of the file and of the directory entry: the part must survive a power cut before the source
            # acknowledges the batch
            atomic_write_bytes(final, buffer.getvalue())
        except OSError as exc:
            raise PipelineError(f"dead-letter sink {self.root}: cannot write {len(letters)} letter(s) "
                                f"({type(exc).__name__}: {exc}); the batch is not acknowledged") from exc
        if not tag:
            self._part += 1


class RedisSink(DeadLetterSink):
    """XADD each letter to a Redis stream (capped at ``maxlen`` entries, approximately).

    A batch's letters go in one MULTI/EXEC transaction, so a retry never leaves half of them behind. When Redis
    cannot be reached the write is retried ``retries`` times with exponential backoff (``backoff_s`` doubling, at
    most ``max_backoff_s`` per wait) and then fails with a :class:`PipelineError` naming the sink: the batch that
    produced the letters is then not acknowledged, so nothing acknowledged is lost and the next run delivers it
    again.
    """

    def __init__(self, url: str, *, stream: str = "splice:deadletters", maxlen: int = 1_000_000, keep: int = 20,
                 retries: int = 6, backoff_s: float = 0.2, max_backoff_s: float = 5.0, timeout_s: float = 5.0):
        super().__init__(keep=keep)
        from workers.redisconn import connect

        self.client = connect(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self.key = stream
        self.maxlen = int(maxlen)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.where = redact_uri(url)  # no password in messages

    def _persist(self, letters: list[DeadLetter], tag: str | None = None) -> None:
        import redis

        t0 = time.monotonic()
        wait = self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                if tag:
                    self._publish_once(letters, tag)
                    return
                pipe = self.client.pipeline(transaction=True)
                for d in letters:
                    pipe.xadd(self.key, _fields(d), maxlen=self.maxlen, approximate=True)
                pipe.execute()
                return
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                last = exc
            if attempt < self.retries:
                time.sleep(wait)
                wait = min(wait * 2, self.max_backoff_s)
        raise PipelineError(
            f"dead-letter sink {self.where} stream {self.key!r} unreachable: {self.retries + 1} tries over "
            f"{time.monotonic() - t0:.1f} s failed ({type(last).__name__}: {str(last).splitlines()[0][:160]}); "
            f"the batch is not acknowledged and will be delivered again") from last

    def _publish_once(self, letters: list[DeadLetter], tag: str) -> None:
        """XADD every letter and record ``tag`` in the hash ``<stream>:published`` (field: the tag's job part), all
        in one script, which Redis runs atomically (and logs to its append-only file as one unit); a tag already
        recorded means these letters are in the stream, so nothing is added again."""
        job, _, _ = tag.rpartition(":")
        args = [job or tag, tag, str(self.maxlen)]
        for d in letters:
            for k, v in _fields(d).items():
                args += [k, v]
        self.client.eval(_PUBLISH_ONCE, 2, self.key, f"{self.key}:published", *args)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # the sink is closing anyway
            pass


_PUBLISH_ONCE = """
if redis.call('HGET', KEYS[2], ARGV[1]) == ARGV[2] then return 0 end
local i = 4
while i <= #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, i, i + 11))
  i = i + 12
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
return 1
"""


def _fields(d: DeadLetter) -> dict[str, str]:
    """A letter as the six fields of its Redis entry (the order the publishing script relies on: 12 values)."""
    return {"item_id": d.item_id, "stream": d.stream, "timestamp": repr(d.timestamp), "reason": d.reason,
            "detail": d.detail[:2000], "ref": d.ref}


def _safe(tag: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9._-]+", "-", tag)[:200]


def letters_to_bytes(letters: list[DeadLetter]) -> bytes:
    """Letters as JSON (saved in a checkpoint until they are published)."""
    import json

    return json.dumps([dataclasses.asdict(d) for d in letters]).encode()


def letters_from_bytes(data: bytes) -> list[DeadLetter]:
    import json

    return [DeadLetter(**d) for d in json.loads(data)]


def open_sink(uri: str | None, **kwargs) -> DeadLetterSink:
    """The sink named by ``uri``: ``redis://...?stream=KEY``, ``parquet:///dir`` or a plain directory, or None."""
    if not uri:
        return MemorySink(**kwargs)
    from workers.sources import parse_uri

    scheme, path, options, parsed = parse_uri(uri)
    if scheme in ("redis", "rediss"):
        allowed = ["maxlen", "retries", "stream"]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ConfigError(f"unknown redis dead-letter option(s) {unknown}; allowed: {allowed}")
        numbers = {}
        for name, default in (("maxlen", 1_000_000), ("retries", 6)):
            try:
                numbers[name] = int(options.get(name, default))
            except ValueError:
                raise ConfigError(f"redis dead-letter option {name} must be an integer, got "
                                  f"{options[name]!r}") from None
            if numbers[name] < 0:
                raise ConfigError(f"redis dead-letter option {name} must be >= 0, got {numbers[name]}")
        return RedisSink(f"{scheme}://{parsed.netloc}{parsed.path}", stream=options.get("stream") or
                         "splice:deadletters", **numbers, **kwargs)
    if scheme in ("parquet", "dir"):
        if options:
            raise ConfigError(f"parquet dead-letter sink takes no options, got {sorted(options)} (letters are "
                              f"written durably with each committed batch; there is no buffer to size)")
        return ParquetSink(path, **kwargs)
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
