"""The pipeline's own ceiling (``bench pipeline --encoder null``): the real driver, Ray workers, aggregator, metrics and
history, with the model replaced by the zero-cost ``null:D`` encoder and, with ``--solver off``, the decomposition by
random sparse codes. Reports items/s per (source, solver, workers) and the CPU each process used, so the figures say
which part saturates first; with the solver on, ``bench solver`` on the same dictionary and embeddings gives the ratio.

Keys are documented in docs/benchmarks.md (section "pipeline", control plane).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ConfigError, UncalibratedMeanWarning
from workers.benchmarks import cpu_model

SOURCES = ("parquet", "redis")
SOLVER_MODES = ("off", "on")
CLAIMS = ("driver", "worker")


def _list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    out = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in out if x not in allowed]
    if bad or not out:
        raise ConfigError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}")
    return out


def _counts(text: str) -> list[int]:
    try:
        out = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        out = []
    if not out or min(out) < 1:
        raise ConfigError(f"--workers takes a comma-separated list of worker counts >= 1, got {text!r}")
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every (source, solver, workers) configuration in one Ray session; see the module docstring."""
    import ray

    sources = _list(args.sources, SOURCES, "--sources")
    claims = _list(getattr(args, "redis_claim", "driver"), CLAIMS, "--redis-claim")
    # a Redis run per claim mode: "redis" (the driver claims, the default) and "redis_worker" in the keys below
    runs = [(s, c) for s in sources for c in (claims if s == "redis" else ["driver"])]
    solvers = _list(args.solver, SOLVER_MODES, "--solver")
    counts = _counts(args.workers or "1,2,4")
    concepts = args.concepts or 10_000
    for flag, value, low in (("--items", args.items, 1), ("--solver-items", args.solver_items, 1),
                             ("--payload-bytes", args.payload_bytes, 1), ("--dim", args.dim, 2),
                             ("--batch-size", args.batch_size, 1),
                             ("--aggregators", getattr(args, "aggregators", 1), 1),
                             ("--streams", getattr(args, "streams", 1), 1)):
        if value < low:
            raise ConfigError(f"{flag} must be >= {low}, got {value}")
    result: dict[str, Any] = {
        "mode": "control_plane",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": cpu_model(),
        "cpu_count": os.cpu_count(),
        "model": f"null:{args.dim}",
        "n_concepts": concepts,
        "batch_size": args.batch_size,
        "aggregators": getattr(args, "aggregators", 1),
        "streams": getattr(args, "streams", 1),
        "payload_bytes": args.payload_bytes,
        "items": {"off": args.items, "on": args.solver_items},
        "runs": [],
    }
    tmp = tempfile.mkdtemp(prefix="splice-bench-cp-")
    redis = None
    started_ray = False
    try:
        vocab = os.path.join(tmp, "vocab.txt")
        _write_vocab(vocab, concepts)
        if "on" in solvers:
            result["solver_bench"] = _solver_reference(args, vocab, tmp)
        if not ray.is_initialized():
            ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
            started_ray = True
        if "redis" in sources:
            redis = _RedisServer(tmp)
        for source, claim in runs:
            name = "redis_worker" if claim == "worker" else source
            for solver in solvers:
                n = args.items if solver == "off" else args.solver_items
                payloads = _payloads(n, args.payload_bytes, args.seed)
                for workers in counts:
                    uri = _fill(source, payloads, tmp, redis, f"s-{name}-{solver}-{workers}", args.batch_size,
                                getattr(args, "streams", 1))
                    if source == "redis":
                        uri += f"&claim={claim}"
                    r = _one(args, uri, vocab, solver, workers, n, redis if source == "redis" else None,
                             os.path.join(tmp, "history", f"{name}-{solver}-{workers}"))
                    r.update(source=name, solver=solver, workers=workers)
                    result["runs"].append(r)
                    print(f"[bench pipeline] {name} solver={solver} workers={workers}: "
                          f"{r['items_per_s']:.0f} items/s", file=sys.stderr, flush=True)
    finally:
        if redis is not None:
            redis.stop()
        if started_ray:
            ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_avg_1m"] = round(os.getloadavg()[0], 2)
    _summarise(result)
    return result


def _summarise(result: dict[str, Any]) -> None:
    """Flat keys for the figures the issue names (``items_per_s_<source>_<solver>_<n>w``) and the solver ratios."""
    for r in result["runs"]:
        result[f"items_per_s_{r['source']}_solver_{r['solver']}_{r['workers']}w"] = r["items_per_s"]
    ref = result.get("solver_bench")
    if ref:
        for r in result["runs"]:
            if r["solver"] != "on":
                continue
            # the same cores: one Ray worker holds one torch thread; several share the machine's threads
            base = ref["img_per_s_1_thread"] if r["workers"] == 1 else ref["img_per_s_all_threads"]
            r["vs_bench_solver"] = r["items_per_s"] / base
            result[f"vs_bench_solver_{r['source']}_{r['workers']}w"] = r["vs_bench_solver"]
            if "cpu_us_per_item" in r:  # the share of the workers' CPU that is the solve itself
                share = ref["cpu_us_per_item_1_thread"] / r["cpu_us_per_item"]["workers"]
                r["solver_cpu_share"] = share
                result[f"solver_cpu_share_{r['source']}_{r['workers']}w"] = share


