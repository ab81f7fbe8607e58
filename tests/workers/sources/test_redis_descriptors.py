"""Redis batches are descriptors. By default the driver claims by a script that returns only ids and the worker
fetches the fields: claimed entries are pending (so nothing is lost), ids interleaved with another consumer's are
fetched exactly, an entry deleted after its claim is counted nowhere. With ``claim=worker`` a worker claims its
batch itself under a consumer of that batch's own (XREADGROUP, fields in the reply) and the driver acknowledges by
deleting the consumer; the claim is idempotent, a restarted run hands its predecessor's pending batches out again,
the takeover of idle entries leaves this run's batches alone, and a run that checkpoints claims in the driver.
A worker killed after the claim has its batch resubmitted and counted once (real redis-server, real Ray)."""

from __future__ import annotations

import os
import pickle
import signal

import pytest

from workers.sources import open_source
from workers.sources.redis_streams import StreamClaim, StreamEntries


def _add(client, key, n, size=4096):
    return [client.xadd(key, {"image": bytes([i % 251]) * size, "ts": str(1_700_000_000 + i), "camera": f"c{i % 3}"})
            for i in range(n)]


def test_the_driver_claims_ids_only_and_the_worker_fetches_the_fields(redis_url, redis_client):
    ids = _add(redis_client, "frames", 40)
    src = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&stream_field=camera")
    batch = src.read(32, timeout_s=0.1)
    assert isinstance(batch.work, StreamEntries) and list(batch.work.ids) == ids[:32]
    # claimed for the group: pending on this consumer until acknowledged, though no field was read
    assert redis_client.xpending("frames", "g")["pending"] == 32
    assert len(pickle.dumps(batch.payload())) < 1_500  # 32 ids and the spec, not 128 kB of payloads
    loaded = pickle.loads(pickle.dumps(batch.work)).load()  # as a worker process gets it
    assert loaded.columns.ids == [i.decode() for i in ids[:32]]
    assert loaded.payloads == [bytes([i % 251]) * 4096 for i in range(32)]
    assert loaded.columns.streams() == [f"c{i % 3}" for i in range(32)]
    assert loaded.columns.timestamps.tolist() == [1_700_000_000.0 + i for i in range(32)]
    assert loaded.columns.metadata == [{"camera": f"c{i % 3}"} for i in range(32)] and not loaded.errors
    src.ack(batch)
    rest = src.read(32, timeout_s=0.1)
    assert list(rest.work.ids) == ids[32:]
    src.ack(rest)
    assert redis_client.xpending("frames", "g")["pending"] == 0 and src.read(32, timeout_s=0.05) is None


def test_ids_interleaved_with_another_consumer_and_deleted_entries(redis_url, redis_client):
    ids = _add(redis_client, "s", 12, size=8)
    a = open_source(f"{redis_url}?stream=s&group=g&consumer=a")
    b = open_source(f"{redis_url}?stream=s&group=g&consumer=b")
    mine, theirs = [], []
    for _ in range(4):  # a and b take turns: a's ids are not consecutive in the stream
        mine.append(a.read(2, timeout_s=0.05))
        theirs.append(b.read(1, timeout_s=0.05))
    got = [i for batch in mine for i in batch.work.ids]
    assert got == [ids[k] for k in (0, 1, 3, 4, 6, 7, 9, 10)]
    spread = StreamEntries(mine[0].work.spec, tuple(got))  # one descriptor across b's entries
    assert spread.load().columns.ids == [i.decode() for i in got]
    redis_client.xdel("s", ids[3])  # deleted after it was claimed: gone, counted nowhere
    assert mine[1].work.load().columns.ids == [ids[4].decode()]
    for batch in mine:
        a.ack(batch)
    for batch in theirs:
        b.ack(batch)
    assert redis_client.xpending("s", "g")["pending"] == 0


def _pending_by_consumer(client, key):
    return {c["name"].decode(): int(c["pending"]) for c in client.xinfo_consumers(key, "g")}


