"""Redis Streams read through a consumer group: at-least-once delivery with XACK after commit, pending entries
re-read on restart and taken over from dead consumers with XAUTOCLAIM.

The driver claims entries for the group without their payloads (a script runs XREADGROUP inside Redis and returns
the ids) and hands a worker the ids (:class:`StreamEntries`); the worker fetches the fields on its own connection
and checks them (:func:`entries_to_batch`). Acknowledgement stays with the driver, after the commit."""

from __future__ import annotations

import os
import socket
import time
import uuid
from dataclasses import dataclass, field

from monitor.errors import ConfigError, PipelineError
from monitor.uris import redact_uri
from workers.items import ItemBatch, ItemColumns
from workers.sources.base import Source, SourceBatch, option_bool
from workers.sources.timestamps import timestamp_error

__all__ = ["RedisSource", "StreamSpec", "StreamEntries", "entries_to_batch"]

# Claim new entries for the group and return only their ids: {1, id, id, ...}; with nothing new, {0, the group's
# last delivered id} so the caller can wait for the next entry. XREADGROUP in a script never blocks.
_CLAIM_IDS = """
local reply = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3], 'STREAMS', KEYS[1], '>')
local out = {1}
if reply then
  for _, entry in ipairs(reply[1][2]) do out[#out + 1] = entry[1] end
end
if #out > 1 then return out end
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, last
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'last-delivered-id' then last = g[i + 1] end
  end
  if name == ARGV[1] then return {0, last} end
end
return {0}
"""

# Take over entries idle on other consumers, ids only: {next cursor, id, id, ...}. redis-py's reply parser drops
# the cursor of XAUTOCLAIM ... JUSTID, so the command runs in a script.
_AUTOCLAIM_IDS = """
local reply = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4], 'COUNT', ARGV[5], 'JUSTID')
local out = {reply[1]}
for _, id in ipairs(reply[2]) do out[#out + 1] = id end
return out
"""

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
        self.spec = StreamSpec(url=url, ref_base=self._ref_base, key=stream, fields=self.fields,
                               timestamp_field=timestamp_field, id_field=id_field, stream_field=stream_field,
                               kind=kind, retries=self.retries)
        self._script = self.client.register_script(_CLAIM_IDS)
        self._autoclaim = self.client.register_script(_AUTOCLAIM_IDS)
        try:
            self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # entry ids handed out and not yet acknowledged: a reclaim or re-read must not hand them out twice
        self._inflight: set[bytes] = set()
        self._own_pending = True  # first read our own PEL (restart under the same consumer name)
        self._pel_cursor: bytes | str = "-"
        self._claim_cursor = b"0-0"
        self._last_claim = 0.0

    def _descriptor(self, ids: list[bytes]) -> "StreamEntries":
        return StreamEntries(spec=self.spec, ids=tuple(ids))

    def _claim(self, max_items: int) -> list:
        """Take over entries pending longer than ``claim_idle_ms`` on any consumer (one that died): their ids only."""
        out = []
        cursor = self._claim_cursor
        while len(out) < max_items:
            reply = self._autoclaim(keys=[self.key], args=[self.group, self.consumer, self.claim_idle_ms, cursor,
                                                           max_items - len(out)])
            cursor, ids = reply[0], reply[1:]
            out.extend(i for i in ids if i not in self._inflight)
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
                self._own_pending, self._pel_cursor = True, "-"
            if attempt < self.retries:
                time.sleep(wait)
                wait = min(2 * wait, 5.0)
        raise PipelineError(f"redis source {self._ref_base} stream {self.key!r}: {what} failed {self.retries + 1} "
                            f"times over {time.monotonic() - t0:.1f} s ({type(last).__name__}: "
                            f"{str(last).splitlines()[0][:160]}); unacknowledged entries stay pending") from last

    def _read(self, max_items: int, timeout_s: float) -> SourceBatch | None:
        """Claim up to ``max_items`` entries for the group and hand out their ids; a worker fetches the fields."""
        ids: list[bytes] = []
        taken: set[bytes] = set()  # joins the in-flight set only when the whole read succeeded

        def take(found) -> None:
            for i in found:
                i = i if isinstance(i, bytes) else str(i).encode()
                if i not in self._inflight and i not in taken:
                    taken.add(i)
                    ids.append(i)

        if self._own_pending:  # a restart under the same name: our own pending entries first (ids from XPENDING)
            rows = self.client.xpending_range(self.key, self.group, min=self._pel_cursor, max="+", count=max_items,
                                              consumername=self.consumer)
            found = [r["message_id"] for r in rows]
            if not found:
                self._own_pending = False
            else:
                last = found[-1]
                ms, n = (last.decode() if isinstance(last, bytes) else last).split("-")
                self._pel_cursor = f"{ms}-{int(n) + 1}"  # exclusive of what was just taken
            take(found)
        now = time.monotonic()
        if len(ids) < max_items and now - self._last_claim >= min(5.0, self.claim_idle_ms / 2000):
            self._last_claim = now
            take(self._claim(max_items - len(ids)))
        if len(ids) < max_items:
            take(self._claim_new(max_items - len(ids), 0 if ids else max(1, int(timeout_s * 1000))))
        if not ids:
            if self.finite and not self._inflight and self._nothing_pending():
                return None
            return SourceBatch(0, [], token=[])
        self._inflight |= taken
        return SourceBatch(self._next_seq(), token=ids, work=self._descriptor(ids))

    def _claim_new(self, count: int, block_ms: int) -> list[bytes]:
        """New entries for the group, claimed by one script call that returns their ids only (XREADGROUP inside
        Redis, so the payloads never leave it here). Scripts cannot block: with nothing new, wait up to
        ``block_ms`` for an entry after the group's last delivered id (XREAD BLOCK, one entry), then claim again."""
        reply = self._script(keys=[self.key], args=[self.group, self.consumer, count])
        if int(reply[0]) == 1 or block_ms <= 0:
            return list(reply[1:])
        last = reply[1] if len(reply) > 1 else b"$"
        if not self.client.xread({self.key: last}, count=1, block=block_ms):
            return []
        reply = self._script(keys=[self.key], args=[self.group, self.consumer, count])
        return list(reply[1:]) if int(reply[0]) == 1 else []

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


