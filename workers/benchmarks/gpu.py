"""GPU readiness: the worker core without Ray on one device (solver at large batches, fp16 ViT-B-32 encoding, JPEG
decoding on the device vs the CPU, and decode -> preprocess -> encode -> centre -> decompose end to end).

Runs as ``splice-monitor bench gpu --json`` or, on a machine where the project is not installed, as
``python3 -m workers.benchmarks.gpu --json --out FILE`` with the repository on PYTHONPATH. It imports only torch,
torchvision, numpy and pillow at module level and open_clip inside the parts that need it: every part is guarded, so
a missing package or a failing part is reported in its own entry and the others still run. ``--device cpu --quick``
is the small smoke run the tests use. Keys are documented in docs/benchmarks.md (section "gpu").
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable

from monitor.errors import ConfigError

# Sizes per mode: full runs fit in about 5 minutes on an H100/H200 (most of it one-off start-up and data generation).
FULL = {"solver_batches": (4096, 16384, 65536), "solver_repeats": 3, "encoder_batches": (256, 1024),
        "encoder_iters": 10, "encoder_repeats": 2, "jpeg_count": 1024, "jpeg_sizes": (256, 512), "jpeg_repeats": 3,
        "e2e_items": 16384, "e2e_runs": (("device_decode", 1024, 16384), ("device_decode", 4096, 16384),
                                          ("pil_decode", 1024, 4096)),
        "concepts": 10_000, "dim": 512}
QUICK = {"solver_batches": (32,), "solver_repeats": 1, "encoder_batches": (1,), "encoder_iters": 1,
         "encoder_repeats": 1, "jpeg_count": 8, "jpeg_sizes": (64,), "jpeg_repeats": 1, "e2e_items": 6,
         "e2e_runs": (("device_decode", 3, 6), ("pil_decode", 3, 6)),
         "concepts": 2_000, "dim": 512}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every part (CPU tests)")
    p.add_argument("--out", default=None, help="also write the JSON object to this file")
    p.add_argument("--parts", default="solver,encoder,jpeg,worker",
                   help="comma-separated parts to run (default: %(default)s)")
    p.add_argument("--l1", type=float, default=0.25, help="lasso penalty, reference ADMM scaling (default 0.25)")
    p.add_argument("--tol", type=float, default=1e-4, help="solver certificate tolerance (default 1e-4)")


def _log(msg: str) -> None:
    print(f"[bench gpu {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn: Callable[[], Any], repeats: int, device) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(max(1, repeats)):
        _sync(device)
        t0 = time.perf_counter()
        value = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, value


def _guarded(name: str, fn: Callable[[], dict]) -> dict:
    """Run one part; a missing package or any failure becomes that part's report, not the end of the run."""
    t0 = time.perf_counter()
    _log(f"{name}: start")
    try:
        out = fn()
    except ImportError as exc:
        out = {"skipped": f"missing package: {exc}"}
    except Exception as exc:  # a failing part must not hide the figures of the others
        out = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
    out["wall_s"] = round(time.perf_counter() - t0, 2)
    _log(f"{name}: done in {out['wall_s']} s" + (f" ({out.get('skipped') or out.get('error')})"
                                                    if "skipped" in out or "error" in out else ""))
    return out


# -- solver ---------------------------------------------------------------------------------------------------------


def _solver(device, sizes: dict, l1: float, tol: float) -> dict:
    import torch

    from monitor.concepts.solver import NonnegLasso, dual_certificate
    from monitor.synthetic.problems import make_dictionary, make_targets

    D = make_dictionary(sizes["concepts"], sizes["dim"], seed=0)
    solver = NonnegLasso(D, tol=tol, device=device)
    rows = []
    for batch in sizes["solver_batches"]:
        Z, _, _ = make_targets(D, batch, seed=1)
        Zd = Z.to(device)
        solver.solve(Zd[: min(batch, 256)], l1, warn=False)  # warm-up: allocator and kernel selection
        t, res = _best(lambda: solver.solve(Zd, l1, warn=False), sizes["solver_repeats"], device)
        # an independent float64 certificate on a sample of rows: the solver's own gap is not taken on trust
        m = min(batch, 1024)
        _, gap64, kkt64 = dual_certificate(D.to(device), Zd[:m], res.weights[:m], l1)
        rows.append({
            "batch": batch,
            "img_per_s": batch / t,
            "ms_per_batch": 1e3 * t,
            "certificate_gap_max": float(res.gap.max()),
            "certificate_gap_f64_max": float(gap64.max()),
            "kkt_f64_max": float(kkt64.max()),
            "converged_fraction": float(res.converged.float().mean()),
            "mean_l0": float(res.l0.float().mean()),
            "iterations": int(res.iterations),
        })
        _log(f"solver: batch {batch}: {batch / t:,.0f} img/s, gap {float(res.gap.max()):.2e}")
        del Zd, res
    return {"n_concepts": sizes["concepts"], "dim": sizes["dim"], "l1": l1, "tol": tol,
            "screen_dtype": str(solver.screen_dtype).replace("torch.", "") if solver.screen_dtype else None,
            "batches": rows, "best_img_per_s": max(r["img_per_s"] for r in rows),
            "certified": all(r["certificate_gap_f64_max"] <= tol and r["converged_fraction"] == 1.0 for r in rows)}


