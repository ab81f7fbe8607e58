"""Solver throughput and accuracy: our certified nonneg lasso vs one dictionary matmul, scikit-learn and the encoder.

Runs on the synthetic CLIP-like problem of ANCHORS.md by default, or on ``--dictionary D.npy --embeddings Z.npy``.
The keys of the returned dict are documented in docs/benchmarks.md (section "solver").
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import time
from pathlib import Path
from typing import Any

from monitor.errors import ConfigError
from workers.benchmarks import cpu_model as _cpu_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dictionary", type=Path, default=None,
                        help="concept dictionary (c x d) as .npy; default: synthetic c=10,000, d=512")
    parser.add_argument("--embeddings", type=Path, default=None,
                        help="embeddings (n x d) as .npy, already centred and normalised; default: synthetic")
    parser.add_argument("--batch", type=int, default=256, help="rows decomposed per timed solve (default 256)")
    parser.add_argument("--l1", type=float, default=0.25, help="lasso penalty, reference ADMM scaling (default 0.25)")
    parser.add_argument("--tol", type=float, default=1e-4, help="solver tolerance on the relative duality gap")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repetitions; the best is reported (default 5)")
    parser.add_argument("--reference-samples", type=int, default=16,
                        help="rows solved by the scikit-learn reference (default 16; 0 skips it)")
    parser.add_argument("--skip-encoder", action="store_true", help="do not time the open_clip ViT-B-32 encoder")
    parser.add_argument("--encoder-batch", type=int, default=None,
                        help="images per encoder batch (default 16 on CPU, 256 on GPU)")
    parser.add_argument("--encoder-batches", type=int, default=3, help="timed encoder batches (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic problem")


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from monitor.concepts.solver import NonnegLasso

    for name in ("batch", "repeats", "encoder_batches"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.reference_samples < 0:
        raise ConfigError(f"--reference-samples must be >= 0, got {args.reference_samples}")
    if not args.l1 > 0:
        raise ConfigError(f"--l1 must be > 0, got {args.l1}")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: CUDA is not available on this machine")

    D, Z, source = _load_problem(args)
    Z = Z[: args.batch]
    n, d = Z.shape
    c = D.shape[0]

    solver = NonnegLasso(D, tol=args.tol, device=device)
    Zd = Z.to(device)
    Dd = solver.dictionary
    solver.solve(Zd[: min(n, 32)], args.l1, warn=False)  # warm-up: allocator, oneDNN/cuBLAS kernel selection

    cpu0 = time.process_time()
    t_solve, res = _best_time(lambda: solver.solve(Zd, args.l1, warn=False), args.repeats, device)
    cpu_solve = (time.process_time() - cpu0) / args.repeats
    prev = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        t_mm, _ = _best_time(lambda: Zd @ Dd.T, args.repeats, device)
    finally:
        torch.set_float32_matmul_precision(prev)

    # fidelity on the device, in row blocks: GPU batches can be far larger than the host wants to copy
    cosine = torch.cat([
        torch.nn.functional.cosine_similarity(res.weights[i : i + 4096] @ Dd, Zd[i : i + 4096].to(Dd.dtype), dim=1)
        for i in range(0, n, 4096)
    ])
    W = res.weights[: args.reference_samples].detach().cpu()
    out: dict[str, Any] = {
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cpu_model": _cpu_model(),
        "torch_threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
        "load_avg_1m": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "problem": source,
        "n_concepts": c,
        "dim": d,
        "batch": n,
        "l1": args.l1,
        "tol": args.tol,
        "screen_dtype": str(solver.screen_dtype).replace("torch.", "") if solver.screen_dtype else None,
        "solver_img_per_s": n / t_solve,
        "solver_ms_per_batch": 1e3 * t_solve,
        "solver_cpu_ms_per_batch": 1e3 * cpu_solve,
        "matmul_img_per_s": n / t_mm,
        "solver_vs_matmul": t_mm / t_solve,
        "certificate_gap_max": float(res.gap.max()),
        "certificate_gap_mean": float(res.gap.mean()),
        "kkt_max": float(res.kkt.max()),
        "converged_fraction": float(res.converged.float().mean()),
        "iterations": int(res.iterations),
        "inner_iterations": int(res.inner_iterations),
        "mean_l0": float(res.l0.float().mean()),
        "mean_cosine": float(cosine.mean()),
    }
    out.update(_reference(D, Z, W, args))
    ref = out["reference_img_per_s"]
    out["speedup_vs_reference"] = out["solver_img_per_s"] / ref if ref else None
    if args.skip_encoder:
        out.update({"encoder_model": None, "encoder_img_per_s": None, "solver_vs_encoder": None})
    else:
        out.update(_encoder(args, device))
        out["solver_vs_encoder"] = out["solver_img_per_s"] / out["encoder_img_per_s"]
    return out


def _load_problem(args: argparse.Namespace):
    import numpy as np
    import torch

    from monitor.synthetic.problems import make_problem

    if (args.dictionary is None) != (args.embeddings is None):
        raise ConfigError("--dictionary and --embeddings go together: give both .npy files or neither")
    if args.dictionary is None:
        p = make_problem(n=args.batch, seed=args.seed)
        return p.dictionary, p.targets, "synthetic"
    files = (("--dictionary", args.dictionary, "(c, d)"), ("--embeddings", args.embeddings, "(n, d)"))
    for flag, path, _ in files:
        if not path.is_file():
            raise ConfigError(f"{flag} {path}: no such file")
    arrays = []
    for flag, path, what in files:
        try:
            a = np.load(path, allow_pickle=False)
        except ValueError as exc:
            raise ConfigError(f"{flag} {path}: not a plain .npy array ({exc})") from None
        if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
            raise ConfigError(f"{flag} {path}: expected a 2-D float array {what}, got shape {a.shape} dtype {a.dtype}")
        if not np.isfinite(a).all():
            raise ConfigError(f"{flag} {path}: contains NaN or inf")
        arrays.append(torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)))
    D, Z = arrays
    if D.shape[1] != Z.shape[1]:
        raise ConfigError(
            f"dimension mismatch: --dictionary has shape {tuple(D.shape)}, --embeddings has shape {tuple(Z.shape)}"
        )
    return D, Z, f"files:{args.dictionary.name},{args.embeddings.name}"


def _best_time(fn, repeats: int, device):
    import torch

    best, value = float("inf"), None
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        value = fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best, value


def _reference(D, Z, W, args) -> dict[str, Any]:
    """scikit-learn's coordinate descent on the same rows: alpha = l1 / (2 d) gives the same minimiser, because
    sklearn minimises ||z - D^T w||^2 / (2 d) + alpha ||w||_1."""
    import numpy as np
    import torch

    from monitor.concepts.solver import dual_certificate

    m = min(args.reference_samples, Z.shape[0])
    keys = ("reference_samples", "reference_img_per_s", "reference_tol", "reference_certificate_gap_max",
            "rel_objective_gap_max", "rel_objective_gap_mean")
    if m == 0:
        return dict.fromkeys(keys) | {"reference_samples": 0}
    try:
        from sklearn.linear_model import Lasso
    except ImportError:
        raise ConfigError(
            "the reference solver needs scikit-learn (pip install scikit-learn), or pass --reference-samples 0"
        ) from None

    d = Z.shape[1]
    X = D.double().numpy().T.copy(order="F")  # (d, c): samples are the embedding axes
    ref_tol = 1e-10
    model = Lasso(alpha=args.l1 / (2 * d), positive=True, fit_intercept=False, tol=ref_tol, max_iter=200_000,
                  precompute=False, selection="cyclic")
    coefs = np.zeros((m, D.shape[0]))
    t0 = time.perf_counter()
    for i in range(m):
        model.fit(X, Z[i].double().numpy())
        coefs[i] = model.coef_
    t_ref = time.perf_counter() - t0
    Wref = torch.from_numpy(coefs)
    obj_ref, gap_ref, _ = dual_certificate(D, Z[:m], Wref, args.l1)
    obj_ours, _, _ = dual_certificate(D, Z[:m], W[:m], args.l1)
    rel = (obj_ours - obj_ref) / obj_ref
    return {
        "reference_samples": m,
        "reference_img_per_s": m / t_ref,
        "reference_tol": ref_tol,
        "reference_certificate_gap_max": float(gap_ref.max()),
        "rel_objective_gap_max": float(rel.max()),
        "rel_objective_gap_mean": float(rel.mean()),
    }


def _encoder(args: argparse.Namespace, device) -> dict[str, Any]:
    """open_clip ViT-B-32 image encoding at random init: same compute as the pretrained model."""
    import torch

    try:
        import open_clip
    except ImportError:
        raise ConfigError("timing the encoder needs open_clip_torch (pip install open_clip_torch), or pass --skip-encoder") from None

    batch = args.encoder_batch or (256 if device.type == "cuda" else 16)
    model = open_clip.create_model("ViT-B-32", pretrained=None).to(device).eval()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, 224, 224, generator=g).to(device)
    use_amp = device.type == "cuda"

    def encode():
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            return model.encode_image(images)

    encode()  # warm-up
    t, _ = _best_time(encode, args.encoder_batches, device)
    return {
        "encoder_model": "ViT-B-32 (open_clip, random init, " + ("fp16 autocast" if use_amp else "fp32") + ")",
        "encoder_batch": batch,
        "encoder_img_per_s": batch / t,
    }