@dataclass(frozen=True)
class StreamSpec:
    """Where a stream lives and how its entries read; travels with every batch (the URL stays out of reprs)."""

    url: str = field(repr=False)
    ref_base: str
    key: str
    fields: dict = field(default_factory=dict)
    timestamp_field: str = "ts"
    id_field: str = ""
    stream_field: str = ""
    kind: str = ""
    retries: int = 10


@dataclass(frozen=True)
class StreamEntries:
    """Entries the driver claimed for the group, by id: what a worker is sent instead of their fields."""

    spec: StreamSpec
    ids: tuple[bytes, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def load(self) -> ItemBatch:
        """Fetch the entries' fields (run on the worker) and check them; an entry deleted from the stream since it
        was claimed is gone: it is acknowledged with the batch and counted nowhere, as before."""
        fetched = _fetch(self.spec, self.ids)
        return entries_to_batch(self.spec, [(i, fetched[i]) for i in self.ids if i in fetched])

    def refs(self) -> list[str]:
        base = f"{self.spec.ref_base}?stream={self.spec.key}#"
        return [base + i.decode() for i in self.ids]

    def without(self, refs: set[str]) -> "StreamEntries":
        base = f"{self.spec.ref_base}?stream={self.spec.key}#"
        return StreamEntries(self.spec, tuple(i for i in self.ids if base + i.decode() not in refs))


_clients: dict[str, object] = {}


def _fetch(spec: StreamSpec, ids: tuple[bytes, ...]) -> dict[bytes, dict]:
    """Fields of ``ids`` on this process's own connection: one XRANGE over first..last (claimed ids of one read are
    usually consecutive), then one XRANGE per id the range did not hold (interleaved with other consumers' entries,
    or beyond the range's count). Retried with backoff while Redis cannot be reached, like the driver's reads."""
    import redis

    from workers.redisconn import connect

    if not ids:
        return {}
    wanted = set(ids)
    wait = 0.2
    for attempt in range(spec.retries + 1):
        client = _clients.get(spec.url)
        if client is None:
            client = _clients[spec.url] = connect(spec.url)
        try:
            lo, hi = min(ids, key=_id_key), max(ids, key=_id_key)
            got = {i: f for i, f in client.xrange(spec.key, lo, hi, count=2 * len(ids)) if i in wanted}
            missing = [i for i in ids if i not in got]
            if missing:
                pipe = client.pipeline(transaction=False)
                for i in missing:
                    pipe.xrange(spec.key, i, i, count=1)
                for rows in pipe.execute():
                    got.update((i, f) for i, f in rows if i in wanted)
            return got
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            _clients.pop(spec.url, None)
            if attempt == spec.retries:
                raise
            time.sleep(wait)
            wait = min(2 * wait, 5.0)
    return {}


def _id_key(entry_id: bytes) -> tuple[int, int]:
    ms, _, n = entry_id.partition(b"-")
    return int(ms), int(n or 0)


def entries_to_batch(spec: StreamSpec, entries: list[tuple[bytes, dict]]) -> ItemBatch:
    """Stream entries as an :class:`ItemBatch`: payload from the image, path or text field, event time from the
    timestamp field (else the entry id's milliseconds), the id and stream fields if named, every other field as
    metadata; an entry with no payload field is ``bad_record``, a bad time ``bad_timestamp``."""
    ids, times, index, metadata, payloads, kinds, refs = [], [], [], [], [], [], []
    errors: dict[int, tuple[str, str]] = {}
    names: dict[str, int] = {}
    base = f"{spec.ref_base}?stream={spec.key}#"
    now = time.time()
    for j, (entry_id, raw) in enumerate(entries):
        f = {k.decode("utf-8", "replace") if isinstance(k, bytes) else str(k): v for k, v in raw.items()}
        eid = entry_id.decode()
        refs.append(base + eid)
        error = None
        item_id = eid
        if spec.id_field and spec.id_field in f:
            item_id = f.pop(spec.id_field).decode("utf-8", "replace")
        ts = now
        if spec.timestamp_field in f:
            parsed, error = timestamp_error(f.pop(spec.timestamp_field), where=spec.timestamp_field)
            if parsed is not None:
                ts = parsed
        else:
            ts = int(eid.split("-", 1)[0]) / 1000.0  # the entry id's milliseconds are the arrival time
        stream = spec.key
        if spec.stream_field and spec.stream_field in f:
            stream = f[spec.stream_field].decode("utf-8", "replace")
        payload, kind = None, spec.kind or "image"
        if spec.fields["image"] in f and spec.kind != "text":
            payload, kind = f.pop(spec.fields["image"]), "image"
        elif spec.fields["path"] in f and spec.kind != "text":
            payload, kind = f.pop(spec.fields["path"]).decode("utf-8", "replace"), "image"
        elif spec.fields["text"] in f:
            payload, kind = f.pop(spec.fields["text"]), "text"
        elif error is None:
            error = ("bad_record", f"entry has none of the payload fields {sorted(set(spec.fields.values()))}")
        if error is not None:
            errors[j] = error
        ids.append(item_id)
        times.append(ts)
        index.append(names.setdefault(stream, len(names)))
        metadata.append({k: v.decode("utf-8", "replace") for k, v in f.items()})
        payloads.append(payload)
        kinds.append(kind)
    return ItemBatch(columns=ItemColumns(ids, times, index, list(names), metadata), payloads=payloads,
                     kinds=kinds, refs=refs, errors=errors)