def _write_vocab(path: str, n: int) -> None:
    from monitor.concepts.vocab import default_vocabulary

    names = default_vocabulary().concepts
    if n > len(names):  # beyond the built-in vocabulary: numbered concepts (the null encoder needs only names)
        names = list(names) + [f"concept {i}" for i in range(len(names), n)]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(names[:n]) + "\n")


def _payloads(n: int, size: int, seed: int) -> list[bytes]:
    """Distinct random payloads; the null encoder hashes them, so their content does not matter, only their size."""
    rng = np.random.default_rng(seed)
    block = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    return [row.tobytes() for row in block]


def _fill(source: str, payloads: list[bytes], tmp: str, redis, key: str, row_group: int, streams: int = 1) -> str:
    cameras = [f"cam-{i % streams}" for i in range(len(payloads))] if streams > 1 else None
    if source == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = os.path.join(tmp, f"{key}.parquet")
        if not os.path.exists(path):
            columns = {"image": pa.array(payloads, pa.binary()),
                       "ts": np.arange(len(payloads), dtype=np.float64) + 1_700_000_000.0}
            if cameras:
                columns["camera"] = pa.array(cameras)
            pq.write_table(pa.table(columns), path,
                           row_group_size=row_group)  # one row group per batch: each worker decodes only its rows
        return (f"parquet://{path}?image_column=image&timestamp_column=ts"
                + ("&stream_column=camera" if cameras else ""))
    redis.fill(key, payloads, cameras)
    return f"{redis.url}?stream={key}&group=bench&drain=1" + ("&stream_field=camera" if cameras else "")


def _one(args, uri: str, vocab: str, solver: str, workers: int, n: int, redis, history: str) -> dict[str, Any]:
    import ray

    from monitor.drift import MonitorConfig, WindowConfig
    from workers.config import PipelineConfig
    from workers.core import WorkerConfig
    from workers.driver import run_pipeline

    marks: dict[str, Any] = {}
    procs: dict[str, list[int]] = {}
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()

    def actors(worker_handles, aggregator):
        procs["workers"] = [ray.get(w.pid.remote()) for w in worker_handles]

    def aggregators(group):
        procs["aggregator"] = ray.get([a.pid.remote() for a in group.actors])

    def started(info):
        marks["cpu0"] = _cpu_snapshot(procs, redis)
        marks["start"] = time.perf_counter()
        if profiler is not None:  # the measured phase only, not Ray's start-up
            profiler.enable()

    def progress(done, dead):
        marks["end"] = time.perf_counter()
        if "half" not in marks and done + dead >= n // 2:
            marks["half"] = (marks["end"], done + dead)
        if done + dead >= n and "cpu1" not in marks:
            if profiler is not None:
                profiler.disable()
            marks["cpu1"] = _cpu_snapshot(procs, redis)
        marks["done"] = done + dead

    config = PipelineConfig(
        source=uri,
        worker=WorkerConfig(model=f"null:{args.dim}", vocab=vocab, solver="lasso" if solver == "on" else "off",
                            encode_batch=args.batch_size, device="cpu"),
        workers=workers, batch_size=args.batch_size, aggregators=getattr(args, "aggregators", 1),
        # every stream of --streams tracked (the default bound, 64, would dead-letter the rest as stream_limit)
        monitor=MonitorConfig(window=WindowConfig(kind="count", size=10_000),
                              max_streams=max(MonitorConfig().max_streams, getattr(args, "streams", 1))),
        metrics_port=0, history=history)
    summary = run_pipeline(config, on_started=started, on_progress=progress, hooks={"actors": actors, "aggregators": aggregators})
    if summary.images + summary.dead_letters_total != n or summary.images != n:
        raise RuntimeError(f"pipeline counted {summary.images} images and {summary.dead_letters_total} dead letters "
                           f"of {n} items")
    elapsed = marks["end"] - marks["start"]
    out: dict[str, Any] = {"items": n, "elapsed_s": round(elapsed, 3), "items_per_s": marks["done"] / elapsed,
                           "batches": summary.batches, "windows_closed": summary.windows_closed}
    if "half" in marks and marks["end"] > marks["half"][0]:
        # the second half alone: after the reference filled and the drift tests calibrated (a one-off per stream)
        out["items_per_s_second_half"] = (marks["done"] - marks["half"][1]) / (marks["end"] - marks["half"][0])
    if "cpu1" in marks:
        spent = {role: marks["cpu1"][role] - marks["cpu0"].get(role, 0.0) for role in marks["cpu1"]}
        out["cpu_cores"] = {role: round(v / elapsed, 3) for role, v in spent.items()}
        # CPU per item is what a busy machine distorts least; 1e6 / it is the role's ceiling on one free core
        out["cpu_us_per_item"] = {role: round(1e6 * v / n, 1) for role, v in spent.items()}
    if profiler is not None:
        out["driver_profile"] = _top(profiler)
    return out


