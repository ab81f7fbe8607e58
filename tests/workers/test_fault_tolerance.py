"""Nothing is lost and nothing is counted twice: a worker actor killed mid-stream is restarted by Ray, its batches
are redone, and every source item is counted exactly once; the aggregator's commit is idempotent by batch and by
item id, and its ledger holds only unacknowledged batches."""

from __future__ import annotations

import os
import signal
from dataclasses import replace

import numpy as np
import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.history.store import HistoryStore
from monitor.records import ItemMeta, SparseCodes
from workers.items import DeadLetter, Partial
from tests.workers.helpers import add_captions, caption_parquet
from workers.actors import AggregatorCore
from workers.config import AggregatorConfig, PipelineConfig
from workers.driver import run_pipeline

MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=100), reference=ReferenceConfig(mode="fixed", n_images=200))
NAMES = [f"concept{j}" for j in range(20)]


def _partial(ids, dead_ids=(), seed=0):
    rng = np.random.default_rng(seed)
    dense = np.where(rng.random((len(ids), len(NAMES))) < 0.2, rng.random((len(ids), len(NAMES))), 0.0)
    codes = SparseCodes.from_dense(dense, fidelity=np.full(len(ids), 0.9), l1=0.25)
    items = [ItemMeta(id=i, timestamp=1000.0 + k) for k, i in enumerate(ids)]
    dead = [DeadLetter(item_id=i, stream="default", timestamp=0.0, reason="truncated", detail="x") for i in dead_ids]
    return Partial(codes=codes, items=items, dead_letters=dead)


def test_a_batch_committed_twice_is_counted_once():
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR), NAMES, "space")
    first = agg.commit(1, _partial(["a", "b", "c"], dead_ids=["d"]))
    again = agg.commit(1, _partial(["a", "b", "c"], dead_ids=["d"]))
    assert (first.counted, first.dead_letters, first.duplicate) == (3, 1, False)
    assert again.duplicate and again.counted == 0
    agg.release([1])
    assert agg.commit(1, _partial(["a", "b", "c"])).duplicate  # an acknowledged batch stays committed
    assert agg.summary()["images"] == 3 and agg.summary()["dead_letters_total"] == 1


def test_an_item_redelivered_before_its_batch_is_acknowledged_is_not_counted_twice():
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR), NAMES, "space")
    agg.commit(1, _partial(["m1", "m2"]))
    # the source handed m2 out again (e.g. reclaimed) inside a new batch before batch 1 was acknowledged: counted
    # once, and the second copy is accounted for as a duplicate dead letter rather than silently dropped
    result = agg.commit(2, _partial(["m2", "m3"], dead_ids=["m1"]))
    assert (result.counted, result.dead_letters, result.skipped_ids) == (1, 2, 2)
    assert agg.summary()["images"] == 3 and agg.summary()["dead_letters"] == {"duplicate": 2}


def test_the_ledger_holds_only_unacknowledged_batches():
    agg = AggregatorCore(AggregatorConfig(monitor=MONITOR), NAMES, "space")
    for seq in range(1, 301):
        agg.commit(seq, _partial([f"{seq}-{k}" for k in range(10)], seed=seq), released=(seq - 2,) if seq > 2 else ())
    agg.release([299, 300])
    assert agg.summary()["images"] == 3000
    assert agg.ledger_size() == 0 and agg.ledger.next_seq == 301


def test_killed_worker_actor_mid_stream_every_redis_message_counted_once(ray_local, text_config, redis_url,
                                                                       redis_client, tmp_path):
    import ray

    ids = add_captions(redis_client, "frames", 480)
    killed = []

    def after_submit(seq, workers):
        if seq == 4 and not killed:  # batches 1-4 are in flight on both workers
            killed.append(seq)
            ray.kill(workers[0], no_restart=False)

    config = PipelineConfig(source=f"{redis_url}?stream=frames&group=splice&drain=1", worker=text_config,
                            workers=2, batch_size=30, monitor=MONITOR, history=str(tmp_path / "h"),
                            write_codes=True)
    summary = run_pipeline(config, hooks={"after_submit": after_submit})
    assert killed and summary.retries >= 1 and summary.worker_failures >= 1
    assert summary.images == 480 and summary.duplicate_batches == 0
    assert redis_client.xpending("frames", "splice")["pending"] == 0
    _, items = HistoryStore.open(tmp_path / "h").read_codes()
    assert sorted(it.id for it in items) == sorted(ids)  # each message exactly once


