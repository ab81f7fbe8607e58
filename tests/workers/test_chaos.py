"""Chaos: one fault at a time, at a random point, and afterwards every item sent is accounted for exactly once and the
stored windows are those of a fault-free run on the same input (issue 11, "Done when").

The faults: SIGKILL of a worker process, SIGKILL of the aggregator actor, SIGKILL of the driver, two SIGTERMs to the
driver, a restart of the Redis server. Sources: a Parquet file and a Redis stream (read through a consumer group),
each with bad rows (null or empty captions, a missing payload field, a NaN timestamp) and repeated ids, so dead
letters and duplicates take part. Real redis-server, real Ray, the ``null:64`` encoder (deterministic, no model),
runs checkpointed into a history store as every ``run --history`` is. A driver that died is run again, the way an
operator (or Kubernetes) would rerun the same command.

Where the fault strikes is drawn from a seeded generator; the seed is in the test id and in every failure message,
so ``-k 'seed3'`` reproduces a failure. ``SPLICE_CHAOS_SEEDS=N`` runs seeds 1..N (default 1: each fault once, the
source alternating, which keeps this module to a few minutes on a busy 2-core machine); ``SPLICE_CHAOS_FULL=1`` runs
every fault on both sources.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.history.store import HistoryStore
from tests.workers.helpers import free_port, start_redis, wait_for_redis
from workers.config import PipelineConfig
from workers.core import WorkerConfig

pytestmark = pytest.mark.slow

N_ITEMS = 400
BATCH = 20
N_BATCHES = N_ITEMS // BATCH
WINDOW = 40
MONITOR = MonitorConfig(window=WindowConfig(kind="count", size=WINDOW),
                        reference=ReferenceConfig(mode="fixed", n_images=2 * WINDOW))
SEEDS = range(1, int(os.environ.get("SPLICE_CHAOS_SEEDS", "1")) + 1)
FAULTS = ["worker", "aggregator", "driver-sigkill", "driver-double-sigterm", "redis-restart"]


def _cases(full: bool) -> list[tuple[int, str, str]]:
    """Every fault once per seed; the source alternates with the fault and the seed (``SPLICE_CHAOS_FULL=1``: every
    fault on both sources). A Redis restart only matters to a Redis source."""
    cases = []
    for seed in SEEDS:
        for k, fault in enumerate(FAULTS):
            sources = ["parquet", "redis"] if full else [("parquet", "redis")[(k + seed) % 2]]
            cases += [(seed, fault, "redis" if fault == "redis-restart" else src) for src in sources]
    return sorted(set(cases), key=cases.index)


CASES = _cases(os.environ.get("SPLICE_CHAOS_FULL") == "1")


# -- the input: one list of rows, written as a Parquet file or as Redis entries ----------------------------------

@dataclass(frozen=True)
class Row:
    id: str
    text: str | None  # None: no payload (Parquet: a null caption; Redis: no text field)
    ts: float


def _rows() -> list[Row]:
    """N_ITEMS rows; every 17th has a bad payload or time, every 53rd repeats the id of a good row three before it."""
    from monitor.synthetic.captions import CaptionStream

    captions = list(CaptionStream(n=N_ITEMS, seed=11))
    rows = []
    for i, c in enumerate(captions):
        text, ts, item_id = c.text, 1_767_225_600.0 + i, f"it-{i:04d}"
        if i % 17 == 7:
            text, ts = [(None, ts), ("", ts), (text, math.nan)][(i // 17) % 3]
        elif i % 53 == 20 and (i - 3) % 17 != 7:
            item_id = f"it-{i - 3:04d}"  # a good row's id again: a duplicate dead letter
        rows.append(Row(item_id, text, ts))
    return rows


def _expected(rows: list[Row]) -> tuple[set[str], list[str], set[str]]:
    """(ids of bad rows, ids repeated after their first row, ids counted)."""
    bad = {r.id for r in rows if r.text in (None, "") or not math.isfinite(r.ts)}
    seen: set[str] = set()
    repeated = []
    for r in rows:
        if r.id in seen:
            repeated.append(r.id)
        seen.add(r.id)
    return bad, repeated, seen - bad


ROWS = _rows()
BAD_IDS, REPEATED, GOOD_IDS = _expected(ROWS)


def _write_parquet(path) -> str:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": [r.id for r in ROWS], "text": [r.text for r in ROWS],
                             "ts": pa.array([r.ts for r in ROWS], pa.float64())}), path)
    return f"parquet://{path}?text_column=text&id_column=id&timestamp_column=ts"


def _write_redis(client, key: str) -> None:
    pipe = client.pipeline(transaction=False)
    for r in ROWS:
        fields = {"id": r.id, "ts": repr(r.ts)}
        if r.text is not None:
            fields["text"] = r.text
        pipe.xadd(key, fields)
    pipe.execute()


# -- one run's configuration (also built by the driver subprocess) -----------------------------------------------

def _config(params: dict) -> PipelineConfig:
    worker = WorkerConfig(model="null:64", vocab=params["vocab"], cache_dir=params["cache_dir"], device="cpu")
    return PipelineConfig(source=params["source"], worker=worker, monitor=MONITOR, workers=2, cpus_per_worker=0.25,
                          batch_size=BATCH, history=params["store"], write_codes=True,
                          dead_letter=params["dead_letter"], checkpoint_job="chaos", checkpoint_every_s=1.0,
                          ray_address=params.get("ray_address"), kind="text")


def _child() -> None:
    """The driver as its own process (``python -c``), so that it can die: at batch ``kill_at`` it SIGKILLs itself or
    sends itself two SIGTERMs (the second leaves at once, like an operator's second Ctrl-C)."""
    from workers.driver import Pipeline

    params = json.loads(sys.argv[1])
    fired = []

    def after_submit(seq, workers):
        if seq == params["kill_at"] and not fired:
            fired.append(seq)
            if params["fault"] == "driver-sigkill":
                os.kill(os.getpid(), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)  # the first handler sets stop; the second signal raises KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1.0)

    Pipeline(_config(params), hooks={"after_submit": after_submit}).run(handle_signals=True)


# -- fixtures ----------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def chaos_vocab(test_vocab, tmp_path_factory) -> str:
    words = [w for w in open(test_vocab).read().split("\n") if w][:64]
    path = tmp_path_factory.mktemp("chaos-vocab") / "vocab64.txt"
    path.write_text("\n".join(words) + "\n")
    return str(path)


class _Redis:
    """A redis-server with an append-only file, so a restart keeps the streams and consumer groups."""

    def __init__(self, workdir) -> None:
        self.workdir, self.port = workdir, free_port()
        self.proc = start_redis(self.port, workdir, aof=True)
        self.client = wait_for_redis(self.port, proc=self.proc)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def restart(self, down_s: float = 1.5) -> threading.Thread:
        self.proc.terminate()
        self.proc.wait(timeout=20)

        def start():
            time.sleep(down_s)
            self.proc = start_redis(self.port, self.workdir, aof=True)

        thread = threading.Thread(target=start)
        thread.start()
        return thread

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=20)


