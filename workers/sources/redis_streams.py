"""Redis Streams read through a consumer group: at-least-once delivery, acknowledged after commit, pending entries
re-read on restart and taken over from dead consumers.

Two ways to claim, both keeping the payloads out of the driver and out of Ray:

- ``claim=driver`` (the default): the driver claims by a script that runs XREADGROUP inside Redis and returns only
  the ids, hands a worker the ids (:class:`StreamEntries`), the worker fetches the fields (XRANGE), and the driver
  acknowledges by id list (XACK) after the commit. Batches hold consecutive entries in stream order, so count
  windows cut the stream as a file source would. The script's price is Redis copying every payload into Lua,
  and the worker's XRANGE has Redis assemble it again (redis-server CPU per item of each mode: docs/benchmarks.md).
- ``claim=worker``: the driver hands a worker a :class:`StreamClaim` (a consumer name of that batch's own and a
  count); the worker claims with XREADGROUP under that name and gets the fields in the same reply; the driver
  acknowledges the whole batch by deleting that consumer (XGROUP DELCONSUMER drops its pending entries: an XACK of
  all of them in one call). The driver never sees an entry id and Redis sends each payload once, but workers claim
  in the order they run, so two batches in flight may hold each other's ranges: every entry is still counted
  once, while count windows may cut the stream at other places (time windows are unaffected). A run that
  checkpoints claims in the driver whatever the option (its acknowledgement needs ids when a batch is read).
"""

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

__all__ = ["RedisSource", "StreamSpec", "StreamEntries", "StreamClaim", "entries_to_batch"]

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

# Take over entries idle on other consumers (dead ones), ids only: {last id scanned or '', id, id, ...}. Entries of
# this consumer's per-batch consumers (names starting with ARGV[5]) are skipped: a worker holds them and the batch's
# consumer is deleted on its ack, so moving them would strand them. Per entry, but only over idle pending entries,
# which only a dead consumer leaves.
_TAKE_OVER_IDS = """
local rows = redis.call('XPENDING', KEYS[1], ARGV[1], 'IDLE', ARGV[3], ARGV[6], '+', ARGV[4])
local args = {KEYS[1], ARGV[1], ARGV[2], ARGV[3]}
local skip = ARGV[5]
local last = ''
for _, r in ipairs(rows) do
  last = r[1]
  if skip == '' or string.sub(r[2], 1, #skip) ~= skip then args[#args + 1] = r[1] end
end
local out = {last}
if #args > 4 then
  args[#args + 1] = 'JUSTID'
  for _, id in ipairs(redis.call('XCLAIM', unpack(args))) do out[#out + 1] = id end
end
return out
"""

# What the driver needs to hand out worker claims, without any payload: {lag, last delivered id, pending}. lag
# (Redis >= 7) is unknown (nil) after some deletions or trims; then it is 1 or 0: whether one entry follows the
# last delivered one (one entry converted per call, only in that case).
_GROUP_STATE = """
local lag, last, pending
local found = false
for _, g in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
  local name, l, d, p
  for i = 1, #g, 2 do
    if g[i] == 'name' then name = g[i + 1] elseif g[i] == 'lag' then l = g[i + 1]
    elseif g[i] == 'last-delivered-id' then d = g[i + 1] elseif g[i] == 'pending' then p = g[i + 1] end
  end
  if name == ARGV[1] then found, lag, last, pending = true, l, d, p end
end
if not found then return {-1} end
if type(lag) ~= 'number' then lag = #redis.call('XRANGE', KEYS[1], '(' .. last, '+', 'COUNT', 1) end
return {lag, last, pending}
"""

_TAKE_OVER_CHUNK = 1000  # ids per takeover call (a Lua unpack of many more would overflow its stack)