def test_worker_process_killed_by_sigkill_mid_batch_parquet_rows_counted_once(ray_local, text_config, tmp_path):
    import ray

    uri, ids = caption_parquet(tmp_path / "caps.parquet", 400)
    killed = []

    def after_submit(seq, workers):
        if seq == 3 and not killed:
            pid = ray.get(workers[1].pid.remote())
            os.kill(pid, signal.SIGKILL)  # the process dies with a batch inside it, no Ray involvement
            killed.append(pid)

    config = PipelineConfig(source=uri, worker=text_config, workers=2, batch_size=25, monitor=MONITOR,
                            history=str(tmp_path / "h"), write_codes=True)
    summary = run_pipeline(config, hooks={"after_submit": after_submit})
    assert killed and summary.retries >= 1
    assert summary.images == 400
    _, items = HistoryStore.open(tmp_path / "h").read_codes()
    assert sorted(it.id for it in items) == sorted(ids)
    assert sum(w.n_images for w in HistoryStore.open(tmp_path / "h").read_windows()) == 400
    # the probe: the retried batch committed late, two count windows overlapped and identical runs gave different
    # alarms; batches are now applied in source order, so the faulty run stores the fault-free run's windows
    clean = run_pipeline(replace(config, history=str(tmp_path / "clean"), write_codes=False))
    assert clean.retries == 0 and clean.alarm_count == summary.alarm_count

    def windows(store):
        return sorted((w.stream, w.start, w.n_images, w.presence.tolist())
                      for w in HistoryStore.open(store).read_windows())

    assert windows(tmp_path / "h") == windows(tmp_path / "clean")
    assert [(a.concept, a.state) for a in clean.alarms] == [(a.concept, a.state) for a in summary.alarms]


def test_aggregator_compacts_a_stream_once_its_windows_reach_a_new_utc_day(tmp_path):
    # time windows of one hour; 3 batches on day 0 (3 window files), then one on day 1 closes the day-0 windows
    monitor = MonitorConfig(window=WindowConfig(kind="time", size=3600.0), reference=ReferenceConfig(mode="fixed", n_images=10))
    agg = AggregatorCore(AggregatorConfig(monitor=monitor, history=str(tmp_path / "h")), NAMES, "space")

    def batch(seq, t0):
        part = _partial([f"{seq}-{k}" for k in range(10)], seed=seq)
        items = [ItemMeta(id=m.id, timestamp=t0 + k) for k, m in enumerate(part.items)]
        return Partial(codes=part.codes, items=items, dead_letters=[])

    day0 = 86400.0 * 20000
    for seq, hour in enumerate([0, 1, 2, 3], start=1):
        agg.commit(seq, batch(seq, day0 + 3600 * hour))
    before = HistoryStore.open(tmp_path / "h").describe()["streams"]["default"]
    assert before["windows"] == 3 and before["windows_files"] >= 3
    agg.commit(5, batch(5, day0 + 86400 + 60))  # into the next UTC day: closes the last day-0 window
    agg.commit(6, batch(6, day0 + 86400 + 7200))  # closes the first day-1 window, which triggers compaction
    after = HistoryStore.open(tmp_path / "h").describe()["streams"]["default"]
    assert after["windows"] == 5  # nothing lost by compaction
    assert after["images"] == 50
    assert after["windows_files"] < 5  # the four day-0 window files were merged


def _windows_for_order(order, store):
    agg = AggregatorCore(AggregatorConfig(monitor=MonitorConfig(window=WindowConfig(kind="count", size=7),
                                                                reference=ReferenceConfig(mode="fixed", n_images=14)),
                                          history=store), NAMES, "space")
    results = {}
    released = []
    for seq in order:
        results[seq] = agg.commit(seq, _partial([f"{seq}-{k}" for k in range(5)], seed=seq),
                                  released=tuple(released))
        released = [seq]
    alarms = [(a.stream, a.concept, a.state) for a in agg.flush()]
    summary = agg.summary()
    assert agg.ledger_size() <= 5 * 1 + 1  # only the last unreleased batch's ids remain
    return summary, alarms, results


@pytest.mark.parametrize("seed", range(4))
def test_any_commit_order_gives_the_windows_of_the_source_order(tmp_path, seed):
    """The probe: a batch retried after a worker death committed late, two count windows overlapped, and identical
    runs gave different alarms. Batches are now applied in source order whatever order commits arrive in."""
    order = list(range(1, 21))
    reference, ref_alarms, _ = _windows_for_order(order, str(tmp_path / "in-order"))
    shuffled = list(order)
    np.random.default_rng(seed).shuffle(shuffled)
    summary, alarms, results = _windows_for_order(shuffled, str(tmp_path / "shuffled"))
    assert summary["images"] == reference["images"] == 100
    assert summary["windows_closed"] == reference["windows_closed"] == 15  # 14 windows of 7, the rest flushed
    assert alarms == ref_alarms
    assert sum(r.counted for r in results.values()) == 100  # parked batches are counted by the commit that fills the gap
    # a commit waits exactly when some earlier batch has not committed yet
    assert [results[s].parked for s in shuffled] == [any(x not in shuffled[:i] for x in range(1, s))
                                                     for i, s in enumerate(shuffled)]

    def stored(name):
        windows = HistoryStore.open(tmp_path / name).read_windows()
        return sorted((w.stream, w.n_images, w.presence.tolist(), round(float(w.fidelity_sum), 9)) for w in windows)

    assert stored("shuffled") == stored("in-order")
