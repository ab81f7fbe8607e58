"""Redis Streams read through a consumer group: at-least-once delivery with XACK after commit, pending entries
re-read on restart and taken over from dead consumers with XAUTOCLAIM."""

from __future__ import annotations

import os
import socket
import time
import uuid

from monitor.errors import ConfigError, PipelineError
from monitor.records import ItemMeta
from monitor.uris import redact_uri
from workers.items import WorkItem
from workers.sources.base import Source, SourceBatch, option_bool
from workers.sources.timestamps import timestamp_error

__all__ = ["RedisSource"]

class RedisSource(Source):
    """A Redis stream read through a consumer group.

    Entries are read with XREADGROUP and acknowledged (XACK) only after their batch is committed. On start the
    consumer first re-reads its own pending entries (a restart under the same ``consumer`` name); entries left
    pending by any consumer for longer than ``claim_idle_ms`` (a dead one) are taken over with XAUTOCLAIM. Entry
    fields: ``image`` (bytes) or ``path`` or ``text`` (names configurable), optional ``ts`` and ``id``; every other
    field becomes item metadata. With ``drain=1`` the source is finite: it ends when the stream has nothing new and
    nothing pending.
    """

    OPTIONS = {"stream": "", "group": "splice", "consumer": "", "image_field": "image", "path_field": "path",
               "text_field": "text", "timestamp_field": "ts", "id_field": "", "stream_field": "", "kind": "",
               "claim_idle_ms": "60000", "drain": "0", "start": "0", "retries": "10"}

    def __init__(self, url: str, *, stream: str = "", group: str = "splice", consumer: str = "",
                 image_field: str = "image", path_field: str = "path", text_field: str = "text",
                 timestamp_field: str = "ts", id_field: str = "", stream_field: str = "", kind: str = "",
                 claim_idle_ms: str | int = 60000, drain: str | bool = False, start: str = "0",
                 retries: str | int = 10) -> None:
        super().__init__()
        import redis

        from workers.redisconn import connect

        if not stream:
            raise ConfigError("redis source: the URI needs ?stream=KEY (the Redis stream to read), "
                              "e.g. redis://127.0.0.1:6379/0?stream=frames&group=splice")
        if kind not in ("", "image", "text"):
            raise ConfigError(f"redis source option kind must be 'image' or 'text', got {kind!r}")
        try:  # Redis unreachable: with the default 10, about 30 s of tries, then an error
            self.retries, self.backoff_s = int(retries), 0.2
        except ValueError:
            raise ConfigError(f"redis source option retries must be an integer, got {retries!r}") from None
        self.url = url
        self._ref_base = redact_uri(url)  # dead letters and logs carry the reference, never the password
        self.key = stream
        self.group = group
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.fields = {"image": image_field, "path": path_field, "text": text_field}
        self.timestamp_field = timestamp_field
        self.id_field = id_field
        self.stream_field = stream_field
        self.kind = kind
        self.claim_idle_ms = int(claim_idle_ms)
        self.finite = drain if isinstance(drain, bool) else option_bool(drain, "drain")
        self.name = f"redis:{self.key}/{self.group}"
        self.client = connect(url)
        try:
            self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # entry ids handed out and not yet acknowledged: a reclaim or re-read must not hand them out twice
        self._inflight: set[bytes] = set()
        self._own_pending = True  # first read our own PEL (restart under the same consumer name)
        self._pel_cursor: bytes | str = "0"
        self._claim_cursor = b"0-0"
        self._last_claim = 0.0

    def _entries_to_items(self, entries, taken: set[bytes]) -> tuple[list[WorkItem], list[bytes]]:
        items, ids = [], []
        for entry_id, fields in entries:
            if fields is None:  # deleted from the stream while pending: ack it away, nothing to count
                self.client.xack(self.key, self.group, entry_id)
                continue
            if entry_id in self._inflight or entry_id in taken:
                continue
            taken.add(entry_id)
            ids.append(entry_id)
            items.append(self._item(entry_id, fields))
        return items, ids

    def _item(self, entry_id: bytes, fields: dict[bytes, bytes]) -> WorkItem:
        f = {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in fields.items()}
        eid = entry_id.decode()
        ref = f"{self._ref_base}?stream={self.key}#{eid}"
        error = None
        item_id = eid
        if self.id_field and self.id_field in f:
            item_id = f.pop(self.id_field).decode("utf-8", "replace")
        ts = time.time()
        if self.timestamp_field in f:
            parsed, error = timestamp_error(f.pop(self.timestamp_field), where=self.timestamp_field)
            if parsed is not None:
                ts = parsed
        else:
            ts = int(eid.split("-", 1)[0]) / 1000.0  # the entry id's milliseconds are the arrival time
        stream = self.key
        if self.stream_field and self.stream_field in f:
            stream = f[self.stream_field].decode("utf-8", "replace")
        payload, kind = None, self.kind or "image"
        if self.fields["image"] in f and self.kind != "text":
            payload, kind = f.pop(self.fields["image"]), "image"
        elif self.fields["path"] in f and self.kind != "text":
            payload, kind = f.pop(self.fields["path"]).decode("utf-8", "replace"), "image"
        elif self.fields["text"] in f:
            payload, kind = f.pop(self.fields["text"]), "text"
        elif error is None:
            error = ("bad_record", f"entry has none of the payload fields {sorted(set(self.fields.values()))}")
        metadata = {k: v.decode("utf-8", "replace") for k, v in f.items()}
        meta = ItemMeta(id=item_id, timestamp=ts, stream=stream, metadata=metadata)
        return WorkItem(meta=meta, payload=payload, kind=kind, ref=ref, error=error)

    def _claim(self, max_items: int) -> list:
        """Take over entries pending longer than ``claim_idle_ms`` on any consumer (one that died)."""
        out = []
        cursor = self._claim_cursor
        while len(out) < max_items:
            cursor, entries, *_ = self.client.xautoclaim(self.key, self.group, self.consumer,
                                                         min_idle_time=self.claim_idle_ms, start_id=cursor,
                                                         count=max_items - len(out))
            out.extend(e for e in entries if e[0] not in self._inflight)
            if cursor in (b"0-0", "0-0"):
                break
        self._claim_cursor = b"0-0" if cursor in ("0-0",) else cursor
        return out

    def read(self, max_items: int, timeout_s: float = 1.0) -> SourceBatch | None:
        return self._retrying("read", lambda: self._read(max_items, timeout_s))

    def _retrying(self, what: str, call):
        """``call()``, retried with backoff while Redis cannot be reached (a restart, a failover); then a
        PipelineError naming the source. A failed read hands nothing out and re-reads this consumer's own pending
        entries next time, so an entry delivered just before the connection broke is not stranded."""
        import redis

        t0, wait = time.monotonic(), self.backoff_s
        for attempt in range(self.retries + 1):
            try:
                return call()
            except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError) as exc:
                last = exc
                self._own_pending, self._pel_cursor = True, "0"
            if attempt < self.retries:
                time.sleep(wait)
                wait = min(2 * wait, 5.0)
        raise PipelineError(f"redis source {self._ref_base} stream {self.key!r}: {what} failed {self.retries + 1} "
                            f"times over {time.monotonic() - t0:.1f} s ({type(last).__name__}: "
                            f"{str(last).splitlines()[0][:160]}); unacknowledged entries stay pending") from last

    def _read(self, max_items: int, timeout_s: float) -> SourceBatch | None:
        items: list[WorkItem] = []
        ids: list[bytes] = []
        taken: set[bytes] = set()  # joins the in-flight set only when the whole read succeeded
        if self._own_pending:
            resp = self.client.xreadgroup(self.group, self.consumer, {self.key: self._pel_cursor}, count=max_items)
            entries = resp[0][1] if resp else []
            if not entries:
                self._own_pending = False
            else:
                self._pel_cursor = entries[-1][0]
            items, ids = self._entries_to_items(entries, taken)
        now = time.monotonic()
        if len(items) < max_items and now - self._last_claim >= min(5.0, self.claim_idle_ms / 2000):
            self._last_claim = now
            more, more_ids = self._entries_to_items(self._claim(max_items - len(items)), taken)
            items += more
            ids += more_ids
        if len(items) < max_items:
            block = None if items else max(1, int(timeout_s * 1000))
            resp = self.client.xreadgroup(self.group, self.consumer, {self.key: ">"}, count=max_items - len(items),
                                          block=block)
            more, more_ids = self._entries_to_items(resp[0][1] if resp else [], taken)
            items += more
            ids += more_ids
        if not items:
            if self.finite and not self._inflight and self._nothing_pending():
                return None
            return SourceBatch(0, [], token=[])
        self._inflight |= taken
        return SourceBatch(self._next_seq(), items, token=ids)

    def _nothing_pending(self) -> bool:
        info = self.client.xpending(self.key, self.group)
        return int(info["pending"]) == 0

    def ack(self, batch: SourceBatch) -> None:
        ids = batch.token or []
        if ids:
            self._retrying("XACK", lambda: self.client.xack(self.key, self.group, *ids))  # idempotent
            self._inflight.difference_update(ids)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # closing a dead connection is not an error worth reporting
            pass
