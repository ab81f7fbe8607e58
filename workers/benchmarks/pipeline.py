"""End-to-end pipeline throughput (1 and 2 Ray workers) next to encoder-only throughput on the same images.

Keys are documented in docs/benchmarks.md (section "pipeline"). ``--no-ray`` benches the worker core alone from JPEG
bytes (decode -> preprocess -> encode -> decompose), the figure that matters on a GPU machine. ``--encoder null``
measures the pipeline's own ceiling instead (workers/benchmarks/control_plane.py).
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from datetime import datetime, timezone

import numpy as np

from workers.benchmarks import cpu_model as _cpu_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--encoder", choices=("clip", "null"), default="clip",
                   help="clip: the --model encoder on synthetic JPEGs; null: the zero-cost null:D encoder, which "
                        "measures the pipeline's own ceiling (default: %(default)s)")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default: %(default)s)")
    p.add_argument("--pretrained", default="random",
                   help="weights; 'random' has the real model's compute (default: %(default)s)")
    p.add_argument("--vocab", default=None,
                   help="concept vocabulary file (default: the first --concepts concepts of the built-in one)")
    p.add_argument("--concepts", type=int, default=None,
                   help="size of the default vocabulary (default: 512 with clip, as the CPU text tower needs "
                        "minutes per thousand concepts to build a dictionary, built once and cached; 10000 with null)")
    p.add_argument("--images", type=int, default=192, help="JPEGs per measured run (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=256, help="JPEG side in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="items per batch (default: 32 with clip; 1024 with null, the batch a GPU worker runs)")
    p.add_argument("--workers", default=None,
                   help="comma-separated worker counts to run (default: 1,2 with clip, 1,2,4 with null)")
    p.add_argument("--no-ray", action="store_true", help="bench the worker core alone (no Ray), e.g. on a GPU")
    p.add_argument("--device", default=None, help="torch device for --no-ray (default: cuda when available)")
    p.add_argument("--decode-threads", type=int, default=0, help="decode threads per worker (0: auto)")
    p.add_argument("--device-decode", choices=("auto", "on", "off"), default="auto",
                   help="decode JPEGs on the encoder's device (auto: on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("with --encoder null (control plane)")
    g.add_argument("--sources", default="parquet,redis", help="sources to read: parquet, redis (default: %(default)s; "
                   "redis starts its own redis-server on a free loopback port)")
    g.add_argument("--solver", default="off,on",
                   help="off: random sparse codes at no cost; on: the certified solver (default: %(default)s)")
    g.add_argument("--items", type=int, default=100_000,
                   help="items per run with the solver off (default: %(default)s; long enough that the one-off "
                   "calibration of the drift tests, ~4 s of aggregator CPU at batch 1,024, does not set the figure)")
    g.add_argument("--solver-items", type=int, default=2_048,
                   help="items per run with the solver on (default: %(default)s)")
    g.add_argument("--payload-bytes", type=int, default=4_096,
                   help="bytes per item payload, which the source and Ray carry (default: %(default)s)")
    g.add_argument("--dim", type=int, default=512, help="null embedding dimension (default: %(default)s)")
    g.add_argument("--streams", type=int, default=1,
                   help="streams the items are spread over, round robin (a camera column / field); with "
                        "--aggregators N > 1 they are what gets sharded (default: %(default)s)")
    g.add_argument("--redis-claim", default="driver",
                   help="who claims Redis entries: driver, worker, or both as a comma-separated list (the redis "
                        "source's claim= option; default: %(default)s)")
    g.add_argument("--aggregators", type=int, default=1,
                   help="aggregator actors the streams are sharded onto (default: %(default)s); the CPU of each is "
                        "reported (cpu_us_per_item.aggregator_<i>)")
    g.add_argument("--profile", action="store_true",
                   help="cProfile the driver's main thread and report its top functions per run")


def _jpegs(n: int, size: int, seed: int) -> list[bytes]:
    """Smooth random colour fields with noise (compress like photos do, unlike pure noise)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    yy, xx = np.mgrid[0:size, 0:size] / size
    for _ in range(n):
        coef = rng.normal(size=(3, 4))
        img = np.stack([np.sin(3 * c[0] * xx + 2 * c[1] * yy + c[2]) * 80 + 128 + 20 * c[3] for c in coef], axis=-1)
        img = np.clip(img + rng.normal(scale=12, size=img.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        out.append(buf.getvalue())
    return out


def _device_name(device: str | None) -> str:
    import torch

    if (device or "").startswith("cuda") or (device is None and torch.cuda.is_available()):
        return torch.cuda.get_device_name(0)
    return _cpu_model()


def _worker_config(args, **extra):
    from workers.core import WorkerConfig

    return WorkerConfig(model=args.model, pretrained=args.pretrained, vocab=args.vocab_path,
                        decode_threads=args.decode_threads, encode_batch=args.batch_size,
                        device_decode=args.device_decode, **extra)


def _vocab_file(args, directory: str) -> str:
    if args.vocab:
        return args.vocab
    from monitor.concepts.vocab import default_vocabulary

    if args.concepts < 1:
        raise ValueError(f"--concepts must be >= 1, got {args.concepts}")
    path = os.path.join(directory, f"vocab-{args.concepts}.txt")
    with open(path, "w") as fh:
        fh.write("\n".join(default_vocabulary().concepts[: args.concepts]) + "\n")
    return path


def _items(jpegs: list[bytes]):
    from monitor.records import ItemMeta
    from workers.items import WorkItem

    return [WorkItem(meta=ItemMeta(id=f"img-{i}", timestamp=1_700_000_000.0 + i), payload=b, kind="image")
            for i, b in enumerate(jpegs)]


def _encoder_only(worker, jpegs: list[bytes], batch: int, threads: int) -> float:
    """Images/s of preprocess-free encoding: the same encoder on the same images, already decoded and preprocessed."""
    import torch

    from monitor.concepts.images import decode_image

    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        # at most 2048 distinct preprocessed images are kept (600 kB each); batches cycle over them
        tensors = [worker.encoder.preprocess(decode_image(b)) for b in jpegs[:2048]]
        batches = [torch.stack([tensors[j % len(tensors)] for j in range(i, min(i + batch, len(jpegs)))])
                   for i in range(0, min(len(jpegs), 4 * len(tensors)), batch)]
        worker.encoder.encode_preprocessed(batches[0])  # warm-up
        done = 0
        t0 = time.perf_counter()
        for i in range(0, len(jpegs), batch):
            out = worker.encoder.encode_preprocessed(batches[(i // batch) % len(batches)])
            done += out.shape[0]
        if out.device.type == "cuda":
            torch.cuda.synchronize()
        return done / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)


def _no_ray(args, jpegs: list[bytes]) -> dict:
    import torch

    from workers.core import Worker

    worker = Worker.create(_worker_config(args, device=args.device))
    items = _items(jpegs)
    n_concepts = len(worker.concept_names)
    worker.process(items[: args.batch_size])  # warm-up (kernels, allocator)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    n_codes = 0
    for i in range(0, len(items), args.batch_size):
        part = worker.process(items[i:i + args.batch_size])
        n_codes += len(part.items)
        for k, v in part.timings.items():
            timings[k] = timings.get(k, 0.0) + v
    elapsed = time.perf_counter() - t0
    enc = _encoder_only(worker, jpegs, args.batch_size, torch.get_num_threads())
    worker.close()
    return {
        "mode": "no_ray",
        "n_concepts": n_concepts,
        "worker_core_img_s": len(items) / elapsed,
        "encoder_only_img_s": enc,
        "worker_vs_encoder": (len(items) / elapsed) / enc,
        "decoded_and_decomposed": n_codes,
        "time_split_s": {k: round(v, 4) for k, v in timings.items()},
        "torch_threads": torch.get_num_threads(),
        "device_decode": worker._device_plan is not None,
    }


def _pipeline(args, jpegs: list[bytes], workers: int, path: str) -> dict:
    from monitor.drift.monitor import MonitorConfig, WindowConfig
    from workers.config import PipelineConfig
    from workers.driver import run_pipeline

    marks: dict[str, float] = {}

    def started(info):
        marks["start"] = time.perf_counter()

    def progress(done, dead):
        marks["end"] = time.perf_counter()
        marks["done"] = done + dead

    config = PipelineConfig(source=f"parquet://{path}?image_column=image&timestamp_column=ts",
                            worker=_worker_config(args), workers=workers, batch_size=args.batch_size,
                            monitor=MonitorConfig(window=WindowConfig(kind="count", size=10_000)), metrics_port=None)
    summary = run_pipeline(config, on_started=started, on_progress=progress)
    if summary.images != len(jpegs):
        raise RuntimeError(f"pipeline counted {summary.images} of {len(jpegs)} images")
    return {"img_s": marks["done"] / (marks["end"] - marks["start"]), "images": summary.images,
            "elapsed_s": marks["end"] - marks["start"]}


def run(args: argparse.Namespace) -> dict:
    import shutil

    if args.encoder == "null":
        if args.batch_size is None:
            # a GPU worker (the deployment this bench sizes, ~10k images/s each) encodes 1,024+ images per batch;
            # 256 is recorded beside it in docs/benchmarks.md to show the per-batch overheads
            args.batch_size = 1024
        from workers.benchmarks import control_plane

        return control_plane.run(args)
    args.concepts = 512 if args.concepts is None else args.concepts
    args.batch_size = 32 if args.batch_size is None else args.batch_size
    args.workers = args.workers or "1,2"

    vocab_dir = tempfile.mkdtemp(prefix="splice-bench-vocab-")
    try:
        args.vocab_path = _vocab_file(args, vocab_dir)
        return _run(args)
    finally:
        shutil.rmtree(vocab_dir, ignore_errors=True)


def _run(args: argparse.Namespace) -> dict:
    import torch

    jpegs = _jpegs(args.images, args.image_size, args.seed)
    result: dict = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "model": f"{args.model}:{args.pretrained}",
        "images": len(jpegs),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "mean_jpeg_bytes": int(np.mean([len(b) for b in jpegs])),
        "cpu_count": os.cpu_count(),
    }
    if args.no_ray:
        result["device"] = _device_name(args.device)
        result.update(_no_ray(args, jpegs))
        return result

    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray

    from workers.core import Worker

    result["device"] = _cpu_model()
    # encoder-only reference: the same encoder and images, one thread per worker as a Ray worker gets
    worker = Worker.create(_worker_config(args))
    result["n_concepts"] = len(worker.concept_names)
    result["encoder_only_img_s_1_thread"] = _encoder_only(worker, jpegs, args.batch_size, 1)
    result["encoder_only_img_s_all_threads"] = _encoder_only(worker, jpegs, args.batch_size,
                                                             torch.get_num_threads())
    worker.close()
    del worker
    counts = [int(x) for x in args.workers.split(",") if x.strip()]
    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=max(counts), include_dashboard=False, log_to_driver=False)
        started = True
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "frames.parquet")
            pq.write_table(pa.table({"image": pa.array(jpegs, pa.binary()),
                                     "ts": [1_700_000_000.0 + i for i in range(len(jpegs))]}), path)
            for n in counts:
                r = _pipeline(args, jpegs, n, path)
                result[f"pipeline_img_s_{n}_workers"] = r["img_s"]
    finally:
        if started:
            ray.shutdown()
    one = result.get("pipeline_img_s_1_workers")
    two = result.get("pipeline_img_s_2_workers")
    if one:
        result["pipeline_vs_encoder"] = one / result["encoder_only_img_s_1_thread"]
    if one and two:
        result["scaling_efficiency_2_workers"] = two / (2 * one)
    return result