def test_a_worker_claims_its_batch_and_the_driver_acks_it_by_deleting_the_consumer(redis_url, redis_client):
    ids = _add(redis_client, "frames", 40)
    src = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&stream_field=camera&claim=worker")
    batch = src.read(32, timeout_s=0.1)
    assert isinstance(batch.work, StreamClaim) and batch.work.count == 32
    assert redis_client.xpending("frames", "g")["pending"] == 0  # the driver read no entry, claimed none
    assert len(pickle.dumps(batch.payload())) < 600  # a consumer name and a count
    work = pickle.loads(pickle.dumps(batch.work))  # as a worker process gets it
    loaded = work.load()
    assert loaded.columns.ids == [i.decode() for i in ids[:32]]
    assert loaded.payloads == [bytes([i % 251]) * 4096 for i in range(32)]
    assert loaded.columns.streams() == [f"c{i % 3}" for i in range(32)]
    assert loaded.columns.timestamps.tolist() == [1_700_000_000.0 + i for i in range(32)] and not loaded.errors
    assert _pending_by_consumer(redis_client, "frames") == {batch.token: 32}
    # claimed again (Ray re-running the task, a resubmission): the same entries, nothing new taken
    assert work.load().columns.ids == loaded.columns.ids
    assert redis_client.xpending("frames", "g")["pending"] == 32
    src.ack(batch)
    assert redis_client.xpending("frames", "g")["pending"] == 0 and _pending_by_consumer(redis_client, "frames") == {}
    rest = src.read(32, timeout_s=0.1)
    assert rest.work.count == 8 and rest.work.load().columns.ids == [i.decode() for i in ids[32:]]
    src.ack(rest)
    assert src.read(32, timeout_s=0.05) is None


def test_a_restarted_run_hands_out_its_predecessors_pending_batches_again(redis_url, redis_client):
    ids = _add(redis_client, "frames", 10, size=8)
    first = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&claim=worker")
    done, lost, never = (first.read(4, timeout_s=0.1) for _ in range(3))
    assert done.work.load().columns.ids == [i.decode() for i in ids[:4]]
    first.ack(done)
    assert lost.work.load().columns.ids == [i.decode() for i in ids[4:8]]  # claimed, the run dies before the ack
    first.close()  # ``never`` was handed out and never claimed: its entries are still undelivered
    again = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&claim=worker")
    batches = []
    while (b := again.read(4, timeout_s=0.05)) is not None:
        batches.append(b.work.load().columns.ids)
        again.ack(b)
    assert batches[0] == [i.decode() for i in ids[4:8]] and sum(batches, []) == [i.decode() for i in ids[4:]]
    assert redis_client.xpending("frames", "g")["pending"] == 0 and _pending_by_consumer(redis_client, "frames") == {}


def test_the_takeover_of_idle_entries_leaves_this_runs_batches_alone(redis_url, redis_client):
    import time

    ids = _add(redis_client, "frames", 6, size=8)
    dead = open_source(f"{redis_url}?stream=frames&group=g&consumer=dead")
    dead.read(2, timeout_s=0.1)  # a dead consumer's two entries, never acknowledged
    src = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&claim_idle_ms=50&claim=worker")
    slow = src.read(2, timeout_s=0.1)
    slow_ids = slow.work.load().columns.ids  # on a worker, idle past claim_idle_ms before its commit
    time.sleep(0.2)
    heir = src.read(2, timeout_s=0.1)  # the dead consumer's entries, by id; not the slow batch's
    assert isinstance(heir.work, StreamEntries) and list(heir.work.ids) == ids[:2]
    assert slow_ids == [i.decode() for i in ids[2:4]] and _pending_by_consumer(redis_client, "frames")[slow.token] == 2
    src.ack(heir)
    src.ack(slow)
    tail = src.read(2, timeout_s=0.1)
    assert tail.work.load().columns.ids == [i.decode() for i in ids[4:]]
    src.ack(tail)
    assert src.read(2, timeout_s=0.05) is None and redis_client.xpending("frames", "g")["pending"] == 0


def test_worker_claims_end_a_drained_stream_whose_lag_redis_cannot_count(redis_url, redis_client):
    ids = _add(redis_client, "frames", 6, size=8)
    redis_client.xdel("frames", ids[2], ids[5])  # deletions past the group's position: XINFO's lag is nil
    src = open_source(f"{redis_url}?stream=frames&group=g&drain=1&claim=worker")
    got = []
    for _ in range(10):
        b = src.read(2, timeout_s=0.05)
        if b is None:
            break
        got += b.items and [it.meta.id for it in b.items]
        src.ack(b)
    assert b is None and got == [ids[k].decode() for k in (0, 1, 3, 4)]


