"""Peer detectors for ``bench drift``: alibi-detect's online MMD and LSDD on the dense embeddings of the drift
benchmark's own streams, at the same ERT, run by the python of an isolated virtual environment.

alibi-detect is BSL-licensed and pins numpy, pillow and transformers below what this project needs, so it is never
imported here: ``workers/benchmarks/alibi_peer.py`` runs under ``--peers-python`` (or ``SPLICE_PEERS_PYTHON``) and
the two sides exchange .npy files and JSON in a temporary directory. Without a peers python the result says why
and the rest of the benchmark runs. docs/benchmarks.md ("Peer detectors") says how to build that environment.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from monitor.errors import ConfigError, PipelineError

__all__ = ["DETECTORS", "ENV_VAR", "add_arguments", "peers_python", "run", "run_detector"]

DETECTORS: dict[str, str] = {"alibi_mmd": "mmd", "alibi_lsdd": "lsdd"}
ENV_VAR = "SPLICE_PEERS_PYTHON"
RUNNER = Path(__file__).with_name("alibi_peer.py")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--peers-python", default=None, metavar="PATH",
                        help=f"python of a virtual environment with alibi-detect 0.13 (pytorch backend) for the peer "
                             f"detectors (default: ${ENV_VAR}; unset: the peers are not run)")
    parser.add_argument("--peers-window", type=int, default=100, help="peer detectors' sliding window (100)")
    parser.add_argument("--peers-reference", type=int, default=1000, help="peer detectors' reference size (1000)")
    parser.add_argument("--peers-bootstraps", type=int, default=6000,
                        help="bootstraps configuring the peers' thresholds (6000; alibi needs at least ERT of them)")
    parser.add_argument("--peers-null-items", type=int, default=15_000,
                        help="items of each peer no-drift run (default 15000: 3 x ERT)")
    parser.add_argument("--peers-timeout", type=float, default=900.0, help="seconds allowed per peer subprocess")


def peers_python(args: argparse.Namespace) -> str | None:
    path = getattr(args, "peers_python", None) or os.environ.get(ENV_VAR) or None
    if path is not None and not os.access(path, os.X_OK):
        raise ConfigError(f"--peers-python / ${ENV_VAR}: {path!r} is not an executable python; expected the python "
                          f"of a virtual environment with alibi-detect installed (docs/benchmarks.md)")
    return path


# ---------------------------------------------------------------------------------------------------------------
# one subprocess: a detector configured on one reference, run over several streams


def run_detector(python: str, detector: str, reference: np.ndarray, streams: list[tuple[np.ndarray, int | None]], *,
                 ert: float, window: int, n_bootstraps: int, seed: int = 0, threads: int = 1,
                 timeout: float = 900.0) -> dict[str, Any]:
    """Configure alibi-detect's online ``detector`` ("mmd" or "lsdd") on ``reference`` and run it over each
    ``(stream, onset)`` (onset None: a no-drift stream) in a subprocess under ``python``; returns the runner's JSON
    (alarms as 1-based item indices per stream, timings) plus the subprocess's wall time."""
    if detector not in DETECTORS.values():
        raise ConfigError(f"detector must be one of {sorted(DETECTORS.values())}, got {detector!r}")
    with tempfile.TemporaryDirectory(prefix="splice-peers-") as tmp:
        np.save(os.path.join(tmp, "reference.npy"), np.ascontiguousarray(reference, dtype=np.float32))
        specs = []
        for i, (x, onset) in enumerate(streams):
            path = os.path.join(tmp, f"stream{i}.npy")
            np.save(path, np.ascontiguousarray(x, dtype=np.float32))
            specs.append({"path": path, "onset": None if onset is None else int(onset)})
        spec = {"detector": detector, "ert": float(ert), "window": int(window), "n_bootstraps": int(n_bootstraps),
                "seed": int(seed), "threads": int(threads), "reference": os.path.join(tmp, "reference.npy"),
                "streams": specs}
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w", encoding="utf-8") as fh:
            json.dump(spec, fh)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
               "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("PYTHONPATH", None)  # the peer environment must not see this project's packages
        t0 = time.perf_counter()
        try:
            proc = subprocess.run([python, str(RUNNER), spec_path, out_path], capture_output=True, text=True,
                                  timeout=timeout, env=env, cwd=tmp)
        except subprocess.TimeoutExpired as exc:
            raise PipelineError(f"peer detector {detector} did not finish within {timeout:.0f} s") from exc
        if proc.returncode != 0:
            tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
            raise PipelineError(f"peer detector {detector} under {python} exited {proc.returncode}: {tail}")
        with open(out_path, encoding="utf-8") as fh:
            out = json.load(fh)
    out["wall_s"] = time.perf_counter() - t0
    return out


