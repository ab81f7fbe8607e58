"""Bounded soak: a Redis stream fed at a steady rate for about two minutes through two workers; every delivered
message is counted once and the resident memory of the driver, the aggregator and the workers stays flat."""

from __future__ import annotations

import json
import os
import threading
import time

import pytest

from monitor.drift.monitor import MonitorConfig, ReferenceConfig, WindowConfig
from monitor.synthetic.captions import CaptionStream
from workers.config import PipelineConfig
from workers.driver import run_pipeline

DURATION_S = float(os.environ.get("SPLICE_SOAK_SECONDS", "120"))
RATE = 60  # captions per second, well under two CPU workers' capacity so the stream is sustained, not a backlog


@pytest.mark.slow
def test_sustained_stream_keeps_memory_flat_and_counts_every_message(ray_local, text_config, redis_url,
                                                                      redis_client, tmp_path):
    import psutil

    stop_producing = threading.Event()
    produced = []

    def producer():
        captions = iter(CaptionStream(n=10**7, seed=1))
        t0 = time.monotonic()
        sent = 0
        while not stop_producing.is_set():
            due = int((time.monotonic() - t0) * RATE)
            pipe = redis_client.pipeline(transaction=False)
            for _ in range(due - sent):
                c = next(captions)
                pipe.xadd("soak", {"text": c.text, "ts": repr(time.time())})
            sent = due
            pipe.execute()
            produced.append(sent)
            time.sleep(0.1)

    pids: dict[str, int] = {"driver": os.getpid()}
    samples: list[dict] = []
    stop = threading.Event()

    def actors(workers, aggregator):
        import ray

        pids["aggregator"] = ray.get(aggregator.pid.remote())
        for i, w in enumerate(workers):
            pids[f"worker{i}"] = ray.get(w.pid.remote())

    def sampler():
        t0 = time.monotonic()
        while not stop.wait(5.0):
            row = {"t": round(time.monotonic() - t0, 1)}
            for name, pid in list(pids.items()):
                try:
                    row[name] = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    pass
            samples.append(row)
            if row["t"] >= DURATION_S:
                stop.set()

    config = PipelineConfig(source=f"{redis_url}?stream=soak&group=g", worker=text_config, workers=2,
                            batch_size=32, monitor=MonitorConfig(window=WindowConfig(kind="count", size=500),
                                                          reference=ReferenceConfig(n_images=1000)),
                            metrics_port=0, dead_letter=f"parquet://{tmp_path / 'dead'}")
    prod = threading.Thread(target=producer, daemon=True)
    samp = threading.Thread(target=sampler, daemon=True)
    prod.start()
    samp.start()
    try:
        summary = run_pipeline(config, stop=stop, hooks={"actors": actors})
    finally:
        stop_producing.set()
        stop.set()
        prod.join(10)
    (tmp_path / "rss.json").write_text(json.dumps(samples))
    print("RSS MiB samples:", json.dumps(samples))

    assert summary.stopped_by == "signal" and summary.dead_letters_total == 0
    assert redis_client.xpending("soak", "g")["pending"] == 0
    rest = redis_client.xreadgroup("g", "after", {"soak": ">"}, count=10**6)
    unread = len(rest[0][1]) if rest else 0
    assert summary.images + unread == redis_client.xlen("soak")
    assert summary.images >= 0.8 * RATE * DURATION_S * 0.7  # sustained (startup takes part of the window)
    # flat memory: after warm-up, no process grows by more than 40 MiB or 15% between the first and last third
    steady = [s for s in samples if s["t"] >= DURATION_S / 3]
    third = max(1, len(steady) // 3)
    for name in pids:
        first = [s[name] for s in steady[:third] if name in s]
        last = [s[name] for s in steady[-third:] if name in s]
        assert first and last, f"{name} (pid {pids[name]}) has no RSS samples in the first or last third: it died"
        growth = max(last) - max(first)
        assert growth < max(40.0, 0.15 * max(first)), f"{name} RSS grew {growth:.1f} MiB: {samples}"
