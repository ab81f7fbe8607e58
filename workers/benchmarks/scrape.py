"""Time one Prometheus scrape (generate_latest) of MonitorMetrics at 10,000 concepts x 2 streams, and count series.

Also reports the cost of exporting every concept (no cardinality bound) and of the update calls the pipeline makes.
"""

from __future__ import annotations

import argparse
import os
import time
from datetime import datetime, timezone

import numpy as np

from workers.benchmarks import cpu_model as _cpu_model

TARGET_MS = 100.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concepts", type=int, default=10_000, help="dictionary size (default: %(default)s)")
    parser.add_argument("--streams", type=int, default=2, help="streams (default: %(default)s)")
    parser.add_argument("--max-concepts-per-stream", type=int, default=200,
                        help="exported concept budget per stream (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=10, help="top drifting concepts gauge size")
    parser.add_argument("--repeats", type=int, default=30, help="scrapes timed (default: %(default)s)")
    parser.add_argument("--images", type=int, default=4096, help="images fed per stream before timing")
    parser.add_argument("--skip-unbounded", action="store_true",
                        help="skip the variant that exports every concept")
    parser.add_argument("--seed", type=int, default=0)


def _codes(rng: np.random.Generator, n: int, c: int, l0: int = 20):
    from monitor.records import SparseCodes

    # Zipf-like concept popularity, ~l0 active concepts per image, like SpLiCE codes on real data.
    pop = 1.0 / np.arange(1, c + 1) ** 1.1
    pop /= pop.sum()
    indptr = np.arange(0, (n + 1) * l0, l0, dtype=np.int64)
    idx = np.concatenate([np.sort(rng.choice(c, l0, replace=False, p=pop)) for _ in range(n)]).astype(np.int32)
    vals = rng.uniform(0.01, 0.5, n * l0).astype(np.float32)
    return SparseCodes(indptr=indptr, indices=idx, values=vals,
                       fidelity=rng.normal(0.75, 0.05, n).astype(np.float32),
                       l1=np.full(n, 0.25, np.float32), n_concepts=c)


def _build(args, max_per_stream: int, rng: np.random.Generator):
    from prometheus_client import CollectorRegistry

    from monitor.metrics.families import MonitorMetrics
    from monitor.records import Alarm, WindowSummary

    c = args.concepts
    reg = CollectorRegistry()
    m = MonitorMetrics([f"concept-{i}" for i in range(c)], registry=reg,
                       max_concepts_per_stream=max_per_stream, top_k=min(args.top_k, max_per_stream))
    feed_s, feed_n, window_s = 0.0, 0, 0.0
    for s in range(args.streams):
        stream = f"camera-{s}"
        codes = _codes(rng, args.images, c)
        t0 = time.perf_counter()
        for lo in range(0, args.images, 256):
            m.observe_batch(stream, codes.take(np.arange(lo, min(lo + 256, args.images))), latency_s=0.05)
        feed_s += time.perf_counter() - t0
        feed_n += args.images
        presence = np.bincount(codes.indices, minlength=c)
        wsum = np.bincount(codes.indices, weights=codes.values, minlength=c)
        cur = WindowSummary(stream, 0.0, 60.0, args.images, wsum, wsum ** 2, presence,
                            fidelity_sum=float(codes.fidelity.sum()))
        ref = WindowSummary(stream, -3600.0, 0.0, args.images, wsum * 0.9, wsum ** 2, (presence * 0.9).astype(int),
                            fidelity_sum=float(codes.fidelity.sum()))
        alarms = [Alarm(stream, "prevalence", "up", j, f"concept-{j}", 0.01, 0.05, 0.0, 0.0, 1.0, 20.0, 1e-9, 0, 60)
                  for j in (5, 50, 500)]
        t0 = time.perf_counter()
        m.observe_window(stream, cur, ref, concept_scores=rng.random(c), drift_score=1.0, alarms=alarms)
        window_s += time.perf_counter() - t0
        m.set_reference_time(stream, time.time() - 3600)
    m.set_queue_depth(12)
    return reg, feed_n / feed_s, 1000 * window_s / args.streams


def _time_scrapes(reg, repeats: int, openmetrics: bool = False) -> tuple[np.ndarray, int, int]:
    if openmetrics:  # what Prometheus 2.x negotiates first from the client_python HTTP handler
        from prometheus_client.openmetrics.exposition import generate_latest
    else:
        from prometheus_client import generate_latest

    body = generate_latest(reg)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        body = generate_latest(reg)
        times.append(1000 * (time.perf_counter() - t0))
    series = sum(1 for line in body.decode().splitlines() if line and not line.startswith("#"))
    return np.array(times), series, len(body)


def run(args: argparse.Namespace) -> dict:
    rng = np.random.default_rng(args.seed)
    reg, batch_rate, window_ms = _build(args, args.max_concepts_per_stream, rng)
    times, series, nbytes = _time_scrapes(reg, args.repeats)
    t_om, _, om_bytes = _time_scrapes(reg, args.repeats, openmetrics=True)
    out = {
        "concepts": args.concepts,
        "streams": args.streams,
        "max_concepts_per_stream": args.max_concepts_per_stream,
        "top_k": args.top_k,
        "series": series,
        "scrape_bytes": nbytes,
        "scrape_ms_median": round(float(np.median(times)), 3),
        "scrape_ms_p95": round(float(np.percentile(times, 95)), 3),
        "scrape_ms_min": round(float(times.min()), 3),
        "target_ms": TARGET_MS,
        "meets_target": bool(np.median(times) <= TARGET_MS),
        "openmetrics_scrape_ms_median": round(float(np.median(t_om)), 3),
        "openmetrics_scrape_bytes": om_bytes,
        "observe_batch_images_per_s": round(batch_rate, 1),
        "observe_window_ms": round(window_ms, 3),
    }
    if not args.skip_unbounded:
        reg_all, _, window_all_ms = _build(args, args.concepts, np.random.default_rng(args.seed))
        t_all, s_all, b_all = _time_scrapes(reg_all, max(3, args.repeats // 5))
        out.update({
            "unbounded_series": s_all,
            "unbounded_scrape_bytes": b_all,
            "unbounded_scrape_ms_median": round(float(np.median(t_all)), 3),
            "unbounded_observe_window_ms": round(window_all_ms, 3),
        })
    out.update({"cpu": _cpu_model(), "cpu_count": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2),
                "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")})
    return out