def delay_of(stream: dict[str, Any]) -> int | None:
    """Items from onset to the first alarm after it (the alarming item included), None when none came."""
    onset = stream["onset"]
    return next((a - onset for a in stream["alarms"] if a > onset), None)


# ---------------------------------------------------------------------------------------------------------------
# the drift benchmark's streams as dense embeddings


def _synthetic_sets(args) -> list[tuple[str, np.ndarray, list[tuple[np.ndarray, int | None]]]]:
    """(name, reference, streams) of the synthetic x3 prevalence scenario, one set per seed, and of one no-drift
    stream: the codes drift.py feeds the monitor, seen as normalize(codes @ D). The reference is the last
    ``--peers-reference`` items of the monitor's reference; the streams start where the monitor starts testing."""
    from monitor.synthetic.codes import embed_codes, random_dictionary, synthetic_stream

    from workers.benchmarks.drift import TARGET_SCENARIO, _planted_scenario

    dictionary = random_dictionary(args.concepts, args.dim, seed=11)
    kind, size = TARGET_SCENARIO

    def dense(n_images, shifts, seed, profile=None) -> np.ndarray:
        return np.concatenate([embed_codes(codes, dictionary) for codes, _ in synthetic_stream(
            args.concepts, n_images, shifts, seed=seed, mean_l0=args.mean_l0, batch_size=args.batch,
            profile=profile)])

    ref_lo = args.reference - args.peers_reference
    sets = []
    for seed in range(args.seeds):
        profile, _, shifts, onset = _planted_scenario(args, kind, size, seed)
        x = dense(onset + args.horizon, shifts, 2000 + seed, profile)
        sets.append((f"shift{seed}", x[ref_lo:args.reference], [(x[args.reference:], onset - args.reference)]))
    x = dense(args.reference + args.peers_null_items, (), 1000)
    sets.append(("null", x[ref_lo:args.reference], [(x[args.reference:], None)]))
    return sets


def _caption_embeddings() -> tuple[np.ndarray, dict[str, int]]:
    """MiniLM embeddings of every distinct benchmark caption (the vectors drift.py hands its own MMD)."""
    import warnings

    from monitor.concepts.encoders import create_encoder
    from monitor.synthetic.captions import distinct_captions

    texts = distinct_captions()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        emb = create_encoder("minilm", device="cpu", progress=False).encode_texts(texts)
    return np.asarray(emb.cpu().numpy(), dtype=np.float32), {t: i for i, t in enumerate(texts)}


def _caption_sets(args) -> list[tuple[str, np.ndarray, list[tuple[np.ndarray, int | None]]]]:
    """One set: the reference drift.py gives its MMD (seed 300), the shift streams of each seed and one no-drift
    stream, all from the caption reference on."""
    from monitor.synthetic.captions import CaptionStream

    from workers.benchmarks.drift import _caption_mix, _onset

    emb, row_of = _caption_embeddings()
    before, after = _caption_mix(args)

    def dense(stream) -> np.ndarray:
        return emb[[row_of[c.text] for c in stream]]

    ref = dense(CaptionStream(args.peers_reference, shift_at=args.peers_reference, before=before,
                              after=before, seed=300))
    onset = _onset(args, args.caption_reference)
    streams: list[tuple[np.ndarray, int | None]] = []
    for seed in range(args.seeds):
        x = dense(CaptionStream(onset + args.horizon, shift_at=onset, before=before, after=after,
                                seed=200 + seed))
        streams.append((x[args.caption_reference:], onset - args.caption_reference))
    n = args.caption_reference + args.peers_null_items
    x = dense(CaptionStream(n, shift_at=n, before=before, after=before, seed=100))
    streams.append((x[args.caption_reference:], None))
    return [("captions", ref, streams)]


