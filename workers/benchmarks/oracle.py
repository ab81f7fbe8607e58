"""Oracle reference detectors for the ×3 prevalence scenario of ``bench drift``: window scans that are told the
shift's factor and direction (and, in one variant, which concepts moved), run on the very same streams, with their
thresholds set by simulation to the same ERT. Their delays bound from below what a named per-concept test can do.

Every scan evaluates, at each batch end, the binomial log-likelihood ratio of the last L batches' presence count
of a concept against its reference rate p, for the alternative min(factor · p, 0.95), for every L up to
``max_batches``. Three detectors are read off the same ratios:

* ``scan``: the largest ratio over all concepts and windows (told the factor and the direction, not the concepts);
* ``top``: the sum of the k largest ratios over all concepts per window, k the number of planted concepts (told
  the factor, the direction and how many concepts move, not which: evidence pooled across concepts);
* ``told``: the largest ratio over the planted concepts only (told which concepts could move, not when);
* ``told_joint``: the sum of the planted concepts' ratios per window (told everything but the change time: the
  likelihood ratio of "all of them rose by the factor over the last L batches").

Thresholds: each detector runs once over a no-drift stream of the scenario's own concept profile (another seed),
and its statistic before a restart is kept for every window length; a restart after an alarm only limits the
windows to the batches since the restart, so the mean run length of every threshold follows from that one pass, and
the threshold is the smallest at which it reaches the ERT. Keys are documented in docs/benchmarks.md (section
"drift: the oracle scan"); the derivation and the reading of the numbers are in docs/drift.md §4.

>>> scan = WindowScan(np.array([0.01, 0.2]), factor=3.0, max_batches=2)
>>> scan.update(np.array([3, 5]), 10).shape  # one batch so far: one window
(1, 2)
"""

from __future__ import annotations

import argparse
import datetime as _dt
import itertools
import math
import os
import sys
import time
from typing import Any, Iterable, Iterator

import numpy as np

from workers.benchmarks import cpu_model as _cpu_model

VARIANTS = ("scan", "top", "told", "told_joint")
ALT_CAP = 0.95  # the synthetic generator caps a shifted rate there too


class WindowScan:
    """Binomial log-likelihood ratios of every concept's count over the last 1..``max_batches`` batches.

    Cumulative presence counts are kept once per batch in a ring of ``max_batches + 1`` snapshots, so a window's
    count is one subtraction and a batch costs O(max_batches × concepts), whatever the window lengths.
    """

    def __init__(self, rates: np.ndarray, *, factor: float = 3.0, max_batches: int = 16) -> None:
        p = np.asarray(rates, dtype=np.float64)
        if p.ndim != 1 or not np.all((p > 0) & (p < 1)):
            raise ValueError("WindowScan: rates must be a 1-d array of probabilities in (0, 1)")
        if not factor > 1 or max_batches < 1:
            raise ValueError(f"WindowScan: need factor > 1 and max_batches >= 1, got {factor!r}, {max_batches!r}")
        q = np.minimum(factor * p, ALT_CAP)
        q = np.maximum(q, p)  # a rate already above the cap: no alternative, ratio 0 (below)
        rise = q > p
        # per item log((1 - q) / (1 - p)), per present item log(q / p) on top of it
        self._base = np.where(rise, np.log1p(-q) - np.log1p(-p), 0.0)
        self._slope = np.where(rise, np.log(q / p), 0.0) - self._base
        self.max_batches = max_batches
        self.n_concepts = len(p)
        self._snaps = np.zeros((max_batches + 1, len(p)), dtype=np.int64)
        self._items = np.zeros(max_batches + 1, dtype=np.int64)
        self.reset()

    def reset(self) -> None:
        """Forget every batch seen (a restart after an alarm)."""
        self._head = 0
        self._filled = 0
        self._snaps[0] = 0
        self._items[0] = 0

    def update(self, counts: np.ndarray, size: int) -> np.ndarray:
        """Add a batch of ``size`` items with ``counts[j]`` items holding concept j; returns the ratios, shape
        (windows available, concepts): row L - 1 is the window of the last L batches."""
        slots = self.max_batches + 1
        nxt = (self._head + 1) % slots
        self._snaps[nxt] = self._snaps[self._head] + counts
        self._items[nxt] = self._items[self._head] + size
        self._head = nxt
        self._filled = min(self._filled + 1, self.max_batches)
        older = (nxt - 1 - np.arange(self._filled)) % slots  # the snapshot before each window
        k = self._snaps[nxt] - self._snaps[older]
        n = (self._items[nxt] - self._items[older]).astype(np.float64)
        return k * self._slope + n[:, None] * self._base