def _cpu_snapshot(procs: dict[str, list[int]], redis) -> dict[str, float]:
    """CPU seconds (user + system) so far of each role: the driver (this process, every thread), the aggregators
    (summed, and each as ``aggregator_<i>``), the workers (summed), redis-server, and Ray's own processes (GCS,
    raylet with its object store, and helpers)."""
    import psutil

    def cpu(pid: int) -> float:
        try:
            t = psutil.Process(pid).cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    me = psutil.Process()
    mine = set(procs.get("workers", [])) | set(procs.get("aggregator", []))
    if redis is not None:
        mine.add(redis.pid)
    ray_procs = [p.pid for p in me.children(recursive=True) if p.pid not in mine]
    snap = {"driver": cpu(me.pid), "aggregator": sum(cpu(p) for p in procs.get("aggregator", [])),
            "workers": sum(cpu(p) for p in procs.get("workers", [])), "ray_system": sum(cpu(p) for p in ray_procs)}
    aggs = procs.get("aggregator", [])
    if len(aggs) > 1:
        snap.update({f"aggregator_{i}": cpu(p) for i, p in enumerate(aggs)})
    if redis is not None:
        snap["redis"] = cpu(redis.pid)
    return snap


def _top(profiler, n: int = 8) -> list[dict[str, Any]]:
    """The driver's main thread: functions with the most own time (where the driver's core goes)."""
    import pstats

    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:n]
    return [{"function": f"{os.path.basename(f)}:{line}:{name}", "own_s": round(v[2], 3), "cum_s": round(v[3], 3),
             "calls": v[1]} for (f, line, name), v in rows]


def _solver_reference(args, vocab: str, tmp: str) -> dict[str, Any]:
    """``bench solver`` on the dictionary and the centred embeddings the null pipeline decomposes, at the pipeline's
    batch size: one torch thread (what one Ray worker gets) and all threads."""
    import torch

    from monitor.concepts.decomposer import create_decomposer
    from workers.benchmarks import solver as solver_bench

    with warnings.catch_warnings():  # the workers centre with a zero mean too; no advice to calibrate needed here
        warnings.simplefilter("ignore", UncalibratedMeanWarning)
        encoder, decomposer = create_decomposer(f"null:{args.dim}", vocab=vocab, device="cpu")
    payloads = _payloads(args.batch_size, args.payload_bytes, args.seed)
    with torch.inference_mode():
        Z = decomposer.center(encoder.encode_payloads(payloads))
    d_path, z_path = Path(tmp) / "D.npy", Path(tmp) / "Z.npy"
    np.save(d_path, decomposer.dictionary.vectors)
    np.save(z_path, Z.numpy())
    out: dict[str, Any] = {}
    threads = torch.get_num_threads()
    try:
        for key, n in (("1_thread", 1), ("all_threads", os.cpu_count() or 1)):
            ns = argparse.Namespace(dictionary=d_path, embeddings=z_path, batch=args.batch_size, l1=0.25, tol=1e-4,
                                    device="cpu", threads=n, repeats=3, reference_samples=0, skip_encoder=True,
                                    encoder_batch=None, encoder_batches=1, seed=0)
            r = solver_bench.run(ns)
            out[f"img_per_s_{key}"] = r["solver_img_per_s"]
            # CPU per item (all threads): unlike wall time, hardly moved by other work on a shared machine
            out[f"cpu_us_per_item_{key}"] = 1e3 * r["solver_cpu_ms_per_batch"] / args.batch_size
            out["certificate_gap_max"] = r["certificate_gap_max"]
            out["mean_l0"] = r["mean_l0"]
    finally:
        torch.set_num_threads(threads)
    return out


class _RedisServer:
    """A throwaway redis-server on a free loopback port, without persistence, stopped by :meth:`stop`."""

    def __init__(self, tmp: str) -> None:
        import redis

        exe = shutil.which("redis-server")
        if exe is None:
            raise ConfigError("--sources redis needs redis-server on PATH (Debian package redis-server)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", tmp], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        self.pid = self.proc.pid
        self.url = f"redis://127.0.0.1:{port}/0"
        self.client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on port {port}") from None
                time.sleep(0.05)

    def fill(self, key: str, payloads: list[bytes], cameras: list[str] | None = None) -> None:
        self.client.delete(key)
        pipe = self.client.pipeline(transaction=False)
        for i, p in enumerate(payloads):
            fields = {"image": p, "ts": str(1_700_000_000.0 + i)}
            if cameras:
                fields["camera"] = cameras[i]
            pipe.xadd(key, fields)
            if i % 1000 == 999:
                pipe.execute()
        pipe.execute()

    def stop(self) -> None:
        try:
            self.client.close()
        finally:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
