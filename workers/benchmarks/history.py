"""History analysis speed: compare two ranges and trend a year of hourly windows over 10M images of aggregates.

Builds (in a temporary directory) a synthetic store of hourly windows: ``--images`` images spread over ``--days``
days, ``--concepts`` concepts with Zipf-like prevalence (about ``--active`` active concepts per image), one concept
planted to rise in the second half. Keys are documented in docs/benchmarks.md (section ``history``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from workers.benchmarks import cpu_model as _cpu_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", type=int, default=10_000_000, help="images of aggregates (default 10M)")
    parser.add_argument("--concepts", type=int, default=10_000, help="concepts in the space (default 10,000)")
    parser.add_argument("--days", type=int, default=365, help="days of hourly windows (default 365)")
    parser.add_argument("--active", type=float, default=20.0, help="mean active concepts per image (default 20)")
    parser.add_argument("--trend-concepts", type=int, default=5, help="concepts in the trend query (default 5)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per query; the median is reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dir", help="build the store here and keep it (default: a temporary directory, removed)")


def _timed(fn, repeats: int) -> tuple[float, float, object]:
    times, result = [], None
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times[0], result


def build_store(root: Path, *, images: int, concepts: int, days: int, active: float, seed: int):
    """Write the synthetic history; returns (store, stats dict, planted concept id)."""
    from monitor.history.store import HistoryStore
    from monitor.records import WindowSummary

    rng = np.random.default_rng(seed)
    names = [f"concept_{i:05d}" for i in range(concepts)]
    store = HistoryStore(root, concept_space=f"bench-{concepts}", concept_names=names)
    rank = np.arange(1, concepts + 1, dtype=np.float64)
    p = 1.0 / rank
    p = np.minimum(p / p.sum() * active, 0.9)
    mu = rng.uniform(0.05, 0.3, concepts)
    planted = concepts // 2  # a mid-frequency concept that jumps in the second half
    hours = days * 24
    per_window = max(images // hours, 1)
    t0 = float(np.datetime64("2025-01-01", "s").astype(np.int64))
    nnz = 0
    gen_s = write_s = 0.0
    for d in range(days):
        t = time.perf_counter()
        prob = np.tile(p, (24, 1))
        if d >= days // 2:
            prob[:, planted] = min(p[planted] * 8 + 0.01, 0.9)
        presence = np.minimum(rng.poisson(prob * per_window), per_window).astype(np.int64)
        weight_sum = presence * mu * rng.uniform(0.9, 1.1, presence.shape)
        windows = []
        for h in range(24):
            start = t0 + (d * 24 + h) * 3600.0
            windows.append(
                WindowSummary("bench", start, start + 3600.0, per_window, weight_sum[h], weight_sum[h] * mu * 1.3,
                              presence[h], fidelity_sum=0.8 * per_window, l0_sum=active * per_window,
                              concept_space=store.concept_space)
            )
        nnz += int((presence > 0).sum())
        gen_s += time.perf_counter() - t
        t = time.perf_counter()
        store.write_windows(windows)
        write_s += time.perf_counter() - t
    return store, {"generate_s": gen_s, "write_s": write_s, "nnz_entries": nnz, "images_per_window": per_window,
                   "t0": t0}, planted


def run(args: argparse.Namespace) -> dict:
    from monitor.history.analysis import Selection, compare, trend

    if args.images < 1 or args.concepts < 2 or args.days < 2:
        raise SystemExit("bench history: need --images >= 1, --concepts >= 2, --days >= 2")
    tmp = None
    if args.dir:
        root = Path(args.dir)
    else:
        tmp = tempfile.mkdtemp(prefix="splice-bench-history-")
        root = Path(tmp) / "store"
    try:
        store, info, planted = build_store(
            root, images=args.images, concepts=args.concepts, days=args.days, active=args.active, seed=args.seed
        )
        t0 = info["t0"]
        half = t0 + (args.days // 2) * 86400.0
        end = t0 + args.days * 86400.0
        first_half, second_half = Selection(t0, half), Selection(half, end)
        cmp_s, cmp_first, cmp = _timed(lambda: compare(store, first_half, second_half), args.repeats)
        week_a = Selection(t0, t0 + 7 * 86400.0)
        week_b = Selection(end - 7 * 86400.0, end)
        week_s, _, _ = _timed(lambda: compare(store, week_a, week_b), args.repeats)
        concepts = [store.concept_names[planted]] + store.concept_names[: max(args.trend_concepts - 1, 0)]
        trend_s, trend_first, tr = _timed(
            lambda: trend(store, concepts, start=t0, end=end, granularity="hour"), args.repeats
        )
        trend_day_s, _, _ = _timed(lambda: trend(store, concepts, start=t0, end=end, granularity="day"), args.repeats)
        rising = [r["concept_index"] for r in cmp.rows("up", 10)]
        store_bytes = sum(f.stat().st_size for f in root.rglob("*.parquet"))
        files = sum(1 for _ in root.rglob("*.parquet"))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return {
        "images": cmp.baseline_agg.n_images + cmp.current_agg.n_images,
        "windows": cmp.baseline_agg.n_windows + cmp.current_agg.n_windows,
        "concepts": args.concepts,
        "days": args.days,
        "images_per_window": info["images_per_window"],
        "nnz_entries": info["nnz_entries"],
        "store_bytes": store_bytes,
        "files": files,
        "generate_s": round(info["generate_s"], 3),
        "write_s": round(info["write_s"], 3),
        "compare_halves_s": round(cmp_s, 3),
        "compare_halves_first_s": round(cmp_first, 3),
        "compare_weeks_s": round(week_s, 3),
        "trend_hourly_year_s": round(trend_s, 3),
        "trend_hourly_year_first_s": round(trend_first, 3),
        "trend_daily_year_s": round(trend_day_s, 3),
        "trend_points": int(tr.prevalence.size),
        "trend_concepts": len(concepts),
        "planted_concept_rank": rising.index(planted) + 1 if planted in rising else None,
        "target_compare_s": 2.0,
        "target_trend_s": 1.0,
        "compare_meets_target": cmp_s <= 2.0,
        "trend_meets_target": trend_s <= 1.0,
        "repeats": args.repeats,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
