"""The aggregator's checkpoint: everything it holds, saved as one unit in the history store, and restored by a rerun
of the driver or by Ray restarting the aggregator actor.

One checkpoint is: the monitor state (open windows, the fixed reference, the alarm book; ``.npz``, no pickle), the
commit ledger (``workers/ledger.py``: which batches are applied, recent ids) as JSON, and a record naming both with
the counters, the source position after the last applied batch and the references of items that are counted but
whose acknowledgement at the source may not have happened yet (a restart skips them when they are delivered again),
and the dead letters of the batches it covers that are not yet published (published right after the record is saved,
and again, idempotently, when a restore finds the record).
Files are written under fresh names first and the record replaces the previous one atomically, so a crash at any
point leaves the previous complete checkpoint or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import uuid
from typing import Any

from monitor.errors import ConfigError
from workers.deadletter import letters_from_bytes, letters_to_bytes
from workers.ledger import CommitLedger

__all__ = ["save_checkpoint", "load_checkpoint", "derive_job_id"]


def derive_job_id(source: str, history: str, *, stream: str | None = None, kind: str | None = None) -> str:
    """The checkpoint name of a run given no ``--job-id``: the same for every rerun of the same command, so a rerun
    after a crash finds the checkpoint; different for another input or another history store.

    It hashes what says where the items come from and where their windows go, and nothing else: for Redis Streams
    the server (host, port, database; never the password or the user), the stream key and the consumer group, whose
    pending list is the position (not the consumer name, which may be generated per process, nor tuning options such
    as ``claim_idle_ms``); for files and directories the absolute path and every option (columns, glob, stream),
    which decide what the items are; the ``--stream``/``--kind`` overrides; and the history store's location. A
    readable tail (the stream key or file name) comes first, so ``history`` listings and logs say which job it is.

    >>> a = derive_job_id("redis://:pw@cache:6379/0?stream=frames&group=splice&consumer=c1", "/data/h")
    >>> a == derive_job_id("redis://:other@cache:6379/0?stream=frames&group=splice&claim_idle_ms=5", "/data/h")
    True
    >>> a.startswith("run-frames-"), a == derive_job_id("redis://cache:6379/0?stream=frames&group=other", "/data/h")
    (True, False)
    """
    from urllib.parse import urlsplit

    from workers.sources.uri import parse_uri

    scheme, path, options, parsed = parse_uri(source)
    if scheme in ("redis", "rediss"):
        host = urlsplit(source).netloc.rsplit("@", 1)[-1].lower()
        where = f"{scheme}://{host}{parsed.path or '/0'}"
        key = options.get("stream", "")
        identity = [where, f"stream={key}", f"group={options.get('group', 'splice')}"]
        tail = key
    else:
        where = path if "://" in path else os.path.abspath(path)
        identity = [scheme, where, *sorted(f"{k}={v}" for k, v in options.items())]
        tail = where.rstrip("/").rsplit("/", 1)[-1]
    store = history if "://" in history else os.path.abspath(history)
    identity += [f"stream-override={stream or ''}", f"kind-override={kind or ''}", f"history={store}"]
    digest = hashlib.sha256("\n".join(identity).encode()).hexdigest()[:12]
    tail = re.sub(r"[^A-Za-z0-9._-]+", "-", tail)[:40].strip("-.") or "source"
    return f"run-{tail}-{digest}"


def save_checkpoint(core: Any, job_id: str, position: dict | None = None, *, done: bool = False,
                    positions: dict[int, Any] | None = None, refs: dict[int, list[str]] | None = None,
                    run: str = "") -> dict[str, Any]:
    """Save ``core`` (an ``AggregatorCore``) under ``job_id``; returns ``{"through_seq": k}``: the state holds
    exactly batches 1..k of this driver's numbering.

    ``position``: the source position the state corresponds to (a driver that waited until nothing was in flight);
    or ``positions`` (seq -> position of each batch not yet acknowledged) and the position of batch k is taken.
    ``refs`` (seq -> item references of batches not yet acknowledged): those of batches <= k are kept in the record,
    so a restarted run skips them if the source delivers them again. ``run`` names the driver, so an actor restart
    within the same run keeps the numbering and a new run starts it from 1."""
    history = core.history
    if history is None:
        raise ConfigError("checkpoints need a history store (--history)")
    from workers.actors import _monitor_to_bytes

    through = core.ledger.next_seq - 1
    if positions:
        covered = [s for s in positions if s <= through]
        if covered:
            position = positions[max(covered)]
    previous = history.get_checkpoint(job_id) or {}
    if position is None and not positions:
        position = previous.get("source")  # nothing new acknowledged: the previous position still holds
    skip = sorted({r for s, rs in (refs or {}).items() if s <= through for r in rs})
    tag = uuid.uuid4().hex[:12]
    monitor_name, ledger_name = f"{job_id}.monitor-{tag}.npz", f"{job_id}.ledger-{tag}.ledger"
    core.sink.flush()
    # through the store, so the state lives wherever the history does (local disk or an object store)
    history.write_checkpoint_file(monitor_name, _monitor_to_bytes(core.monitor))
    history.write_checkpoint_file(ledger_name, json.dumps(core.ledger.state()).encode())
    # the dead letters of batches 1..k, kept since the last checkpoint: saved with it, published right after it
    letters = core.sink.take_pending()
    letters_name = f"{job_id}.letters-{tag}.letters" if letters else None
    if letters_name:
        history.write_checkpoint_file(letters_name, letters_to_bytes(letters))
    history.set_checkpoint(job_id, {
        "source": position, "monitor_state": monitor_name, "ledger_state": ledger_name, "through_seq": through,
        "run": run, "redelivered_refs": skip, "images": core.counted, "dead_letters": dict(core.sink.counts),
        "windows_closed": core.windows_closed, "alarms": core.alarm_count, "alarms_resolved": core.alarms_resolved,
        "batches": core.batches, "nonconverged": core.nonconverged, "streams": dict(core.streams),
        "done": bool(done), "saved_at": time.time(), "dead_letters_state": letters_name,
        "dead_letters_tag": f"{job_id}:{tag}"})
    if letters:
        # after the record: a crash before this line republishes from the record on restore, and publishing under
        # the same tag again writes nothing twice
        core.sink.publish(letters, tag=f"{job_id}:{tag}")
    for key in ("monitor_state", "ledger_state", "dead_letters_state"):
        old = previous.get(key)
        if old and old not in (monitor_name, ledger_name, letters_name):
            history.delete_checkpoint_file(old)
    return {"through_seq": through}


def load_checkpoint(core: Any, job_id: str, *, restart: bool = False, run: str = "") -> dict[str, Any] | None:
    """Restore ``core`` from the checkpoint of ``job_id``; returns the record (None: start afresh). The ledger keeps
    its numbering when the checkpoint was written by the same ``run`` (Ray restarted the aggregator under a live
    driver, which commits again whatever came after ``through_seq``); a new run numbers from 1 again."""
    history = core.history
    if history is None:
        raise ConfigError("checkpoints need a history store (--history)")
    # from now on letters wait for a checkpoint; those kept before (batches after the checkpoint, which the driver
    # commits again) are dropped with the rest of the state
    core.sink.staging = True
    core.sink.pending.clear()
    if restart:
        history.clear_checkpoint(job_id)
        return None
    cp = history.get_checkpoint(job_id)
    if cp is None:
        return None
    from workers.actors import _monitor_from_bytes

    def blob(key: str) -> bytes | None:
        name = cp.get(key)
        if not name:
            return None
        data = history.read_checkpoint_file(name)
        if data is None:
            raise ConfigError(f"checkpoint {job_id!r} names {key.replace('_', ' ')} {name!r}, which the history "
                              f"store {history.location} does not hold; rerun with --restart")
        return data

    monitor_blob = blob("monitor_state")
    if monitor_blob is not None:
        core.monitor = _monitor_from_bytes(monitor_blob)
    ledger_blob = blob("ledger_state")
    if ledger_blob is not None:
        core.ledger = CommitLedger.from_state(json.loads(ledger_blob))
        if not run or cp.get("run") != run:
            core.ledger.renumber()
    core.counted = int(cp.get("images", 0))
    core.sink.counts.clear()
    core.sink.counts.update({k: int(v) for k, v in (cp.get("dead_letters") or {}).items()})
    core.windows_closed = int(cp.get("windows_closed", 0))
    core.alarm_count = int(cp.get("alarms", 0))
    core.alarms_resolved = int(cp.get("alarms_resolved", 0))
    core.batches = int(cp.get("batches", 0))
    core.nonconverged = int(cp.get("nonconverged", 0))
    core.streams.clear()
    core.streams.update({k: int(v) for k, v in (cp.get("streams") or {}).items()})
    letters_blob = blob("dead_letters_state")
    if letters_blob is not None:  # the crash may have come between saving the record and publishing its letters
        core.sink.publish(letters_from_bytes(letters_blob), tag=str(cp.get("dead_letters_tag")))
    return cp