@pytest.fixture(scope="module")
def chaos_redis(tmp_path_factory):
    server = _Redis(tmp_path_factory.mktemp("chaos-redis"))
    yield server
    server.stop()


def _params(source: str, tmp, vocab: str, cache_dir: str, redis: _Redis, key: str) -> dict:
    tmp.mkdir(parents=True, exist_ok=True)
    if source == "parquet":
        uri = _write_parquet(tmp / "rows.parquet")
        dead = f"parquet://{tmp / 'dead'}"
    else:
        _write_redis(redis.client, key)
        uri = f"{redis.url}?stream={key}&group=g&consumer=c1&drain=1&id_field=id&kind=text"
        dead = f"{redis.url}?stream={key}-dead"
    return {"source": uri, "store": str(tmp / "history"), "dead_letter": dead, "vocab": vocab,
            "cache_dir": cache_dir}


# -- what a run left behind ----------------------------------------------------------------------------------------

@dataclass
class Outcome:
    images: int
    duplicates: int
    windows: list  # (index, n_images, presence) of every stored window (each run has one stream)
    counted_ids: list[str]  # ids of the stored per-item codes
    letters: list[tuple[str, str]]  # (item id, reason) of every dead letter written, duplicates included


def _outcome(params: dict, summary, redis: _Redis) -> Outcome:
    from workers.deadletter import read_parquet_dead_letters

    store = HistoryStore.open(params["store"])
    stored = store.read_windows()
    assert len({w.stream for w in stored}) == 1
    windows = sorted((w.index, w.n_images, tuple(np.asarray(w.presence).tolist())) for w in stored)
    counted = store.scan_codes(columns=["id"])["id"].to_pylist()
    dead = params["dead_letter"]
    if dead.startswith("parquet://"):
        table = read_parquet_dead_letters(dead[len("parquet://"):])
        letters = list(zip(table["item_id"].to_pylist(), table["reason"].to_pylist()))
    else:
        key = dead.split("stream=", 1)[1]
        letters = [(f[b"item_id"].decode(), f[b"reason"].decode()) for _, f in redis.client.xrange(key)]
    return Outcome(images=summary.images, duplicates=summary.duplicates, windows=windows, counted_ids=counted,
                   letters=letters)