class RedisSource(Source):
    """A Redis stream read through a consumer group.

    Entries are read with XREADGROUP and acknowledged (XACK) only after their batch is committed. On start the
    consumer first re-reads its own pending entries (a restart under the same ``consumer`` name); entries left
    pending by any consumer for longer than ``claim_idle_ms`` (a dead one) are taken over (XPENDING IDLE, XCLAIM).
    ``claim``: ``driver`` (default) or ``worker``, who runs XREADGROUP (see the module docstring). Entry fields: ``image`` (bytes) or ``path`` or ``text`` (names configurable), optional ``ts`` and ``id``; every other
    field becomes item metadata. With ``drain=1`` the source is finite: it ends when the stream has nothing new and
    nothing pending.
    """

    OPTIONS = {"stream": "", "group": "splice", "consumer": "", "image_field": "image", "path_field": "path",
               "text_field": "text", "timestamp_field": "ts", "id_field": "", "stream_field": "", "kind": "",
               "claim_idle_ms": "60000", "drain": "0", "start": "0", "retries": "10", "claim": "driver"}

    def __init__(self, url: str, *, stream: str = "", group: str = "splice", consumer: str = "",
                 image_field: str = "image", path_field: str = "path", text_field: str = "text",
                 timestamp_field: str = "ts", id_field: str = "", stream_field: str = "", kind: str = "",
                 claim_idle_ms: str | int = 60000, drain: str | bool = False, start: str = "0",
                 retries: str | int = 10, claim: str = "driver") -> None:
        super().__init__()
        import redis

        from workers.redisconn import connect

        if not stream:
            raise ConfigError("redis source: the URI needs ?stream=KEY (the Redis stream to read), "
                              "e.g. redis://127.0.0.1:6379/0?stream=frames&group=splice")
        if claim not in ("worker", "driver"):
            raise ConfigError(f"redis source option claim must be 'worker' or 'driver', got {claim!r}")
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
        self._take_over = self.client.register_script(_TAKE_OVER_IDS)
        self._group_state = self.client.register_script(_GROUP_STATE)
        self.worker_claims = claim == "worker"
        # this run's per-batch consumers are "<consumer>:<run>:<seq>": a restart (a new run) tells its own in-flight
        # batches from the ones a previous run left pending by the run part
        self._run = uuid.uuid4().hex[:8]
        self._claims: set[str] = set()  # consumer names of worker-claim batches handed out and not acknowledged
        self._old_consumers: list[tuple[str, int]] = []  # a previous run's batches still pending: (consumer, count)
        try:
            self.client.xgroup_create(self.key, self.group, id=start, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        # entry ids handed out and not yet acknowledged: a reclaim or re-read must not hand them out twice
        self._inflight: set[bytes] = set()
        self._own_pending = True  # first read our own PEL (restart under the same consumer name)
        self._pel_cursor: bytes | str = "-"
        self._claim_cursor = "-"
        self._last_claim = 0.0
        # a previous run's per-batch consumers (claim=worker) still holding entries: handed out again, or, when
        # this run claims in the driver, moved onto this consumer and re-read by id
        self._retrying("start", self._find_old_consumers)
        if not self.worker_claims and self._old_consumers:
            self._retrying("taking over a previous run's batches", self._adopt_old_consumers)

    def keep_refs(self) -> None:
        """The run checkpoints: its acknowledgements need every batch's entry ids when it is read, so the driver
        claims (``claim=driver``) from here on. A previous run's per-batch consumers still holding entries are
        moved onto this consumer (XCLAIM), to be re-read by id like its own pending entries."""
        self.worker_claims = False
        if self._old_consumers:
            self._retrying("taking over a previous run's batches", self._adopt_old_consumers)

    def _adopt_old_consumers(self) -> None:
        for name, pending in self._old_consumers:
            rows = self.client.xpending_range(self.key, self.group, min="-", max="+", count=pending,
                                              consumername=name)
            ids = [r["message_id"] for r in rows]
            if ids:
                self.client.xclaim(self.key, self.group, self.consumer, 0, ids, justid=True)
            self.client.xgroup_delconsumer(self.key, self.group, name)
        self._old_consumers = []
        self._own_pending, self._pel_cursor = True, "-"

    def _find_old_consumers(self) -> None:
        """Per-batch consumers a previous run under this ``consumer`` name left: those with pending entries are
        handed out again (the worker re-reads their pending entries first), the empty ones are deleted."""
        prefix = f"{self.consumer}:"
        mine = f"{prefix}{self._run}:"
        self._old_consumers = []
        for c in self.client.xinfo_consumers(self.key, self.group):
            name = c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
            if not name.startswith(prefix) or name.startswith(mine):
                continue
            if int(c["pending"]):
                self._old_consumers.append((name, int(c["pending"])))
            else:
                self.client.xgroup_delconsumer(self.key, self.group, name)

    def _descriptor(self, ids: list[bytes]) -> "StreamEntries":
        return StreamEntries(spec=self.spec, ids=tuple(ids))

    def _claim(self, max_items: int) -> list:
        """Take over entries pending longer than ``claim_idle_ms`` on another consumer (one that died): their ids
        only, now pending on this consumer. Per-batch consumers under this consumer's name are left alone: this
        run's are on workers, and a previous run's were all handed out again at the start."""
        out: list = []
        skip = f"{self.consumer}:" if self.worker_claims or self._claims else ""
        while len(out) < max_items:
            count = min(_TAKE_OVER_CHUNK, max_items - len(out))
            reply = self._take_over(keys=[self.key], args=[self.group, self.consumer, self.claim_idle_ms, count,
                                                           skip, self._claim_cursor])
            last, ids = reply[0], reply[1:]
            out.extend(i for i in ids if i not in self._inflight)
            if not last:  # scanned to the end of the pending list: start over next time
                self._claim_cursor = "-"
                break
            self._claim_cursor = "(" + (last.decode() if isinstance(last, bytes) else str(last))
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
        if ids:  # taken over or our own pending ids: those go out by id, whichever way new entries are claimed
            self._inflight |= taken
            return SourceBatch(self._next_seq(), token=ids, work=self._descriptor(ids))
        if self.worker_claims:
            return self._hand_out_claim(max_items, timeout_s)
        take(self._claim_new(max_items, max(1, int(timeout_s * 1000))))
        if not ids:
            if self.finite and not self._inflight and not self._claims and self._nothing_pending():
                return None
            return SourceBatch(0, [], token=[])
        self._inflight |= taken
        return SourceBatch(self._next_seq(), token=ids, work=self._descriptor(ids))

    def _hand_out_claim(self, max_items: int, timeout_s: float) -> SourceBatch | None:
        """A batch for a worker to claim under a consumer of its own, when the group has undelivered entries (a
        previous run's pending batch first); otherwise wait up to ``timeout_s`` for one. The driver only reads the
        group's counters: O(1) per batch."""
        if self._old_consumers:
            name, pending = self._old_consumers.pop(0)
            return self._claim_batch(name, max(max_items, pending))
        lag, last, pending = self._state()
        if lag > 0:
            return self._claim_batch(f"{self.consumer}:{self._run}:{self._seq + 1}", min(max_items, lag))
        if self.finite and not self._inflight and not self._claims and pending == 0:
            return None
        if timeout_s > 0:  # wait for an entry after the group's last delivered one; the next read hands it out
            self.client.xread({self.key: last}, count=1, block=max(1, int(timeout_s * 1000)))
        return SourceBatch(0, [], token=[])

    def _claim_batch(self, consumer: str, count: int) -> SourceBatch:
        self._claims.add(consumer)
        return SourceBatch(self._next_seq(), token=consumer, work=StreamClaim(self.spec, self.group, consumer, count))

    def _state(self) -> tuple[int, bytes, int]:
        """(entries not yet delivered to the group (or 1 when some are and Redis cannot say how many), last
        delivered id, pending entries) of this group."""
        reply = self._group_state(keys=[self.key], args=[self.group])
        if int(reply[0]) < 0:
            raise PipelineError(f"redis source {self._ref_base}: the consumer group {self.group!r} of stream "
                                f"{self.key!r} is gone (deleted while reading?)")
        lag, last, pending = reply
        return int(lag), last if isinstance(last, bytes) else str(last).encode(), int(pending)

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
        if isinstance(batch.token, str):  # a worker claim: its consumer holds exactly the batch's entries
            consumer = batch.token
            self._retrying("XGROUP DELCONSUMER",
                           lambda: self.client.xgroup_delconsumer(self.key, self.group, consumer))
            self._claims.discard(consumer)
            return
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


@dataclass(frozen=True)
class StreamClaim:
    """A batch a worker claims itself: up to ``count`` new entries for ``group`` under ``consumer``, a consumer
    name used for this one batch. Claiming twice under the same name (Ray re-running the task, the driver
    resubmitting it after a worker died) gives the same entries: the consumer's pending entries are read first and
    new ones claimed only when it has none."""

    spec: StreamSpec
    group: str
    consumer: str
    count: int

    def __len__(self) -> int:
        return self.count  # at most; the claim may find fewer

    def load(self) -> ItemBatch:
        """Claim the entries and check their fields (run on the worker). An entry deleted from the stream while it
        was pending comes back without fields: it is acknowledged with the batch and counted nowhere."""
        entries = _with_client(self.spec, self._claim)
        return entries_to_batch(self.spec, [(i, f) for i, f in entries if f])

    def _claim(self, client) -> list:
        key = self.spec.key
        pending = client.xreadgroup(self.group, self.consumer, {key: "0"})  # no COUNT: one batch at most
        rows = pending[0][1] if pending else []
        if not rows:
            reply = client.xreadgroup(self.group, self.consumer, {key: ">"}, count=self.count)
            rows = reply[0][1] if reply else []
        return rows

    def refs(self) -> list[str]:
        raise TypeError("a worker-claimed Redis batch has no entry ids before a worker claims it (a run that "
                        "checkpoints claims in the driver: RedisSource.keep_refs)")

    def without(self, refs: set[str]) -> "StreamClaim":
        raise TypeError("a worker-claimed Redis batch has no entry ids to filter (see refs)")


_clients: dict[str, object] = {}


def _with_client(spec: StreamSpec, call):
    """``call(client)`` on this process's own connection, retried with backoff while Redis cannot be reached."""
    import redis

    from workers.redisconn import connect

    wait = 0.2
    for attempt in range(spec.retries + 1):
        client = _clients.get(spec.url)
        if client is None:
            client = _clients[spec.url] = connect(spec.url)
        try:
            return call(client)
        except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
            _clients.pop(spec.url, None)
            if attempt == spec.retries:
                raise
            time.sleep(wait)
            wait = min(2 * wait, 5.0)
    raise AssertionError("unreachable")


def _fetch(spec: StreamSpec, ids: tuple[bytes, ...]) -> dict[bytes, dict]:
    """Fields of ``ids`` on this process's own connection: one XRANGE over first..last (claimed ids of one read are
    usually consecutive), then one XRANGE per id the range did not hold (interleaved with other consumers' entries,
    or beyond the range's count)."""
    if not ids:
        return {}
    wanted = set(ids)

    def fetch(client) -> dict[bytes, dict]:
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

    return _with_client(spec, fetch)


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