def binomial_llr(k: np.ndarray, n: np.ndarray, p: np.ndarray, factor: float) -> np.ndarray:
    """log P(k | n, q) − log P(k | n, p), q = min(factor · p, 0.95): the ratio the scan maximises (for tests and
    readers; the scan computes the same linear form incrementally)."""
    p = np.asarray(p, dtype=np.float64)
    q = np.maximum(np.minimum(factor * p, ALT_CAP), p)
    return k * (np.log(q) - np.log(p)) + (n - k) * (np.log1p(-q) - np.log1p(-p))


# ---------------------------------------------------------------------------------------------------------------
# batches of presence counts, with the reference split off


def count_batches(chunks: Iterable, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Cut a stream of ``SparseCodes`` chunks into batches of ``batch`` rows, in stream order; yields each batch's
    (local indptr, concept indices). Batches are cut inside each chunk, so every chunk but the last must be a whole
    number of batches for the batches to line up with the stream's."""
    for item in chunks:
        codes = item[0] if isinstance(item, tuple) else item
        n = len(codes)
        for lo in range(0, n, batch):
            hi = min(lo + batch, n)
            a, b = codes.indptr[lo], codes.indptr[hi]
            yield codes.indptr[lo:hi + 1] - a, codes.indices[a:b]


def split_reference(batches: Iterable[tuple[np.ndarray, np.ndarray]], reference: int, n_concepts: int):
    """The first ``reference`` items' presence counts, then every later (part of a) batch as (counts, items, item
    offset at its end). Returns (reference counts, generator); the counts are complete once the generator yields."""
    ref = np.zeros(n_concepts, dtype=np.int64)

    def gen():
        seen = 0
        for indptr, indices in batches:
            n = len(indptr) - 1
            cut = min(max(reference - seen, 0), n)
            if cut:
                np.add(ref, np.bincount(indices[:indptr[cut]], minlength=n_concepts), out=ref)
            if cut < n:
                yield np.bincount(indices[indptr[cut]:], minlength=n_concepts), n - cut, seen + n
            seen += n

    return ref, gen()


def reference_rates(counts: np.ndarray, n: int) -> np.ndarray:
    """(x + ½) / (n + 1): the reference estimate of each rate, never 0 (a concept the reference never saw)."""
    return (np.asarray(counts, dtype=np.float64) + 0.5) / (n + 1.0)


# ---------------------------------------------------------------------------------------------------------------
# statistics per window length, thresholds from one pass


def _top_sum(llr: np.ndarray, k: int) -> np.ndarray:
    """Per window, the sum of the k largest ratios over concepts."""
    return np.partition(llr, llr.shape[1] - k, axis=1)[:, llr.shape[1] - k:].sum(axis=1)


def _variant_stats(llr: np.ndarray, planted: np.ndarray) -> dict[str, np.ndarray]:
    sub = llr[:, planted]
    return {"scan": llr.max(axis=1), "top": _top_sum(llr, len(planted)), "told": sub.max(axis=1),
            "told_joint": sub.sum(axis=1)}


def null_pass(scan: WindowScan, batches, planted: np.ndarray) -> tuple[dict[str, np.ndarray], int]:
    """Run ``scan`` without restarts over a no-drift stream; per variant, (batches × max_batches) with entry [t, L-1]
    the largest statistic over windows of at most L batches ending at batch t.
    Returns those arrays and the items scanned."""
    rows = {v: [] for v in VARIANTS}
    items = 0
    for counts, size, _ in batches:
        stats = _variant_stats(scan.update(counts, size), planted)
        items += size
        for v, s in stats.items():
            row = np.empty(scan.max_batches)
            row[:len(s)] = np.maximum.accumulate(s)
            row[len(s):] = row[len(s) - 1]  # longer windows do not exist yet: the longest one there is
            rows[v].append(row)
    return {v: np.array(r).reshape(-1, scan.max_batches) for v, r in rows.items()}, items


def alarms_with_restarts(upto: np.ndarray, c: float) -> np.ndarray:
    """Batches at which a scan with threshold ``c`` alarms when it restarts after every alarm.

    ``upto`` is a ``null_pass`` array. After a restart at batch r, the scan at batch t has only the windows of the
    t − r batches since, which are the same windows as without the restart: its statistic is ``upto[t, t-r-1]``,
    capped at the longest window."""
    hit = upto >= c
    n_t, n_l = upto.shape
    full = np.flatnonzero(hit[:, -1])  # where every window length is available, only these batches can alarm
    out = []
    last = -1  # the batch of the last restart (the scan starts empty, as after one)
    t = 0
    while t < n_t:
        since = t - last  # batches since the restart, this one included
        if since >= n_l:
            i = np.searchsorted(full, t)
            if i == len(full):
                break
            t = int(full[i])
        elif not hit[t, since - 1]:
            t += 1
            continue
        out.append(t)
        last = t
        t += 1
    return np.array(out, dtype=np.int64)


def calibrate(upto: np.ndarray, items: int, ert: float, *, iters: int = 60) -> dict[str, Any]:
    """The smallest threshold whose mean run length with restarts (items / alarms) on the null pass reaches
    ``ert``, by bisection, with the run length and alarm count it gives (the relative standard error of that run
    length is about 1 / sqrt(alarms), alarm counts being close to Poisson).

    The statistics take discrete values, so the run length jumps at each one and can overshoot the ERT; the
    threshold just below the jump (``threshold_below_nats``, whose run length falls short of the ERT) is returned
    too, so a delay can be bracketed between the two."""
    lo, hi = float(upto.min()) - 1.0, float(upto.max()) + 1e-9

    def run_length(c: float) -> float:
        n = len(alarms_with_restarts(upto, c))
        return items / n if n else math.inf

    if run_length(lo) >= ert:
        hi = lo
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if run_length(mid) >= ert:
            hi = mid
        else:
            lo = mid
    n = len(alarms_with_restarts(upto, hi))
    n_lo = len(alarms_with_restarts(upto, lo))
    return {"threshold_nats": hi, "alarms": n, "run_length_items": items / n if n else None,
            "threshold_below_nats": lo, "run_length_below_items": items / n_lo if n_lo else None,
            "null_items": items, "censored": n == 0}


# ---------------------------------------------------------------------------------------------------------------
# one scenario: calibrate on the profile's own null stream, then scan the planted stream


def scan_stream(scan: WindowScan, batches, planted: np.ndarray, thresholds: dict[str, tuple[str, float]],
                onset: int, horizon_end: int) -> dict[str, dict[str, Any]]:
    """Scan a stream without restarts (as the monitor runs a scenario). ``thresholds`` maps a detector's name to
    (variant, threshold); per detector: delay to the first alarm that names a planted concept (batch end − onset),
    the concepts named after onset, the alarms before it."""
    planted_set = set(int(j) for j in planted)
    res = {d: {"delay": None, "named": set(), "first_named": None, "pre_onset_alarms": 0} for d in thresholds}
    for counts, size, end in batches:
        llr = scan.update(counts, size)
        best = llr.max(axis=0)  # per concept, over windows
        joint = llr[:, planted].sum(axis=1).max()
        top = _top_sum(llr, len(planted)).max()
        for d, (v, c) in thresholds.items():
            if v == "scan":
                names = set(np.flatnonzero(best >= c).tolist())
            elif v == "top":  # names the k concepts with the largest ratios that have any evidence
                lead = np.argpartition(best, len(best) - len(planted))[len(best) - len(planted):]
                names = set(lead[best[lead] > 0].tolist()) if top >= c else set()
            elif v == "told":
                names = {j for j in planted_set if best[j] >= c}
            else:
                names = set(planted_set) if joint >= c else set()
            if not names:
                continue
            r = res[d]
            if end <= onset:
                r["pre_onset_alarms"] += 1
                continue
            if end > horizon_end:
                continue
            r["named"] |= names
            if r["first_named"] is None:
                r["first_named"] = sorted(names)
            if r["delay"] is None and names & planted_set:
                r["delay"] = end - onset
    for r in res.values():
        named = r.pop("named")
        r["precision"] = len(named & planted_set) / len(named) if named else None
        r["recall"] = len(named & planted_set) / len(planted_set)
        r["n_named"] = len(named)
        first = r["first_named"]
        r["first_alarm_precision"] = None if first is None else len(set(first) & planted_set) / len(first)
    return res


def _null_chunks(args, profile, seed: int):
    """The scenario profile's no-drift stream in chunks of 16 batches (generated in larger chunks only for speed:
    the rows are independent, so the chunking changes the draws but not their law)."""
    from monitor.synthetic.codes import synthetic_stream

    chunk = args.batch * 16
    return synthetic_stream(args.concepts, args.reference + args.oracle_null_items, seed=seed, mean_l0=args.mean_l0,
                            batch_size=chunk, profile=profile, stream="oracle-null")


def run_seed(args, seed: int, factor: float = 3.0) -> dict[str, Any]:
    """Calibrate the three variants on the null stream of scenario ``seed``'s profile, then scan its ×factor
    stream (the ``bench drift`` one: ``_planted_scenario`` / ``_synthetic_batches``)."""
    from workers.benchmarks.drift import _planted_scenario, _synthetic_batches

    profile, planted_set, shifts, onset = _planted_scenario(args, "prevalence", factor, seed)
    planted = np.array(sorted(planted_set), dtype=np.int64)
    t0 = time.perf_counter()

    def make_scan(ref_counts):
        rates = (profile.prevalence if args.oracle_rates == "true"
                 else reference_rates(ref_counts, args.reference))
        return WindowScan(rates, factor=factor, max_batches=args.oracle_max_window // args.batch)

    ref, null = split_reference(count_batches(_null_chunks(args, profile, 3000 + seed), args.batch),
                                args.reference, args.concepts)
    first = next(null)  # the reference counts are complete now
    scan = make_scan(ref)
    upto, items = null_pass(scan, itertools.chain([first], null), planted)
    cal = {v: calibrate(upto[v], items, args.ert) for v in VARIANTS}
    t_cal = time.perf_counter() - t0

    ref, stream = split_reference(
        count_batches(_synthetic_batches(args, onset + args.horizon, shifts, seed=2000 + seed, profile=profile),
                      args.batch), args.reference, args.concepts)
    first = next(stream)
    scan = make_scan(ref)
    detectors = {v: (v, cal[v]["threshold_nats"]) for v in VARIANTS}
    detectors |= {f"{v}_below": (v, cal[v]["threshold_below_nats"]) for v in VARIANTS}
    found = scan_stream(scan, itertools.chain([first], stream), planted, detectors, onset, onset + args.horizon)
    return {"seed": seed, "planted": planted.tolist(),
            "planted_rates": [round(float(profile.prevalence[j]), 5) for j in planted],
            "calibration": cal, "scenario": found, "calibrate_s": round(t_cal, 1),
            "wall_s": round(time.perf_counter() - t0, 1)}


def run_scenarios(args, seeds: int | None = None) -> dict[str, Any]:
    """The oracle's summary over seeds 0..``seeds``−1 (default ``args.seeds``): per variant the delays, their
    median (a missed detection counts as the horizon) with its 95 % order-statistic interval, the precision of
    names and the calibration; the shape ``bench drift --oracle`` adds under ``oracle``."""
    from workers.benchmarks import intervals

    _check(args)
    runs = [run_seed(args, s) for s in range(args.seeds if seeds is None else seeds)]
    out: dict[str, Any] = {"factor": 3.0, "window_items_max": args.oracle_max_window,
                           "window_items_step": args.batch, "rates": args.oracle_rates,
                           "null_items_per_seed": args.oracle_null_items, "ert_items": args.ert,
                           "delay_censored_at": args.horizon}
    for v in VARIANTS:
        delays = [r["scenario"][v]["delay"] for r in runs]
        prec = [r["scenario"][v]["precision"] for r in runs if r["scenario"][v]["precision"] is not None]
        first = [r["scenario"][v]["first_alarm_precision"] for r in runs
                 if r["scenario"][v]["first_alarm_precision"] is not None]
        cal = [r["calibration"][v] for r in runs]
        below = [r["scenario"][f"{v}_below"]["delay"] for r in runs]
        ci, coverage = intervals.median_ci([args.horizon if d is None else d for d in delays])
        out[v] = {
            "delays": delays,
            "delay_items_median": intervals.censored_median(delays, args.horizon),
            "delay_ci95": None if ci is None else list(ci),
            "delay_ci_coverage": round(coverage, 4),
            "detected_runs": sum(d is not None for d in delays),
            "precision": float(np.mean(prec)) if prec else None,
            "first_alarm_precision": float(np.mean(first)) if first else None,
            "recall": float(np.mean([r["scenario"][v]["recall"] for r in runs])),
            "pre_onset_alarms": int(sum(r["scenario"][v]["pre_onset_alarms"] for r in runs)),
            "threshold_nats": [round(c["threshold_nats"], 3) for c in cal],
            "null_run_length_items": [None if c["run_length_items"] is None else round(c["run_length_items"], 1)
                                      for c in cal],
            "null_alarms": [c["alarms"] for c in cal],
            # one step of the statistic lower: a run length short of the ERT (the delay's other bracket)
            "delays_step_below": below,
            "delay_items_median_step_below": intervals.censored_median(below, args.horizon),
            "null_run_length_step_below_items": [None if c["run_length_below_items"] is None
                                                 else round(c["run_length_below_items"], 1) for c in cal],
        }
    out["planted_rates"] = [r["planted_rates"] for r in runs]
    out["seconds_per_seed"] = [r["wall_s"] for r in runs]
    return out


def _ours(args) -> dict[str, Any]:
    """The production detector on the same streams: ``bench drift``'s own summary of its ×3 scenario."""
    from workers.benchmarks import drift

    parser = argparse.ArgumentParser()
    drift.add_arguments(parser)
    dargs = parser.parse_args([])
    for key in ("concepts", "mean_l0", "batch", "reference", "ert", "planted", "horizon"):
        setattr(dargs, key, getattr(args, key))
    dargs.target_seeds = args.seeds
    dargs.no_mmd = True  # no dense baseline here
    return drift._scenario(dargs, *drift.TARGET_SCENARIO, None)


# ---------------------------------------------------------------------------------------------------------------


def add_oracle_arguments(parser: argparse.ArgumentParser) -> None:
    """The oracle's own options (``bench drift`` adds these behind ``--oracle``)."""
    parser.add_argument("--oracle-max-window", type=int, default=1024,
                        help="longest window of the scan in items, a multiple of the batch (default 1024)")
    parser.add_argument("--oracle-null-items", type=int, default=500_000,
                        help="items of each seed's no-drift stream that set the thresholds (default 500000: about "
                             "100 alarms at ERT 5000)")
    parser.add_argument("--oracle-rates", choices=("reference", "true"), default="reference",
                        help="rates the ratios test against: the reference's estimate (default) or the generator's "
                             "true rates (an oracle on top of the oracle)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--concepts", type=int, default=10_000, help="synthetic concept vocabulary size (10000)")
    parser.add_argument("--mean-l0", type=float, default=30.0, help="mean active concepts per image (30)")
    parser.add_argument("--batch", type=int, default=64, help="items per batch; alarms come at batch ends (64)")
    parser.add_argument("--reference", type=int, default=20_000, help="items of the fixed reference (20000)")
    parser.add_argument("--ert", type=float, default=5000.0, help="expected items between false alarms (5000)")
    parser.add_argument("--seeds", type=int, default=10, help="scenario seeds 0..N-1, as in bench drift (10)")
    parser.add_argument("--planted", type=int, default=5, help="concepts shifted per scenario (5)")
    parser.add_argument("--horizon", type=int, default=5000, help="items observed after onset (5000)")
    parser.add_argument("--ours", action="store_true",
                        help="also run the production detector on the same streams (slower)")
    add_oracle_arguments(parser)


def _check(args) -> None:
    if args.oracle_max_window < args.batch or args.oracle_max_window % args.batch:
        raise ValueError(f"--oracle-max-window must be a positive multiple of --batch ({args.batch}), "
                         f"got {args.oracle_max_window}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "machine": _cpu_model(),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_1min": round(os.getloadavg()[0], 2),
        "n_concepts": args.concepts, "mean_l0": args.mean_l0, "batch_items": args.batch,
        "reference_images": args.reference, "planted": args.planted, "seeds": args.seeds,
    }
    out["oracle"] = run_scenarios(args)
    if args.ours:
        out["ours"] = _ours(args)
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    from workers.benchmarks.harness import module_main

    return module_main("workers.benchmarks.oracle", argv)


if __name__ == "__main__":
    sys.exit(main())