@pytest.fixture(scope="module")
def fault_free(ray_local, chaos_vocab, cache_dir, chaos_redis, tmp_path_factory):
    """The fault-free run of each source: what every faulty run must end up with."""
    from workers.driver import run_pipeline

    out = {}
    for source in ("parquet", "redis"):
        params = _params(source, tmp_path_factory.mktemp(f"fault-free-{source}"), chaos_vocab, cache_dir,
                         chaos_redis, "rows-fault-free")
        out[source] = _outcome(params, run_pipeline(_config(params)), chaos_redis)
    return out


def test_the_fault_free_run_accounts_for_every_row(fault_free):
    """The yardstick itself: every good id counted once, every bad row and every repeated id a dead letter."""
    for source, run in fault_free.items():
        assert sorted(run.counted_ids) == sorted(GOOD_IDS), source
        assert run.images == len(GOOD_IDS) == sum(w[1] for w in run.windows), source
        assert run.duplicates == len(REPEATED) > 0, source
        assert Counter(i for i, reason in run.letters if reason != "duplicate") == Counter(BAD_IDS), source
        assert sorted(i for i, reason in run.letters if reason == "duplicate") == sorted(REPEATED), source
        assert run.images + len(run.letters) == N_ITEMS, source
        assert [w[0] for w in run.windows] == list(range(math.ceil(len(GOOD_IDS) / WINDOW))), source
    assert fault_free["parquet"].windows == fault_free["redis"].windows  # the same rows, the same windows


@pytest.mark.parametrize("seed, fault, source", CASES, ids=[f"seed{s}-{f}-{src}" for s, f, src in CASES])
def test_one_fault_at_a_random_point_loses_and_repeats_nothing(ray_local, chaos_vocab, cache_dir, chaos_redis,
                                                               fault_free, tmp_path, seed, fault, source):
    import ray

    from workers.driver import run_pipeline

    rng = np.random.default_rng([seed, FAULTS.index(fault), source == "redis"])
    kill_at = int(rng.integers(2, N_BATCHES - 2))
    victim = int(rng.integers(0, 2))
    where = f"chaos seed={seed} fault={fault} source={source} at batch {kill_at}"
    print(where)
    params = _params(source, tmp_path, chaos_vocab, cache_dir, chaos_redis, f"rows-{seed}-{fault}")
    fired: list = []
    actors: dict = {}
    restarted: list[threading.Thread] = []

    def after_submit(seq, workers):
        if seq != kill_at or fired:
            return
        fired.append(seq)
        if fault == "worker":
            os.kill(ray.get(workers[victim].pid.remote()), signal.SIGKILL)
        elif fault == "aggregator":
            os.kill(ray.get(actors["aggregator"].pid.remote()), signal.SIGKILL)
        elif fault == "redis-restart":
            restarted.append(chaos_redis.restart(down_s=float(rng.uniform(0.5, 2.0))))

    hooks = {"actors": lambda workers, aggregator: actors.update(aggregator=aggregator),
             "after_submit": after_submit}
    if fault.startswith("driver"):
        child = {**params, "fault": fault, "kill_at": kill_at,
                 "ray_address": ray.get_runtime_context().gcs_address}
        proc = subprocess.run([sys.executable, "-c", "from tests.workers.test_chaos import _child; _child()",
                               json.dumps(child)], capture_output=True, text=True, timeout=240,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(),
                                                                                            os.environ.get("PYTHONPATH")]))})
        assert proc.returncode != 0, f"{where}: the driver was meant to die\n{proc.stderr[-2000:]}"
        summary = run_pipeline(_config(params))  # the same command again
    else:
        summary = run_pipeline(_config(params), hooks=hooks)
        assert fired, where
    for thread in restarted:
        thread.join()

    got, want = _outcome(params, summary, chaos_redis), fault_free[source]
    assert got.windows == want.windows, where  # per stream, window index, count and presence per concept
    assert sorted(got.counted_ids) == sorted(want.counted_ids), where
    assert got.images == want.images and got.duplicates == want.duplicates, where
    # every dead letter once: replayed batches do not write their letters again
    assert sorted(got.letters) == sorted(want.letters), where
    assert got.images + len(got.letters) == N_ITEMS, where
    if source == "redis":
        assert chaos_redis.client.xpending(f"rows-{seed}-{fault}", "g")["pending"] == 0, where