# ---------------------------------------------------------------------------------------------------------------


def _summary(results: list[dict[str, Any]], args) -> dict[str, Any]:
    """Delay (median over the shift runs, censored at the horizon) and no-drift run length of one detector on one
    scenario, from the runner outputs of its sets."""
    shifts = [s for r in results for s in r["streams"] if s["onset"] is not None]
    nulls = [s for r in results for s in r["streams"] if s["onset"] is None]
    delays = [delay_of(s) for s in shifts]
    null_items = sum(s["items"] for s in nulls)
    null_alarms = sum(len(s["alarms"]) for s in nulls)
    run_length = null_items / null_alarms if null_alarms else None
    return {
        "delays": delays,
        "delay_items_median": float(np.median([args.horizon if d is None else d for d in delays])),
        "delay_censored_at": args.horizon,
        "pre_onset_false_alarms": sum(sum(a <= s["onset"] for a in s["alarms"]) for s in shifts),
        "null_items": null_items,
        "null_false_alarms": null_alarms,
        "run_length_items": run_length,
        "ratio_to_ert": (run_length if run_length is not None else null_items) / args.ert,
        "censored": null_alarms == 0,
        "configure_s": round(sum(r["configure_s"] for r in results), 1),
        "us_per_item": round(1e6 * sum(s["predict_s"] for r in results for s in r["streams"])
                             / max(1, sum(s["items"] for r in results for s in r["streams"])), 1),
        "wall_s": round(sum(r["wall_s"] for r in results), 1),
    }


def run(args: argparse.Namespace, *, captions: bool = True) -> dict[str, Any]:
    """The ``peers`` part of ``bench drift --json``: per detector (``alibi_mmd``, ``alibi_lsdd``) and scenario
    (``synthetic`` x3 prevalence, ``captions``), delay, no-drift run length, its ratio to ERT and wall time."""
    python = peers_python(args)
    setup = {"window": args.peers_window, "reference": args.peers_reference, "n_bootstraps": args.peers_bootstraps,
             "ert_items": args.ert, "null_items": args.peers_null_items}
    if python is None:
        return {"run": False, "reason": f"not run: no --peers-python (or ${ENV_VAR})", **setup}
    if args.peers_bootstraps < args.ert:
        raise ConfigError(f"--peers-bootstraps must be >= ERT ({args.ert:g}) for alibi-detect to resolve the "
                          f"1 - 1/ERT quantile, got {args.peers_bootstraps}")
    t0 = time.perf_counter()
    scenarios = {"synthetic": _synthetic_sets(args)}
    if captions:
        scenarios["captions"] = _caption_sets(args)
    jobs = [(key, scen, name, ref, streams) for key in DETECTORS for scen, sets in scenarios.items()
            for name, ref, streams in sets]

    def one(job):
        key, _, _, ref, streams = job
        return run_detector(python, DETECTORS[key], ref, streams, ert=args.ert, window=args.peers_window,
                            n_bootstraps=args.peers_bootstraps, timeout=args.peers_timeout)

    # two subprocesses at a time, one thread each: the figures are per-item costs on one core
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(one, jobs))
    out: dict[str, Any] = {"run": True, "python": python, **setup, "threads_per_detector": 1,
                           "alibi_detect": results[0]["alibi_detect"], "torch": results[0]["torch"]}
    for key in DETECTORS:
        out[key] = {scen: _summary([r for j, r in zip(jobs, results) if j[0] == key and j[1] == scen], args)
                    for scen in scenarios}
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def best_caption_delay(peers: dict[str, Any] | None) -> float | None:
    """The smallest caption delay among the peer detectors that ran, None when none did."""
    if not peers or not peers.get("run"):
        return None
    delays = [peers[k]["captions"]["delay_items_median"] for k in DETECTORS if "captions" in peers.get(k, {})]
    return min(delays) if delays else None

