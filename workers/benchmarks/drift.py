"""Drift detection on synthetic sparse-code streams: false-alarm run length vs ERT, attribution, delay vs an
online MMD baseline on dense embeddings, and update + test throughput.

Keys are documented in docs/benchmarks.md (section "drift"). The default run is bounded to a few minutes on a
2-core machine; ``--seeds``, ``--null-steps`` and ``--concepts`` scale it up.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import math
import time
from typing import Any

import numpy as np

from workers.benchmarks import cpu_model as _cpu_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concepts", type=int, default=10_000, help="concept vocabulary size (default 10000)")
    parser.add_argument("--mean-l0", type=float, default=30.0, help="mean active concepts per image (default 30)")
    parser.add_argument("--window", type=int, default=1000, help="images per tumbling window = one test step")
    parser.add_argument("--reference", type=int, default=20_000, help="images in the fixed reference")
    parser.add_argument("--ert", type=float, default=100.0, help="expected run time between false alarms, steps")
    parser.add_argument("--null-steps", type=int, default=300, help="test steps of each stationary run")
    parser.add_argument("--seeds", type=int, default=2, help="independent runs per scenario and null stream")
    parser.add_argument("--planted", type=int, default=5, help="concepts shifted per scenario")
    parser.add_argument("--horizon", type=int, default=20, help="windows observed after onset")
    parser.add_argument("--mmd-reference", type=int, default=3000, help="reference embeddings of the MMD baseline")
    parser.add_argument("--mmd-bootstraps", type=int, default=1000, help="null draws calibrating the MMD threshold")
    parser.add_argument("--dim", type=int, default=512, help="dense embedding dimension for the MMD baseline")
    parser.add_argument("--no-mmd", action="store_true", help="skip the MMD baseline")
    parser.add_argument("--ert-check", type=float, default=5.0,
                        help="a second, small ERT run on the same null streams so false alarms are frequent enough "
                             "to measure the run length without censoring (default 5)")
    parser.add_argument("--throughput-images", type=int, default=200_000, help="images timed for throughput")
    parser.add_argument("--min-prevalence-change", type=float, default=0.0,
                        help="DriftConfig.min_prevalence_change: absolute prevalence floor for prevalence alarms "
                             "(default 0.0, off)")


def _config(args, ert: float | None = None):
    from monitor.drift.monitor import DriftConfig, MonitorConfig, ReferenceConfig, WindowConfig

    return MonitorConfig(window=WindowConfig(kind="count", size=args.window),
                         reference=ReferenceConfig(mode="fixed", n_images=args.reference),
                         drift=DriftConfig(ert=args.ert if ert is None else ert,
                                           min_prevalence_change=args.min_prevalence_change))


def _names(c: int) -> list[str]:
    return [f"concept{j}" for j in range(c)]


def _null_run(args, seed: int) -> dict[str, Any]:
    """A stationary stream: count steps and the steps at which a new alarm fired (then reset, as after an alert)."""
    from monitor.synthetic.codes import synthetic_stream
    from monitor.drift.monitor import StreamMonitor

    n_images = args.reference + args.null_steps * args.window
    mon = StreamMonitor(_names(args.concepts), _config(args), stream="null")
    check = StreamMonitor(_names(args.concepts), _config(args, args.ert_check), stream="null")
    false_steps = check_false = 0
    fired_concepts: list[str] = []
    check_kinds: dict[str, int] = {}
    for codes, items in synthetic_stream(args.concepts, n_images, seed=1000 + seed, mean_l0=args.mean_l0,
                                         batch_size=args.window):
        ts = np.array([it.timestamp for it in items])
        alarms = [a for a in mon.update(codes, timestamps=ts) if a.state == "firing"]
        if alarms:
            false_steps += 1
            fired_concepts += [f"{a.concept}:{a.kind}:{a.direction}" for a in alarms]
            mon.book._active.clear()  # restart the run, reference kept
        alarms = [a for a in check.update(codes, timestamps=ts) if a.state == "firing"]
        if alarms:
            check_false += 1
            for a in alarms:
                check_kinds[a.kind] = check_kinds.get(a.kind, 0) + 1
            check.book._active.clear()
    return {"steps": mon.steps, "false_alarm_steps": false_steps, "fired": fired_concepts[:10],
            "check_false_alarm_steps": check_false, "check_kinds": check_kinds}


def _throughput(args) -> float:
    """Images/s of ``StreamMonitor.update`` on one core: BLAS/OpenMP pools are held to one thread while timed."""
    from threadpoolctl import threadpool_limits

    from monitor.synthetic.codes import synthetic_stream
    from monitor.drift.monitor import StreamMonitor

    batch = 500
    batches = [(codes, np.array([it.timestamp for it in items])) for codes, items in
               synthetic_stream(args.concepts, args.reference + args.throughput_images, seed=77,
                                mean_l0=args.mean_l0, batch_size=batch)]
    mon = StreamMonitor(_names(args.concepts), _config(args), stream="tp")
    n_warm = args.reference // batch
    for codes, ts in batches[:n_warm]:
        mon.update(codes, timestamps=ts)
    with threadpool_limits(limits=1):
        t0 = time.perf_counter()
        n = 0
        for codes, ts in batches[n_warm:]:
            mon.update(codes, timestamps=ts)
            n += len(codes)
        return n / (time.perf_counter() - t0)


def _pick_planted(args, rng: np.random.Generator, profile) -> np.ndarray:
    eligible = np.flatnonzero((profile.prevalence >= 0.01) & (profile.prevalence <= 0.05))
    return rng.choice(eligible, size=min(args.planted, len(eligible)), replace=False)


def _scenario_run(args, kind: str, size: float, seed: int, dictionary) -> dict[str, Any]:
    from monitor.synthetic.codes import Shift, concept_profile, embed_codes, synthetic_stream
    from workers.benchmarks.mmd import MMDDriftOnline
    from monitor.drift.monitor import StreamMonitor

    profile = concept_profile(args.concepts, args.mean_l0, seed=2000 + seed)
    rng = np.random.default_rng(seed)
    planted = _pick_planted(args, rng, profile)
    pre_windows = 10
    # onset in the middle of a window: the realistic case, and it makes delay include the partial window
    onset = args.reference + pre_windows * args.window + args.window // 2
    n_images = onset + args.horizon * args.window
    shifts = [Shift(int(j), onset, kind, size) for j in planted]
    mon = StreamMonitor(_names(args.concepts), _config(args), stream="s")
    batch = args.window // 4 if args.window % 4 == 0 else args.window
    fed = 0
    first_alarm = None
    alarmed: set[int] = set()
    wrong_dir = 0
    pre_onset_false = 0
    mmd = None
    mmd_first = None
    mmd_pre_false = 0
    mmd_steps_pre = 0
    ref_emb: list[np.ndarray] = []
    cur_emb: list[np.ndarray] = []
    emb_rng = np.random.default_rng(seed + 5)
    for codes, items in synthetic_stream(args.concepts, n_images, shifts, seed=2000 + seed, mean_l0=args.mean_l0,
                                         batch_size=batch, profile=profile):
        ts = np.array([it.timestamp for it in items])
        alarms = [a for a in mon.update(codes, timestamps=ts) if a.state == "firing"]
        fed += len(codes)
        for a in alarms:
            if fed <= onset:
                pre_onset_false += 1
                continue
            alarmed.add(a.concept_index)
            if a.concept_index in set(planted.tolist()):
                want = "up" if size > 1 else "down"
                wrong_dir += a.direction != want
                if first_alarm is None:
                    first_alarm = fed - onset
        if dictionary is not None:
            emb = embed_codes(codes, dictionary, noise=0.0, rng=emb_rng)
            if fed <= args.reference:
                ref_emb.append(emb)
                if fed == args.reference:
                    pool = np.concatenate(ref_emb)[-args.mmd_reference:]
                    mmd = MMDDriftOnline(pool, window=args.window, ert=args.ert,
                                         n_bootstraps=args.mmd_bootstraps, seed=seed)
                    ref_emb = []
            else:
                cur_emb.append(emb)
                if sum(len(e) for e in cur_emb) >= args.window and mmd is not None:
                    window = np.concatenate(cur_emb)
                    cur_emb = []
                    fired = mmd.test(window)[1]
                    if fed <= onset:
                        mmd_steps_pre += 1
                        mmd_pre_false += fired
                    elif fired and mmd_first is None:
                        mmd_first = fed - onset
    planted_set = set(planted.tolist())
    tp = len(alarmed & planted_set)
    return {
        "planted": planted.tolist(),
        "detected": tp,
        "alarmed": len(alarmed),
        "precision": tp / len(alarmed) if alarmed else math.nan,
        "recall": tp / len(planted_set),
        "wrong_direction": wrong_dir,
        "delay": first_alarm,
        "pre_onset_false_alarms": pre_onset_false,
        "steps_pre_onset": pre_windows,
        "mmd_delay": mmd_first,
        "mmd_pre_onset_false_steps": mmd_pre_false,
        "mmd_steps_pre_onset": mmd_steps_pre,
        "mmd_threshold": None if mmd is None else mmd.threshold,
    }


def _median(xs: list[float | None], censor: float) -> float:
    vals = [censor if x is None else x for x in xs]
    return float(np.median(vals)) if vals else math.nan


SCENARIOS: tuple[tuple[str, float], ...] = (
    ("prevalence", 2.0),
    ("prevalence", 3.0),
    ("prevalence", 5.0),
    ("prevalence", 0.2),
    ("activation", 2.0),
    ("activation", 3.0),
)
TARGET_SCENARIO = ("prevalence", 3.0)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from monitor.synthetic.codes import random_dictionary

    t_start = time.perf_counter()
    out: dict[str, Any] = {
        "machine": _cpu_model(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "n_concepts": args.concepts,
        "mean_l0": args.mean_l0,
        "window_images": args.window,
        "reference_images": args.reference,
        "ert_steps": args.ert,
        "min_prevalence_change": args.min_prevalence_change,
        "seeds": args.seeds,
    }
    out["throughput_images_per_s"] = round(_throughput(args), 1)
    out["throughput_threads"] = 1  # BLAS/OpenMP pools limited with threadpoolctl during the timing

    nulls = [_null_run(args, s) for s in range(args.seeds)]
    steps = sum(r["steps"] for r in nulls)
    false_steps = sum(r["false_alarm_steps"] for r in nulls)
    dictionary = None if args.no_mmd else random_dictionary(args.concepts, args.dim, seed=11)
    scenarios = []
    for kind, size in SCENARIOS:
        runs = [_scenario_run(args, kind, size, s, dictionary) for s in range(args.seeds)]
        censor = args.horizon * args.window
        precision = [r["precision"] for r in runs if not math.isnan(r["precision"])]
        scenarios.append({
            "kind": kind,
            "size": size,
            "runs": len(runs),
            "planted_per_run": args.planted,
            "precision": float(np.mean(precision)) if precision else None,  # None: nothing alarmed
            "recall": float(np.mean([r["recall"] for r in runs])),
            "wrong_direction": int(sum(r["wrong_direction"] for r in runs)),
            "delay_images_median": _median([r["delay"] for r in runs], censor),
            "detected_runs": sum(r["delay"] is not None for r in runs),
            "mmd_delay_images_median": None if args.no_mmd else _median([r["mmd_delay"] for r in runs], censor),
            "mmd_detected_runs": None if args.no_mmd else sum(r["mmd_delay"] is not None for r in runs),
            "delay_censored_at": censor,
        })
        # the steps before onset are stationary too: they add to the null sample for both detectors
        steps += sum(r["steps_pre_onset"] for r in runs)
        false_steps += sum(r["pre_onset_false_alarms"] > 0 for r in runs)
        scenarios[-1]["_mmd_pre"] = (sum(r["mmd_steps_pre_onset"] for r in runs),
                                     sum(r["mmd_pre_onset_false_steps"] for r in runs))
    mmd_steps = 0
    mmd_false = 0
    for s in scenarios:
        a, b = s.pop("_mmd_pre")
        mmd_steps += a
        mmd_false += b
    run_length = steps / false_steps if false_steps else None
    out["null"] = {
        "steps": steps,
        "false_alarm_steps": false_steps,
        "run_length_steps": run_length,
        # with no false alarm, the data say only that the run length is beyond the observed steps
        "run_length_lower_bound_steps": steps if not false_steps else None,
        "ratio_to_ert": (run_length if run_length is not None else steps) / args.ert,
        "censored": not false_steps,
        "examples": [f for r in nulls for f in r["fired"]][:10],
    }
    check_steps = sum(r["steps"] for r in nulls)
    check_false = sum(r["check_false_alarm_steps"] for r in nulls)
    kinds: dict[str, int] = {}
    for r in nulls:
        for k, v in r["check_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    out["null_small_ert"] = {
        "ert_steps": args.ert_check,
        "steps": check_steps,
        "false_alarm_steps": check_false,
        "run_length_steps": check_steps / check_false if check_false else None,
        "ratio_to_ert": (check_steps / check_false if check_false else check_steps) / args.ert_check,
        "censored": not check_false,
        "alarms_by_kind": kinds,
    }
    out["mmd_null"] = None if args.no_mmd else {"steps": mmd_steps, "false_alarm_steps": mmd_false}
    out["scenarios"] = scenarios
    target = next(s for s in scenarios if (s["kind"], s["size"]) == TARGET_SCENARIO)
    prev = [s for s in scenarios if s["kind"] == "prevalence"]
    out["targets"] = {
        "stated_shift": "prevalence x3 on 5 concepts with base prevalence 1-5%",
        "run_length_ok": out["null"]["ratio_to_ert"] >= 0.8,
        "precision_ok": target["precision"] is not None and target["precision"] >= 0.9,
        "recall_ok": target["recall"] >= 0.8,
        "delay_ok": None if args.no_mmd else all(s["delay_images_median"] <= s["mmd_delay_images_median"]
                                                 for s in prev),
        "throughput_ok": out["throughput_images_per_s"] >= 50_000,
    }
    out["wall_s"] = round(time.perf_counter() - t_start, 1)
    return out