def test_a_run_that_checkpoints_claims_in_the_driver(redis_url, redis_client, tmp_path):
    from workers.acks import AckGate

    ids = _add(redis_client, "frames", 4, size=8)
    src = open_source(f"{redis_url}?stream=frames&group=g&drain=1&claim=worker")
    AckGate(src)  # its acknowledgements need each batch's references when read
    batch = src.read(4, timeout_s=0.1)
    assert isinstance(batch.work, StreamEntries) and list(batch.work.ids) == ids
    assert batch.refs()[0].endswith("?stream=frames#" + ids[0].decode())


def test_a_checkpointing_rerun_reads_a_worker_claim_runs_leftovers_by_id(redis_url, redis_client):
    from workers.acks import AckGate

    ids = _add(redis_client, "frames", 6, size=8)
    first = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&claim=worker")
    lost = first.read(4, timeout_s=0.1)
    lost.work.load()  # claimed on a worker; the run dies before the ack
    first.close()
    again = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1&claim=worker")
    AckGate(again)  # the rerun checkpoints: every batch needs its ids when read
    got = []
    while (b := again.read(4, timeout_s=0.05)) is not None:
        assert isinstance(b.work, StreamEntries) and len(b.refs()) == len(b)
        got += list(b.work.ids)
        again.ack(b)
    assert got == ids and redis_client.xpending("frames", "g")["pending"] == 0
    assert set(_pending_by_consumer(redis_client, "frames")) <= {"a"}


def test_a_driver_claim_rerun_reads_a_worker_claim_runs_leftovers_by_id(redis_url, redis_client):
    ids = _add(redis_client, "frames", 6, size=8)
    first = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&claim=worker")
    first.read(4, timeout_s=0.1).work.load()  # claimed on a worker; the run dies before the ack
    first.close()
    again = open_source(f"{redis_url}?stream=frames&group=g&consumer=a&drain=1")  # claim=driver
    got = []
    while (b := again.read(4, timeout_s=0.05)) is not None:
        got += list(b.work.ids)
        again.ack(b)
    assert got == ids and redis_client.xpending("frames", "g")["pending"] == 0


@pytest.mark.parametrize("claim", ["worker", "driver"])
def test_a_worker_killed_after_the_claim_is_resubmitted_and_counted_once(ray_local, redis_url, redis_client,
                                                                      tmp_path, claim):
    import time

    import ray

    from monitor.drift.monitor import MonitorConfig, WindowConfig
    from workers.config import PipelineConfig
    from workers.core import WorkerConfig
    from workers.driver import run_pipeline

    ids = _add(redis_client, "kill", 300, size=64)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(f"concept {i}" for i in range(300)) + "\n")
    killed = []

    def after_submit(seq, workers):
        if seq == 3 and not killed:  # batches 1-3 are on the workers, claimed by the driver or being claimed there
            deadline = time.monotonic() + 30
            while (claim == "worker" and redis_client.xpending("kill", "g")["pending"] < 40
                   and time.monotonic() < deadline):  # two of the three batches claimed on the workers
                time.sleep(0.01)
            killed.append(redis_client.xpending("kill", "g")["pending"])
            os.kill(ray.get(workers[0].pid.remote()), signal.SIGKILL)

    config = PipelineConfig(
        source=f"{redis_url}?stream=kill&group=g&drain=1&claim={claim}",
        worker=WorkerConfig(model="null:32", vocab=str(vocab), solver="off", device="cpu", cache_dir=str(tmp_path)),
        workers=2, batch_size=20, history=str(tmp_path / "h"), write_codes=True,
        monitor=MonitorConfig(window=WindowConfig(kind="count", size=50)))
    summary = run_pipeline(config, hooks={"after_submit": after_submit})
    assert killed and killed[0] >= 40 and summary.retries >= 1
    assert summary.images == 300 and summary.dead_letters_total == 0 and summary.duplicates == 0
    assert redis_client.xpending("kill", "g")["pending"] == 0
    from monitor.history.store import HistoryStore

    _, items = HistoryStore.open(tmp_path / "h").read_codes()
    assert sorted(it.id for it in items) == sorted(i.decode() for i in ids)