# -- encoder --------------------------------------------------------------------------------------------------------


def _open_clip_model(device):
    import open_clip
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return model.to(device).eval(), preprocess, getattr(open_clip, "__version__", None)


def _encoder(device, sizes: dict) -> dict:
    import torch

    model, _, version = _open_clip_model(device)
    half = device.type == "cuda"
    if half:
        model = model.half()
    dtype = torch.float16 if half else torch.float32
    rows = []
    for batch in sizes["encoder_batches"]:
        x = torch.randn(batch, 3, 224, 224, device=device).to(dtype)
        with torch.inference_mode():
            model.encode_image(x)  # warm-up
            t, _ = _best(lambda: [model.encode_image(x) for _ in range(sizes["encoder_iters"])],
                         sizes["encoder_repeats"], device)
        rows.append({"batch": batch, "img_per_s": batch * sizes["encoder_iters"] / t})
        _log(f"encoder: batch {batch}: {rows[-1]['img_per_s']:,.0f} img/s")
    return {"model": "ViT-B-32 (open_clip, random init)", "open_clip_version": version,
            "dtype": "fp16" if half else "fp32", "batches": rows, "best_img_per_s": max(r["img_per_s"] for r in rows)}


# -- JPEG decoding --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def _jpegs(n: int, size: int) -> list[bytes]:
    """Synthetic photo-like JPEGs (the ones ``bench pipeline`` uses), made once per size for all parts."""
    from workers.benchmarks.pipeline import _jpegs as make

    return make(n, size, 0)


def _jpeg(device, sizes: dict) -> dict:
    import io
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    import numpy as np
    import torch
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from torchvision.io import ImageReadMode, decode_jpeg

    threads = os.cpu_count() or 1
    out: dict[str, Any] = {"cpu_threads": threads, "sizes": []}
    with ThreadPoolExecutor(threads) as pool:
        for size in sizes["jpeg_sizes"]:
            data = _jpegs(sizes["jpeg_count"], size)
            tensors = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in data]
            row: dict[str, Any] = {"image_size": size, "images": len(data),
                                   "mean_jpeg_bytes": int(np.mean([len(b) for b in data]))}

            def pil_one(b):
                with Image.open(io.BytesIO(b)) as im:
                    return np.asarray(im.convert("RGB"))

            t, _ = _best(lambda: list(pool.map(pil_one, data)), sizes["jpeg_repeats"], torch.device("cpu"))
            row["pil_threads_img_per_s"] = len(data) / t
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                t, _ = _best(lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB), sizes["jpeg_repeats"],
                             torch.device("cpu"))
                row["torchvision_cpu_1_thread_img_per_s"] = len(data) / t
                if device.type == "cuda":
                    decode_jpeg(tensors[:8], mode=ImageReadMode.RGB, device=device)  # warm-up: nvJPEG handles
                    t, _ = _best(lambda: decode_jpeg(tensors, mode=ImageReadMode.RGB, device=device),
                                 sizes["jpeg_repeats"], device)
                    row["device_img_per_s"] = len(data) / t
                    row["device_vs_pil_threads"] = row["device_img_per_s"] / row["pil_threads_img_per_s"]
                else:
                    row["device_img_per_s"] = None
            _log(f"jpeg {size}px: PIL x{threads} {row['pil_threads_img_per_s']:,.0f} img/s, device "
                 f"{row['device_img_per_s'] or 0:,.0f} img/s")
            out["sizes"].append(row)
    return out


# -- the worker core end to end -------------------------------------------------------------------------------------


