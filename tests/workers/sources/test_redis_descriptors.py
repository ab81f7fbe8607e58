"""Redis batches are descriptors: the driver claims entries for the group by a script that returns only their ids,
and a worker fetches the fields itself on its own connection. Claimed entries are pending (so nothing is lost),
ids interleaved with another consumer's are fetched exactly, an entry deleted after its claim is counted nowhere,
and a worker killed after the claim has its batch resubmitted and counted once (real redis-server, real Ray)."""

from __future__ import annotations

import os
import pickle
import signal

from workers.sources import open_source
from workers.sources.redis_streams import StreamEntries


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


def test_a_worker_killed_after_the_claim_is_resubmitted_and_counted_once(ray_local, redis_url, redis_client,
                                                                      tmp_path):
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
        if seq == 3 and not killed:  # batches 1-3 are claimed (pending) and on the workers
            killed.append(redis_client.xpending("kill", "g")["pending"])
            os.kill(ray.get(workers[0].pid.remote()), signal.SIGKILL)

    config = PipelineConfig(
        source=f"{redis_url}?stream=kill&group=g&drain=1",
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
