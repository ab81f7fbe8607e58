"""Sharded aggregation (``--aggregators N``): streams hashed onto N aggregator actors give the same counts, windows,
alarms and history as one aggregator on the same input (real Ray, real MiniLM, Parquet with several streams), the
shards' load is balanced on 100 streams, and the history store lets a run's shards write side by side while keeping
every other writer out."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from monitor.cli.main import main as cli_main
from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.errors import ConfigError
from monitor.history.store import HistoryStore
from monitor.records import ItemMeta, SparseCodes
from monitor.synthetic.captions import CaptionStream
from workers.config import PipelineConfig
from workers.driver import run_pipeline
from workers.items import DeadLetter, Partial
from workers.shards import merge_checkpoint_records, shard_of, split_partial

MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=100),
                        reference=ReferenceConfig(mode="fixed", n_images=200))


def _multi_stream_parquet(path, cameras: list[str], n_each: int) -> str:
    """Captions of several cameras interleaved in time (so every batch mixes streams), each camera shifting from
    street scenes to snow half-way: enough for alarms on every stream."""
    rows = []
    for k, cam in enumerate(cameras):
        for c in CaptionStream(n=n_each, seed=10 + k, camera=cam, start=1_767_225_600.0 + k * 0.1):
            rows.append((c.timestamp, f"{cam}/{c.id}", c.text, cam))
    rows.sort()
    pq.write_table(pa.table({"ts": [r[0] for r in rows], "id": [r[1] for r in rows], "caption": [r[2] for r in rows],
                             "camera": [r[3] for r in rows]}), path)
    return f"parquet://{path}?text_column=caption&timestamp_column=ts&id_column=id&stream_column=camera"


# -- the hash and the split ---------------------------------------------------------------------------------------------


def test_shard_of_is_the_same_in_every_process_whatever_the_hash_seed():
    names = [f"camera-{i}" for i in range(20)]
    here = [shard_of(n, 3) for n in names]
    code = f"from workers.shards import shard_of; print([shard_of(n, 3) for n in {names!r}])"
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert json.loads(out.stdout) == here
    assert set(here) == {0, 1, 2} and all(shard_of(n, 1) == 0 for n in names)


def test_one_hundred_streams_spread_within_a_factor_of_two():
    for n in (2, 3, 4):
        per = Counter(shard_of(f"camera-{i}", n) for i in range(100))
        assert len(per) == n and max(per.values()) <= 2 * min(per.values()), (n, per)


def test_split_partial_gives_each_shard_exactly_its_streams_rows_in_order():
    rng = np.random.default_rng(0)
    streams = [f"s{i}" for i in range(7)]
    items = [ItemMeta(id=f"i{r}", timestamp=float(r), stream=streams[r % 7]) for r in range(40)]
    dense = np.where(rng.random((40, 12)) < 0.3, rng.random((40, 12)), 0.0)
    dense[:, 0] += 0.1  # every row has at least one concept
    codes = SparseCodes.from_dense(dense, np.linspace(0.5, 0.9, 40), 0.25, converged=np.arange(40) % 5 != 0)
    dead = [DeadLetter(item_id=f"d{k}", stream=streams[k], timestamp=0.0, reason="empty", detail="") for k in range(7)]
    partial = Partial(codes=codes, items=items, dead_letters=dead, timings={"total_s": 1.0})
    parts = split_partial(partial, 3)
    assert len(parts) == 3
    seen = []
    for i, part in enumerate(parts):
        assert all(shard_of(m.stream, 3) == i for m in part.items)
        assert all(shard_of(d.stream, 3) == i for d in part.dead_letters)
        rows = [int(m.id[1:]) for m in part.items]
        assert rows == sorted(rows)
        if rows:
            np.testing.assert_array_equal(part.codes.to_dense(), codes.to_dense()[rows])
            assert part.n_nonconverged == sum(1 for r in rows if r % 5 == 0)
        else:
            assert part.codes is None
        seen += rows
    assert sorted(seen) == list(range(40))
    assert sum(len(p.dead_letters) for p in parts) == 7
    assert [p.timings for p in parts] == [{"total_s": 1.0}, {}, {}]  # the batch's time counted once
    assert split_partial(partial, 1) == [partial]


def test_checkpoint_records_merge_to_the_shard_holding_the_fewest_batches():
    a = {"source": {"row": 400}, "through_seq": 4, "redelivered_refs": ["r1"], "images": 150,
         "dead_letters": {"empty": 1}, "done": False}
    b = {"source": {"row": 200}, "through_seq": 2, "redelivered_refs": ["r2"], "images": 90,
         "dead_letters": {"empty": 2}, "done": False}
    merged = merge_checkpoint_records([a, b])
    assert merged["source"] == {"row": 200} and merged["through_seq"] == 2
    assert merged["redelivered_refs"] == ["r1", "r2"] and merged["images"] == 240
    assert merged["dead_letters"] == {"empty": 3} and merged["done"] is False
    # a shard that never saved: the source starts from the beginning (the other skips what it holds)
    assert merge_checkpoint_records([a, None])["source"] is None
    assert merge_checkpoint_records([None, None]) is None


# -- the history store's writer lock ------------------------------------------------------------------------------------


def test_the_shards_of_a_run_write_one_store_side_by_side_and_keep_other_writers_out(tmp_path):
    names = ["a", "b", "c"]
    root = tmp_path / "store"
    HistoryStore(root, concept_space="s", concept_names=names).close()
    code = ("import sys, time; from monitor.history.store import HistoryStore; "
            "s = HistoryStore(sys.argv[1], writer_shard=(int(sys.argv[2]), 2), lock_timeout_s=1); "
            "s._writing(); print('held', flush=True); time.sleep(60)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(i)], stdout=subprocess.PIPE, text=True,
                              env=env) for i in (0, 1)]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "held"  # both shards hold the store at once
        plain = HistoryStore(root, lock_timeout_s=0.2)
        with pytest.raises(ConfigError, match="being written by another process"):
            plain._writing()
        second_run_shard = HistoryStore(root, writer_shard=(1, 2), lock_timeout_s=0.2)
        with pytest.raises(ConfigError, match="aggregator shard 1 is being written by another run"):
            second_run_shard._writing()
    finally:
        for p in procs:
            p.kill()
            p.wait()
    plain = HistoryStore(root, lock_timeout_s=5)
    plain._writing()  # free again once the shards are gone
    plain.close()


# -- end to end on real Ray ---------------------------------------------------------------------------------------------


def _alarm_key(a):
    return (a.stream, a.kind, a.direction, a.concept, a.state, a.window_start, a.window_end,
            round(a.score, 9), round(a.p_value, 12))


def _windows(store_dir):
    store = HistoryStore.open(store_dir)
    return sorted((w.stream, w.start, w.end, w.n_images, round(float(np.sum(w.prevalence)), 9))
                  for w in store.read_windows())


def test_two_aggregators_give_the_counts_windows_alarms_and_history_of_one(ray_local, text_config, tmp_path, capsys):
    cameras = ["camera-1", "camera-2", "camera-3", "camera-4"]
    assert len({shard_of(c, 2) for c in cameras}) == 2  # both shards get streams
    uri = _multi_stream_parquet(tmp_path / "captions.parquet", cameras, 400)
    runs = {}
    for n in (1, 2):
        history = str(tmp_path / f"history-{n}")
        config = PipelineConfig(source=uri, worker=text_config, workers=1, batch_size=64, monitor=MONITOR,
                                history=history, aggregators=n)
        runs[n] = (run_pipeline(config), history)
    (one, h1), (two, h2) = runs[1], runs[2]
    assert one.images == two.images == 1600
    assert one.streams == two.streams == {c: 400 for c in cameras}
    assert one.windows_closed == two.windows_closed == 16
    assert (one.alarm_count, one.alarms_resolved) == (two.alarm_count, two.alarms_resolved)
    assert one.alarm_count > 0, "the snow shift should raise alarms, or the comparison is empty"
    assert sorted(map(_alarm_key, one.alarms)) == sorted(map(_alarm_key, two.alarms))
    assert one.dead_letters == two.dead_letters and one.batches == two.batches
    assert len(two.images_per_aggregator) == 2 and sum(two.images_per_aggregator) == 1600
    assert min(two.images_per_aggregator) > 0
    assert _windows(h1) == _windows(h2)
    stored = [sorted(map(_alarm_key, HistoryStore.open(h).read_alarms())) for h in (h1, h2)]
    assert stored[0] == stored[1] and len(stored[0]) == one.alarm_count
    listings = []
    for h in (h1, h2):
        capsys.readouterr()
        assert cli_main(["history", "list", "--store", h, "--format", "json"]) == 0
        listings.append(json.loads(capsys.readouterr().out)["streams"])
    assert listings[0] == listings[1] and set(listings[0]) == set(cameras)


def test_load_on_one_hundred_streams_is_balanced_within_two_times(ray_local, tmp_path):
    """The null encoder (no model) and no solver: only the routing is measured, by the items each shard counted."""
    from workers.core import WorkerConfig

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(f"concept {i}" for i in range(50)) + "\n")
    n = 3000
    path = tmp_path / "streams.parquet"
    pq.write_table(pa.table({"ts": np.arange(n, dtype=np.float64), "id": [f"i{i}" for i in range(n)],
                             "caption": [f"caption {i}" for i in range(n)],
                             "camera": [f"camera-{i % 100}" for i in range(n)]}), path)
    uri = f"parquet://{path}?text_column=caption&timestamp_column=ts&id_column=id&stream_column=camera"
    worker = WorkerConfig(model="null:32", vocab=str(vocab), solver="off", cache_dir=str(tmp_path), mean="vocab")
    monitor = MonitorConfig(window=WindowConfig(kind="count", size=10), max_streams=100)
    summary = run_pipeline(PipelineConfig(source=uri, worker=worker, workers=1, batch_size=500, monitor=monitor,
                                          aggregators=2))
    assert summary.images == n and len(summary.streams) == 100
    per = summary.images_per_aggregator
    expected = Counter(shard_of(f"camera-{i % 100}", 2) for i in range(n))
    assert per == [expected[0], expected[1]]
    assert max(per) <= 2 * min(per), per


def test_a_killed_shard_is_restored_from_its_own_checkpoint_and_nothing_acknowledged_is_lost(
        ray_local, text_config, redis_url, redis_client, tmp_path):
    """Checkpoint-gated acknowledgement with two shards: shard 1 is SIGKILLed mid-stream; Ray restarts it, the driver
    restores it from its own checkpoint and commits again, on it alone, what it lost. Every item is counted once and
    the Redis group has nothing pending (acknowledged only once both shards' checkpoints held a batch)."""
    import ray

    cameras = ["camera-1", "camera-2", "camera-3", "camera-4"]
    pipe = redis_client.pipeline(transaction=False)
    for k, c in enumerate(CaptionStream(n=400, seed=5)):
        pipe.xadd("caps", {"text": c.text, "ts": repr(c.timestamp), "camera": cameras[k % 4]})
    pipe.execute()
    state: dict = {}

    def after_submit(seq, workers):
        if seq == 9 and "killed" not in state:
            pid = ray.get(state["group"].actors[1].pid.remote())
            os.kill(pid, signal.SIGKILL)
            state["killed"] = pid

    history = str(tmp_path / "h")
    config = PipelineConfig(source=f"{redis_url}?stream=caps&group=g&consumer=c1&drain=1&stream_field=camera",
                            worker=text_config, workers=1, batch_size=20, monitor=MONITOR, history=history,
                            checkpoint_job="caps-job", checkpoint_every_s=0.5, aggregators=2)
    summary = run_pipeline(config, hooks={"aggregators": lambda group: state.update(group=group),
                                          "after_submit": after_submit})
    assert "killed" in state
    assert summary.images == 400 and summary.duplicates == 0 and summary.dead_letters_total == 0
    assert summary.streams == {c: 100 for c in cameras}
    assert redis_client.xpending("caps", "g")["pending"] == 0
    stored = Counter()
    for w in HistoryStore.open(history).read_windows():
        stored[w.stream] += w.n_images
    assert stored == {c: 100 for c in cameras}  # replayed windows replace their first copies
    names = [n for n in HistoryStore.open(history).list_checkpoints() if n.startswith("caps-job.")]
    # each shard keeps one generation: the last one both completed
    assert len(names) == 2 and {n.rsplit(".g", 1)[0] for n in names} == {"caps-job.shard0-of-2",
                                                                          "caps-job.shard1-of-2"}
    assert len({n.rsplit(".g", 1)[1] for n in names}) == 1


def test_a_checkpoint_written_with_another_aggregator_count_is_refused_by_name(ray_local, text_config, tmp_path):
    uri = _multi_stream_parquet(tmp_path / "c.parquet", ["camera-1", "camera-2"], 60)
    history = str(tmp_path / "h")
    base = PipelineConfig(source=uri, worker=text_config, workers=1, batch_size=30, monitor=MONITOR, history=history,
                          checkpoint_job="job", aggregators=2)
    assert run_pipeline(base).images == 120
    with pytest.raises(ConfigError, match=r"written with --aggregators 2, this run has 1"):
        run_pipeline(replace(base, aggregators=1))
    assert run_pipeline(replace(base, aggregators=1, restart=True)).images == 120