def _worker(device, sizes: dict, l1: float, tol: float) -> dict:
    import numpy as np
    import torch

    from monitor.concepts.decomposer import Decomposer
    from monitor.concepts.dictionary import ConceptDictionary
    from monitor.concepts.encoders import OpenClipEncoder
    from monitor.concepts.vocab import Vocabulary
    from monitor.records import ItemMeta
    from monitor.synthetic.problems import make_dictionary
    from workers.core import Worker
    from workers.items import WorkItem

    precision = "fp16" if device.type == "cuda" else "fp32"
    runs = [r for r in sizes["e2e_runs"] if device.type == "cuda" or r[0] == "pil_decode"]
    encoder = OpenClipEncoder("ViT-B-32", "random", device=str(device), batch_size=max(b for _, b, _ in runs),
                              precision=precision)
    # a synthetic 10,000-concept dictionary in the encoder's space: the solver's cost depends on c and d only
    vectors = make_dictionary(sizes["concepts"], encoder.dim, seed=0).numpy()
    vocab = Vocabulary(tuple(f"concept {i}" for i in range(sizes["concepts"])), source="synthetic")
    dictionary = ConceptDictionary(vectors, vocab, encoder.id, None, np.zeros(encoder.dim, np.float32))
    decomposer = Decomposer(dictionary, np.zeros(encoder.dim, np.float32), l1=l1, device=device, tol=tol,
                            mean_source="zero (benchmark)")
    distinct = _jpegs(sizes["jpeg_count"], 256)  # the JPEG part's 256 px set, cycled
    out: dict[str, Any] = {"n_concepts": sizes["concepts"], "encoder_dtype": precision, "image_size": 256,
                           "runs": []}
    for mode, batch, n in runs:
        items = [WorkItem(meta=ItemMeta(id=f"img-{i}", timestamp=1_700_000_000.0 + i),
                          payload=distinct[i % len(distinct)]) for i in range(n)]
        worker = Worker(encoder, decomposer, encode_batch=batch,
                        device_decode="on" if mode == "device_decode" else "off")
        try:
            worker.process(items[:batch])  # warm-up
            _sync(device)
            split: dict[str, float] = {}
            counted = dead = nonconverged = 0
            t0 = time.perf_counter()
            for i in range(0, n, batch):
                part = worker.process(items[i:i + batch])
                counted += len(part.items)
                dead += len(part.dead_letters)
                nonconverged += part.n_nonconverged
                for k, v in part.timings.items():
                    split[k] = split.get(k, 0.0) + v
            _sync(device)
            elapsed = time.perf_counter() - t0
        finally:
            worker.close()
        if counted + dead != n:
            raise RuntimeError(f"worker core returned {counted} codes and {dead} dead letters for {n} items")
        out["runs"].append({"mode": mode, "batch": batch, "items": n, "items_per_s": n / elapsed,
                            "decomposed": counted, "dead_letters": dead, "nonconverged": nonconverged,
                            "time_split_s": {k: round(v, 3) for k, v in split.items()},
                            "device_decode_active": worker._device_plan is not None})
        _log(f"worker core ({mode}, batch {batch}): {n / elapsed:,.0f} items/s")
    out["best_items_per_s"] = max(r["items_per_s"] for r in out["runs"])
    return out


# -- entry points ---------------------------------------------------------------------------------------------------


PARTS = ("solver", "encoder", "jpeg", "worker")


def run(args: argparse.Namespace) -> dict:
    import platform

    import torch

    from workers.benchmarks import cpu_model

    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise ConfigError(f"--parts: unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")
    sizes = QUICK if args.quick else FULL
    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "quick": bool(args.quick),
    }
    _log(f"device {result['gpu'] or result['cpu_model']}, torch {torch.__version__}")
    jobs = {"solver": lambda: _solver(device, sizes, args.l1, args.tol), "encoder": lambda: _encoder(device, sizes),
            "jpeg": lambda: _jpeg(device, sizes), "worker": lambda: _worker(device, sizes, args.l1, args.tol)}
    for name in parts:
        result[name] = _guarded(name, jobs[name])
        if device.type == "cuda":
            torch.cuda.empty_cache()
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(result, fh, indent=1)
    return result


def main(argv: list[str] | None = None) -> int:
    from workers.benchmarks.harness import module_main

    return module_main("workers.benchmarks.gpu", argv)


if __name__ == "__main__":
    sys.exit(main())
