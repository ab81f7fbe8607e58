"""Sequential per-concept drift tests, updated at every committed batch: a Shiryaev-Roberts e-detector per concept,
kind and direction, combined across concepts so that the expected number of items between false alarms of a stream
is at least the ERT the user set. The derivation, its assumptions and where they fail are in docs/drift.md (§4).

Per concept j and hypothesis h the detector keeps R = sum over candidate change points s of the likelihood ratio of
the items since s (null: the concept's predictive rate, or mean, learned from the reference and the stream before the
batch; alternative: that rate or mean moved by a factor from a small grid, so the alternative follows the null). Under
no drift R_n minus the number of items seen is a (super)martingale, so the first time any tested hypothesis has
R >= H x ERT comes after at least ERT items on average (H = the number tested).

Size: one class whose fast update, state layout, reading paths and calibration change together, checked as one
against the direct update of tests/monitor/drift/helpers.py; split, each half would need the other's internals.

>>> import numpy as np
>>> from monitor.drift.stats import WindowStats
>>> from monitor.synthetic.codes import synthetic_stream, Shift
>>> batches = list(synthetic_stream(50, 8000, [Shift(3, 6000, "prevalence", 4.0)], mean_l0=8, batch_size=250, seed=2))
>>> ref = WindowStats(50)
>>> for codes, items in batches[:20]:
...     ref.update(codes)
>>> test = SequentialConceptTest(50, DriftConfig(ert=10_000))
>>> test.set_reference(ref)
>>> fired = [int(j) for codes, _ in batches[20:] for h, j in zip(*np.nonzero(test.update(codes).fire))]
>>> sorted(set(fired))
[3]
"""

from __future__ import annotations

import math
import weakref
from typing import Any

import numpy as np

from monitor.drift.detectors import HYPOTHESES, DriftConfig
from monitor.drift.stats import WindowStats
from monitor.errors import ConfigError
from monitor.records import SparseCodes

__all__ = ["RATE_FACTORS", "FALL_FACTORS", "MEAN_SHIFTS", "REFRESH_FRACTION", "SequentialResult",
           "SequentialConceptTest"]

# Alternatives mixed with equal weights. Prevalence: the alternative follows the null's predictive rate p: an item
# lacks the concept with probability (1 - p)^e, i.e. rate 1 - (1 - p)^e (about e x p when rare, never above 1); rises
# use e in RATE_FACTORS, falls in FALL_FACTORS. Activation: a mean moved by MEAN_SHIFTS standard deviations.
# A mixture costs log(len) nats of threshold and adapts to the size of the shift. The far ends (x100, /32) are for
# a concept that appears from (almost) nothing or vanishes: a rise capped at x5 earned at most log 5 = 1.6 nats per
# present item when a new concept's true factor is 100 or more, so a batch of 64 holding it 5 times fell short of
# the threshold; at x100 such an item earns 4.6 nats, for log(5/4) = 0.22 nats more mixture cost on every rise.
RATE_FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0, 100.0)
FALL_FACTORS: tuple[float, ...] = (0.75, 0.5, 0.25, 0.125, 0.03125)
# States saved before the far ends were added hold the first four alternatives of each grid (a prefix of the
# grids above); load_state_dict starts the added ones at R = 0, which keeps every detector an e-process.
_LEGACY_NF = 4
MEAN_SHIFTS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
# Jeffreys prior on a concept's rate under the null: the reference counts update it.
_PRIOR = 0.5
_CAP_NATS = 2.0
# calibrate() aims the no-drift run length at this multiple of ERT. The simulation's ratio has a relative standard
# error of ~9 % (120 alarms), and it is not free of the threshold: the real run length moves only as about the
# 0.5-0.6th power of the aim, and it differs by stream. Measured with the Good-Turing rate for unseen concepts
# (docs/benchmarks.md, "Issue 15, fifth round"), aim 1.4 gave 1.35 x ERT (synthetic) and 1.71 (MiniLM captions) at
# batch 64 and 1.48 / 2.07 at batch 100; 1.2 is the aim that keeps both streams inside [1, 2] at both batch sizes.
CALIBRATION_TARGET = 1.2
# ... at ERT' = this many batches. The ratio run length / ERT' is an overshoot constant only once the threshold is
# large next to one batch's jump, which a concept seen twice in a batch of 64 against the x100 rise is not: measured on
# the synthetic reference at batch 64 it fell from 18 (2 batches) to 10 (8) and 6 (32), so a threshold set from
# 2 batches was too low. 8 batches is what the simulation's cost allows (a few seconds once per reference).
SIM_BATCHES = 8.0

_NF, _NK = len(RATE_FACTORS), len(MEAN_SHIFTS)
_SHIFTS = np.array(MEAN_SHIFTS)[:, None]
_EXPONENTS = np.array(RATE_FACTORS + FALL_FACTORS)[:, None]  # (8, 1): e of each prevalence row, rises first
# Relative slack of the "can anything fire" screen, far above the rounding of a sum of four terms and a log.
_SCREEN_SLACK = 1e-9
_FACTOR_CACHE = 4  # (batch size, cap) pairs whose absent-concept factors are kept
# Factors are floored at exp(-700) ~ 1e-304: R enters the next batch only through R + m, so R = 1e-304 and R = 0 are
# the same detector, and the floor keeps the arithmetic off subnormal numbers (10-100x slower per element).
_FLOOR_NATS = -700.0
# A batch holding more than 1 / _DENSE_SHARE of the concepts is updated with the full formulas on every concept:
# gathering and scattering most columns costs more than the absent-concept shortcut saves.
_DENSE_SHARE = 3
# The null (predictive rate, activation mean and variance) is refreshed from everything seen once the items since
# its last refresh reach this fraction of the items it was built from (reference and stream), not at every batch:
# it stays a function of the past only (what the martingale argument needs), it moves by a few percent at most
# between refreshes (a small reference is refreshed at every batch, a 20,000-item one every 1,000 items), and
# between refreshes a concept absent from a batch has a likelihood ratio that depends only on the batch size,
# computed once per size -- so a batch costs exact work only for the concepts it holds.
REFRESH_FRACTION = 0.05
# Which code runs a batch's pass over the detector blocks: "numba" (the compiled kernels of
# monitor/drift/kernels.py), "numpy" (the numpy passes below), or "auto" (numba when it imports). Both give the same
# values; the compiled pass reads and writes each block once where numpy makes five or six passes
# (docs/drift.md, §4 "Cost").
BACKEND = "auto"
_KERNELS: list = []  # monitor.drift.kernels once loaded (imported on first use: numba takes ~0.3 s to import)


def _fused():
    """monitor.drift.kernels when ``BACKEND`` asks for it (and, for "auto", numba imports), else None."""
    if BACKEND == "numpy":
        return None
    if BACKEND not in ("auto", "numba"):
        raise ConfigError(f"sequential BACKEND is {BACKEND!r}; expected 'auto', 'numba' or 'numpy'")
    if not _KERNELS:
        from monitor.drift import kernels

        _KERNELS.append(kernels)
    kernels = _KERNELS[0]
    if kernels.AVAILABLE:
        return kernels
    if BACKEND == "numba":
        raise ConfigError("sequential BACKEND is 'numba', but numba does not import: pip install numba, or set "
                          "'auto' or 'numpy'")
    return None


def _config_dict(cfg: DriftConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


def _widen_legacy(r: np.ndarray) -> np.ndarray:
    """R of a saved state in today's row layout: a state from the four-alternative grids gets zero rows for the
    alternatives added since (a mixture component that starts later is still an e-process); any other row count is
    refused."""
    want = 2 * _NF + 2 * _NK
    if len(r) == want:
        return r
    if len(r) == 2 * _LEGACY_NF + 2 * _NK:
        out = np.zeros((want, r.shape[1]))
        out[:_LEGACY_NF] = r[:_LEGACY_NF]
        out[_NF:_NF + _LEGACY_NF] = r[_LEGACY_NF:2 * _LEGACY_NF]
        out[2 * _NF:] = r[2 * _LEGACY_NF:]
        return out
    raise ValueError(f"state: R has {len(r)} rows, expected {want} ({_NF} rise and {_NF} fall alternatives, "
                     f"2 x {_NK} activation shifts) or the older {2 * _LEGACY_NF + 2 * _NK}")


def _unseen_rate(presence: np.ndarray, n_items: int) -> float:
    """The per-item rate calibrate() gives each concept its reference never saw: the Good-Turing estimate of the
    share of concept occurrences that fall on unseen concepts, (f1 + 1) / occurrences with f1 the concepts seen in
    exactly one item (plus one, so a reference without singletons still leaves some room), times the occurrences
    per item: (f1 + 1) / n unseen occurrences per item, shared equally among the unseen concepts. The posterior of
    each unseen concept alone (Beta(1/2, n + 1/2), mean 1/(2n + 2)) is the right law for one concept taken on its
    own, but summed over a vocabulary that is mostly foreign to the stream (87 % of the MiniLM concepts never occur
    in the caption benchmark's reference) it predicted ~0.4 never-seen concepts per caption where there are none,
    and so false alarms the real stream never raises: the calibration then spent too little (caption null 2.3 x
    ERT).
    """
    presence = np.asarray(presence, dtype=np.float64)
    unseen = int((presence <= 0).sum())
    occurrences = float(presence.sum())
    if not unseen or occurrences <= 0 or n_items <= 0:
        return 0.0
    f1 = float((presence == 1).sum())
    return min((f1 + 1.0) / n_items / unseen, 1.0)


class _SimStream:
    """The no-drift batches of calibrate(): presence counts, weight sums and sums of squares of the simulated
    detectors' concepts (their internal order), one batch of ``m`` items per call."""

    def __init__(self, sim: "SequentialConceptTest", state: dict, rows: SparseCodes | None, m: int,
                 rng: np.random.Generator, unseen_rate: float = 0.0) -> None:
        self.m, self.rng, self.ct = m, rng, sim._ct
        perm = sim._perm
        alpha = np.asarray(state["alpha"], dtype=np.float64)
        n_ref = alpha + np.asarray(state["beta"], dtype=np.float64) - 2 * _PRIOR
        x = alpha - _PRIOR  # reference presence counts
        mean = np.where(x > 0, state["wsum"] / np.maximum(x, 1.0), 0.0)
        mean = np.where(mean > 0, mean, 0.1)  # a stand-in weight where the reference never saw the concept
        var = np.maximum(state["wsq"] / np.maximum(x, 1.0) - mean * mean, 1e-12 * mean * mean)
        var = np.where(x > 0, var, mean * mean)
        # gamma weights (shape, scale) and second moment, in internal order
        self.shape, self.scale, self.second = ((mean * mean / var)[perm], (var / mean)[perm], (var + mean * mean)[perm])
        self.rows = rows
        if rows is None:
            self.rate = rng.beta(alpha, np.maximum(n_ref - x, 0.0) + _PRIOR)[perm]
            self.extra = np.arange(self.ct)
            return
        # only the simulated concepts' entries of the rows, as internal positions
        pos = np.full(sim.n_concepts, -1, dtype=np.int64)
        pos[sim._concepts] = np.arange(self.ct)
        col = pos[rows.indices]
        hit = col >= 0
        self.n_rows = len(rows)
        row_of = np.repeat(np.arange(self.n_rows), np.diff(rows.indptr))[hit]
        self.col, self.val = col[hit], rows.values[hit].astype(np.float64)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(row_of, minlength=self.n_rows))])
        self.cdf = np.cumsum(rng.dirichlet(np.ones(self.n_rows)))
        self.cdf /= self.cdf[-1]
        # concepts the rows never hold (x = 0) are drawn independently, each at ``unseen_rate`` (the reference's
        # Good-Turing missing mass shared among them; see calibrate)
        self.extra = np.flatnonzero((x <= 0)[perm])
        self.rate = np.full(len(self.extra), float(unseen_rate))

    def __call__(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        m, rng, ct = self.m, self.rng, self.ct
        presence, s, sq = np.zeros(ct), np.zeros(ct), np.zeros(ct)
        if self.rows is not None:
            picked = np.searchsorted(self.cdf, rng.random(m), side="right").clip(max=self.n_rows - 1)
            lo, hi = self.indptr[picked], self.indptr[picked + 1]
            n = hi - lo
            at = np.repeat(lo - np.cumsum(n) + n, n) + np.arange(n.sum())
            c, v = self.col[at], self.val[at]
            presence += np.bincount(c, minlength=ct)
            s += np.bincount(c, weights=v, minlength=ct)
            sq += np.bincount(c, weights=v * v, minlength=ct)
        if len(self.extra):
            k = rng.binomial(m, self.rate).astype(np.float64)
            on = np.flatnonzero(k)
            j = self.extra[on]
            presence[j] += k[on]
            w = rng.gamma(k[on] * self.shape[j], self.scale[j])
            s[j] += w
            sq[j] += k[on] * self.second[j]
        return presence, s, sq


class SequentialResult:
    """What one batch left behind; (4, n_concepts) arrays in ``HYPOTHESES`` order.

    ``any_fire`` is known at once; ``evidence`` (log R, floored at 0) and ``fire`` (evidence >= threshold, before
    the min_count / floor gates of the alarm book) are built on first read, because most batches fire nothing and
    nobody reads them. A result still alive when its test moves on is filled in first, so it never changes.
    """

    __slots__ = ("any_fire", "tested", "threshold", "n_hypotheses", "_test", "_evidence", "_fire", "__weakref__")

    def __init__(self, test: "SequentialConceptTest", any_fire: bool) -> None:
        self._test: SequentialConceptTest | None = test
        self.any_fire = bool(any_fire)
        self.tested = test.tested
        self.threshold = test.threshold
        self.n_hypotheses = test.n_hypotheses
        self._evidence: np.ndarray | None = None
        self._fire: np.ndarray | None = None

    @property
    def evidence(self) -> np.ndarray:
        if self._evidence is None:
            self._evidence = self._test.evidence
        return self._evidence

    @property
    def fire(self) -> np.ndarray:
        if self._fire is None:
            if self.any_fire:
                self._fire = self.tested & (self.evidence >= self.threshold)
            else:
                self._fire = np.zeros(self.tested.shape, dtype=bool)
        return self._fire

    def _freeze(self) -> None:
        self.evidence, self.fire  # noqa: B018 - computed now, while the test still holds this batch's state
        self._test = None


class SequentialConceptTest:
    """Shiryaev-Roberts e-detectors of every concept's prevalence and mean activation against a reference.

    ``set_reference(stats)`` fixes the null (a concept is tested when the reference saw it in at least
    ``min_support`` images); ``update(codes)`` folds one committed batch in and returns a :class:`SequentialResult`.

    Cost per batch. The null is refreshed in steps (``REFRESH_FRACTION``), and between refreshes a concept absent
    from a batch has a likelihood ratio that depends only on the batch size: it is computed once per refresh and
    size, and a batch multiplies every tested detector by it; only the concepts the batch holds take the exact
    formulas. Concepts are stored with the supported ones first, so the fall and activation detectors are
    contiguous slices of only the concepts they test; the evidence (a log per concept and kind) is computed only
    when read, and whether anything fires is decided from the largest R of each detector row first. docs/drift.md
    (§4, "Cost") gives the reasoning; tests/monitor/drift/test_sequential.py checks the update against the direct
    one on random streams.
    """

    def __init__(self, n_concepts: int, config: DriftConfig | None = None) -> None:
        self.n_concepts = int(n_concepts)
        self.config = config or DriftConfig()
        self.ready = False
        self.kinds = tuple(k for k in ("prevalence", "activation") if k in self.config.kinds)
        self._prev = "prevalence" in self.kinds
        self._act = "activation" in self.kinds
        self.n_items = 0  # items tested since the reference was set
        self.spend = 0.0  # nats taken off log(H x ERT) by calibrate()
        self.calibration: dict[str, float] = {}
        self._live: weakref.ref | None = None  # the last result handed out, filled in before the state moves
        self._scratch: np.ndarray | None = None  # the compiled batch sums' zeroed (concepts, 4) accumulators
        self._evidence: np.ndarray | None = None
        empty = np.zeros(0)
        self._install(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), empty, 0.0, 0, empty, empty, empty,
                      np.zeros((16, 0)), np.zeros((4, self.n_concepts), dtype=bool))

    # -- layout -----------------------------------------------------------------------------------------------------
    def _install(self, idx, supported, alpha, total, n, wsum, wsq, wmax, r, tested, null=None, since=0) -> None:
        """Take a state given in the order of ``idx`` (the layout of state_dict) and store it with the supported
        concepts first: position i of the internal arrays holds concept ``idx[perm[i]]``. ``null`` is the snapshot
        (alpha, total, n, wsum, wsq) the null was last refreshed from, ``since`` the items after it; without one
        the null is refreshed from the state now."""
        self.idx = np.asarray(idx, dtype=np.int64)
        supported = np.asarray(supported, dtype=bool)
        perm = np.concatenate([np.flatnonzero(supported), np.flatnonzero(~supported)])
        self._perm = perm
        self._ns = ns = int(supported.sum())
        self._ct = ct = len(self.idx)
        self._concepts = self.idx[perm]
        self._pos = np.full(self.n_concepts, -1, dtype=np.int64)
        self._pos[self._concepts] = np.arange(ct)
        self._all = ct == self.n_concepts
        self._alpha = np.array(alpha, dtype=np.float64)[perm]
        self._total = float(total)  # alpha + beta, the same for every concept: each item adds 1 to one of them
        self._n = int(n)
        self._wsum = np.array(wsum, dtype=np.float64)[perm]
        self._wsq = np.array(wsq, dtype=np.float64)[perm]
        self._wmax = np.array(wmax, dtype=np.float64)[perm]
        r = np.asarray(r, dtype=np.float64)
        self._r_up = np.ascontiguousarray(r[:_NF][:, perm])  # prevalence up, every tested concept
        self._r_dn = np.ascontiguousarray(r[_NF:2 * _NF][:, perm[:ns]])  # prevalence down, supported concepts
        act = r[2 * _NF:][:, perm[:ns]]  # activation, supported concepts: (direction, shift, concept)
        self._r_act = np.ascontiguousarray(act).reshape(2, _NK, ns)
        self.tested = np.asarray(tested, dtype=bool)
        self._n_hyp = int(self.tested.sum())
        self._evidence = None
        if null is None:
            self._refresh()
        else:
            a, t, nn, ws, wq = null
            self._refresh((np.array(a, dtype=np.float64)[perm], float(t), int(nn),
                           np.array(ws, dtype=np.float64)[perm], np.array(wq, dtype=np.float64)[perm]))
        self._since = int(since)
        self._rowmax = [blk.max(axis=1) if blk.size else np.zeros(len(blk)) for blk in self._blocks()]

    def _dense_r(self) -> np.ndarray:
        """R as (hypothesis rows x alternatives, tested concepts) in the order of ``idx``; zeros where untested."""
        perm, ns = self._perm, self._ns
        r = np.zeros((2 * _NF + 2 * _NK, self._ct))
        r[:_NF, perm] = self._r_up
        r[_NF:2 * _NF, perm[:ns]] = self._r_dn
        r[2 * _NF:, perm[:ns]] = self._r_act.reshape(2 * _NK, ns)
        return r

    def _dense(self, internal: np.ndarray) -> np.ndarray:
        out = np.empty_like(internal)
        out[..., self._perm] = internal
        return out

    def _touch(self) -> None:
        """The state is about to move: fill in the result handed out last (if anyone still holds it) and drop the
        cached evidence."""
        live = self._live() if self._live is not None else None
        if live is not None and live._test is self:
            live._freeze()
        self._live = None
        self._evidence = None

    # -- reference ------------------------------------------------------------------------------------------------
    def set_reference(self, reference: WindowStats) -> None:
        """Use ``reference`` as the null from now on. Accumulated evidence is kept (a trailing reference moves
        under running detectors); a first reference starts every detector at R = 0."""
        cfg = self.config
        r = reference.concepts
        if r.n_concepts != self.n_concepts:
            raise ValueError(f"reference has {r.n_concepts} concepts, the test {self.n_concepts}")
        self._touch()
        # every concept can rise (one the reference never saw is the clearest drift there is); falling, and the
        # mean activation, need a reference that saw the concept in at least min_support images
        idx = np.arange(self.n_concepts) if r.n_images else np.zeros(0, dtype=np.int64)
        supported = r.presence[idx] >= cfg.min_support
        n_r = max(int(r.n_images), 1)
        x = r.presence[idx].astype(np.float64)
        alpha = x + _PRIOR
        beta = (n_r - x) + _PRIOR
        r_new = np.zeros((2 * _NF + 2 * _NK, len(idx)))
        if self.ready and self._ct:
            # keep the evidence of concepts tested before and after the change
            common, a, b = np.intersect1d(self.idx, idx, return_indices=True)
            r_new[:, b] = self._dense_r()[:, a]
        tested = np.zeros((4, self.n_concepts), dtype=bool)
        for h, (kind, direction) in enumerate(HYPOTHESES):
            if kind in self.kinds:
                tested[h, idx] = True if (kind, direction) == ("prevalence", "up") else supported
        # a detector that is no longer tested restarts from R = 0 (the direct update zeroes it at the next batch)
        r_new *= np.repeat(tested[:, idx], [_NF, _NF, _NK, _NK], axis=0)
        self._install(idx, supported, alpha, float(n_r) + 2 * _PRIOR, n_r,
                      r.weight_sum[idx], r.weight_sq_sum[idx], r.weight_max[idx], r_new, tested)
        self.ready = True

    @property
    def n_hypotheses(self) -> int:
        return self._n_hyp

    @property
    def threshold(self) -> float:
        """Evidence (log R) at which a hypothesis fires: log(H x ERT), less the calibrated overshoot ``spend``."""
        return math.log(self.config.ert * max(self._n_hyp, 1)) - self.spend

    # -- spending the budget ----------------------------------------------------------------------------------------
    def calibrate(self, batch_size: int, *, rows: SparseCodes | list[SparseCodes] | None = None,
                  target: float = CALIBRATION_TARGET,
                  seed: int = 0, min_alarms: int = 120, max_batches: int = 12_000, max_concepts: int = 1000,
                  sim_batches: float = SIM_BATCHES) -> float:
        """Measure how far beyond ERT the bound log(H x ERT) puts the run length on this reference, and lower the
        threshold by that factor (divided by ``target``, never raised): sets and returns ``spend`` (nats).

        The detectors run on a simulated no-drift stream at a small ERT' (``sim_batches`` batches), where false
        alarms are frequent; the ratio run length / ERT' is the overshoot of the crossings, carried over to the real
        ERT. The stream is drawn from the reference. With its ``rows`` (the reference's own items, as the monitor
        keeps them while a fixed reference fills; one SparseCodes or a list of batches) it resamples whole items, so
        concepts that co-occur in the data co-occur in the simulation (an independent simulation predicted caption
        run lengths ~2x too short); the items are drawn with Bayesian-bootstrap weights (Dirichlet(1, ..., 1) over
        the rows) so that each concept's rate varies like its uncertainty given the reference, and the concepts the
        reference never saw share its Good-Turing missing mass (``_unseen_rate``), each appearing independently at
        that rate. Without rows, each tested concept is active independently
        with a rate drawn from its posterior Beta(x + 1/2, n - x + 1/2), weights from a gamma law with its
        reference mean and variance.
        """
        if isinstance(rows, list):  # the batches a monitor kept while its reference filled: taken, and the list
            rows, kept = (SparseCodes.concat(rows) if rows else None), rows  # emptied so the monitor holds none
            kept.clear()
        if not self.ready or not len(self.idx):
            return 0.0
        m = max(int(batch_size), 1)
        rng = np.random.default_rng(seed)
        # a random subset of the tested concepts is enough: the ratio is the mean over hypotheses of their overshoot
        keep = np.sort(rng.choice(len(self.idx), size=min(len(self.idx), max_concepts), replace=False))
        ert_sim = float(sim_batches) * m
        sim = SequentialConceptTest(self.n_concepts, DriftConfig(**{**_config_dict(self.config), "ert": ert_sim}))
        state = self.state_dict()
        for key in ("idx", "alpha", "beta", "wsum", "wsq", "wmax", "null_alpha", "null_wsum", "null_wsq"):
            state[key] = state[key][keep]
        for key in ("r", "on"):
            state[key] = state[key][:, keep]
        state["tested"] = np.zeros_like(state["tested"])
        state["tested"][:, state["idx"]] = self.tested[:, self.idx[keep]]
        state["r"] = np.zeros_like(state["r"])
        state["spend"] = 0.0
        sim.load_state_dict(state)
        draw = _SimStream(sim, state, rows if rows is not None and len(rows) else None, m, rng,
                          _unseen_rate(self._alpha - _PRIOR, self._n))
        limit = math.exp(sim.threshold)
        alarms, items = 0, 0
        by_kind = [0, 0, 0, 0]
        for _ in range(max_batches):
            sim._step(m, *draw())
            items += m
            tops = sim._top_mixtures()
            if max(tops) >= limit:
                alarms += 1
                by_kind[int(np.argmax(tops))] += 1
                sim.reset()
                if alarms >= min_alarms:
                    break
        ratio = (items / max(alarms, 1)) / ert_sim
        self.spend = math.log(max(ratio / target, 1.0))
        self.calibration = {"ert_sim": ert_sim, "items": items, "alarms": alarms, "ratio": ratio,
                            "batch_size": m, "concepts": len(keep), "by_hypothesis": by_kind,
                            "resampled_rows": 0 if draw.rows is None else draw.n_rows}
        return self.spend

    def _blocks(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """R of the four hypotheses, (alternatives, concepts) each, in ``HYPOTHESES`` order."""
        return self._r_up, self._r_dn, self._r_act[0], self._r_act[1]

    def _top_mixtures(self) -> tuple[float, ...]:
        """The largest mixture R (mean over alternatives) of each hypothesis."""
        return tuple(float(blk.sum(axis=0).max()) / len(blk) if blk.size else 0.0 for blk in self._blocks())

    # -- one batch ------------------------------------------------------------------------------------------------
    def update(self, codes: SparseCodes) -> SequentialResult:
        """Fold one committed batch in (every row of ``codes``); returns the evidence after it."""
        if not self.ready:
            raise ValueError("set_reference must be called before update")
        m = len(codes)
        if m == 0 or not self._ct:
            return self._result()
        pos = self._pos.take(codes.indices)  # internal position of each nonzero's concept
        w = codes.values.astype(np.float64)
        fused = _fused()
        if fused is not None:  # the bincounts below in one compiled loop, the same sums in the same order
            if self._scratch is None or len(self._scratch) != self._ct:
                self._scratch = np.zeros((self._ct, 4))
            where, k, s, sq, s_up = fused.batch_sums(pos, w, self._wmax, self._scratch)
            self._step_sparse(m, where, k, s, sq, s_up)
            return self._result()
        if not self._all:
            keep = pos >= 0
            pos, w = pos[keep], w[keep]
        # only the concepts of the batch: their positions (sorted), presence counts and sums (a bincount over the
        # tested concepts is cheaper than sorting the batch's indices)
        ct = self._ct
        k = np.bincount(pos, minlength=ct)
        where = np.flatnonzero(k > 0)  # on a boolean array: several times faster than on the counts
        k = k[where]
        s = np.bincount(pos, weights=w, minlength=ct)[where]
        sq = np.bincount(pos, weights=w * w, minlength=ct)[where]
        # the up test sees each weight clipped at the reference maximum (its bound needs a range)
        cut = self._wmax[pos]
        over = w > cut
        s_up = s
        if over.any():
            s_up = s - np.bincount(pos[over], weights=w[over] - cut[over], minlength=ct)[where]
        self._step_sparse(m, where, k.astype(np.float64), s, sq, s_up)
        return self._result()

    def _step(self, m: int, presence: np.ndarray, s: np.ndarray, sq: np.ndarray, s_up: np.ndarray | None = None
              ) -> None:
        """``_step_sparse`` given dense arrays over the tested concepts in internal order (the calibration's)."""
        where = np.flatnonzero(presence)
        self._step_sparse(m, where, presence[where], s[where], sq[where], (s if s_up is None else s_up)[where])

    def _step_sparse(self, m: int, where: np.ndarray, k: np.ndarray, s: np.ndarray, sq: np.ndarray,
                     s_up: np.ndarray) -> None:
        """One batch of ``m`` items given the internal positions ``where`` (sorted, distinct) of the concepts it
        holds, and for each its presence count, weight sum, sum of squares and weight sum clipped at the reference
        maximum (trusted inputs).

        Shiryaev-Roberts over batches: R <- (R + m) x LR, i.e. a new candidate change point per item of the batch.
        R is kept on the linear scale and capped at exp(threshold + 2): the cap sits above the threshold, so it
        never changes when a detector first crosses it, and it lets a long-firing detector come down soon after
        the shift ends. The log-LR is capped there too, before exp, and floored at -700 nats.
        """
        self._touch()
        if self._since >= REFRESH_FRACTION * self._null[2]:
            self._refresh()
        cap = self.threshold + _CAP_NATS
        ecap = math.exp(cap)
        if self._prev:
            self._prevalence_step(m, where, k, cap, ecap)
            self._alpha[where] += k
            self._total += m
        if self._act and self._ns:
            self._activation_step(m, where, s, s_up, cap, ecap)
        self._n += m
        self._wsum[where] += s
        self._wsq[where] += sq
        self.n_items += m
        self._since += m

    def _refresh(self, snapshot: tuple | None = None) -> None:
        """Fix the null from ``snapshot`` (alpha, total, n, wsum, wsq in internal order; default: the counts now):
        the predictive rate and its log-odds pieces, the activation mean, variance, ranges and shift sizes, and
        the per-item log-LR of a concept absent from a batch, a[h] (the batch's log-LR is then m x a[h])."""
        if snapshot is None:
            snapshot = (self._alpha.copy(), self._total, self._n, self._wsum.copy(), self._wsq.copy())
        self._null = snapshot
        alpha, total, n, wsum, wsq = snapshot
        ns = self._ns
        rate = alpha / total if total > 0 else np.zeros_like(alpha)
        # The (alternatives, concepts) arrays below are computed in place, one allocation each: every fresh
        # temporary of this size costs its page faults, which were most of a refresh (same operations, same values).
        with np.errstate(divide="ignore"):
            lq = np.log1p(-rate)
            # k log(p1 / p) per present item, p1 = 1 - (1 - p)^e: (alternatives, concepts), fall rows used on [:ns]
            lo = _EXPONENTS * lq
            np.expm1(lo, out=lo)
            np.negative(lo, out=lo)
            np.log(lo, out=lo)
            lo -= np.log(rate)
            self._log_odds = lo
        self._a_prev = (_EXPONENTS - 1.0) * lq  # (alternatives, concepts): per absent item
        self._lq = lq
        mu = wsum[:ns] / max(n, 1)
        var = np.maximum(wsq[:ns] / max(n, 1) - mu * mu, 1e-300)
        lam = _SHIFTS / np.sqrt(var)  # (shift, concept)
        b = np.stack([np.maximum(self._wmax[:ns] - mu, 1e-12), np.maximum(mu, 1e-12)])  # one-sided ranges
        u = lam[None] * b[:, None]  # (direction, shift, concept)
        np.minimum(u, 700.0, out=u)
        v = var / (b * b)
        # Bennett's m var/b^2 (e^{lam b} - 1 - lam b), per item: v (e^u - 1) - v u
        psi = np.expm1(u)
        psi *= v[:, None]
        u *= v[:, None]
        psi -= u
        self._mu, self._lam, self._psi = mu, lam, psi
        # absent: S = 0, so the deviation is -m mu (up) or +m mu (down)
        a_act = np.empty((2,) + lam.shape)
        np.negative(lam, out=a_act[0])
        a_act[0] *= mu
        a_act[0] -= psi[0]
        np.multiply(lam, mu, out=a_act[1])
        a_act[1] -= psi[1]
        self._a_act = a_act
        self._since = 0
        self._factors: dict[tuple[int, float], tuple] = {}

    def _absent_factors(self, m: int, cap: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """exp(clip(m a, -700, cap)) of every detector for a concept absent from a batch of m items: prevalence up
        (4, concepts), down (4, supported), activation (2, 4, supported); cached per batch size and cap."""
        got = self._factors.get((m, cap))
        if got is None:
            # only the entries a step reads, each array computed in place (one allocation each, see _refresh)
            got = (m * self._a_prev[:_NF], m * self._a_prev[_NF:, :self._ns], m * self._a_act)
            for f in got:
                np.clip(f, _FLOOR_NATS, cap, out=f)
                np.exp(f, out=f)
            if len(self._factors) >= _FACTOR_CACHE:
                self._factors.pop(next(iter(self._factors)))
            self._factors[(m, cap)] = got
        return got

    def _prevalence_step(self, m: int, where: np.ndarray, k: np.ndarray, cap: float, ecap: float) -> None:
        """log LR = k log(p1 / p) + (m - k) (e - 1) log(1 - p), p the null's predictive rate and p1 = 1 - (1 - p)^e
        the alternative that follows it. Every detector takes the absent-concept factor; the concepts of the batch
        then get theirs from the R they had before it."""
        ns = self._ns
        if len(where) * _DENSE_SHARE > self._ct:
            # most concepts are in the batch (large batches): the full formula everywhere, no gather / scatter
            kd = np.zeros(self._ct)
            kd[where] = k
            for h, (r, rows, c) in enumerate(((self._r_up, slice(0, _NF), self._ct), (self._r_dn, slice(_NF, None), ns))):
                llr = self._log_odds[rows, :c] * kd[:c]
                llr += (m - kd[:c]) * self._a_prev[rows, :c]
                np.clip(llr, _FLOOR_NATS, cap, out=llr)
                r += m
                r *= np.exp(llr, out=llr)
                self._rowmax[h] = self._capped(r, ecap)
            return
        f_up, f_dn, _ = self._absent_factors(m, cap)
        n_sup = int(np.searchsorted(where, ns))  # supported concepts come first
        fused = _fused()
        if fused is not None:  # compiled passes, the same values (monitor/drift/kernels.py); exp stays in numpy
            llr = np.empty((2 * _NF, len(where)))
            fused.prevalence_llr(self._log_odds, self._a_prev, where, k, float(m), _FLOOR_NATS, cap, llr)
            np.exp(llr, out=llr)
            fused.block_step(self._r_up, f_up, where, llr[:_NF], float(m), ecap, self._rowmax[0])
            fused.block_step(self._r_dn, f_dn, where[:n_sup], llr[_NF:, :n_sup], float(m), ecap, self._rowmax[1])
            return
        llr = np.take(self._log_odds, where, axis=1)
        llr *= k
        llr += (m - k) * np.take(self._a_prev, where, axis=1)
        np.clip(llr, _FLOOR_NATS, cap, out=llr)
        np.exp(llr, out=llr)
        for h, (r, f, rows, cols) in enumerate(((self._r_up, f_up, slice(0, _NF), where),
                                                (self._r_dn, f_dn, slice(_NF, 2 * _NF), where[:n_sup]))):
            r += m
            before = np.take(r, cols, axis=1)
            r *= f
            before *= llr[rows, :len(cols)]
            r[:, cols] = before
            self._rowmax[h] = self._capped(r, ecap)

    @staticmethod
    def _capped(r: np.ndarray, ecap: float) -> np.ndarray:
        """Cap a block of R at exp(cap); returns its row maxima."""
        top = r.max(axis=1) if r.size else np.zeros(len(r))
        if top.max(initial=0.0) > ecap:
            np.minimum(r, ecap, out=r)
            top = np.minimum(top, ecap)
        return top

    def _activation_step(self, m: int, where: np.ndarray, s: np.ndarray, s_up: np.ndarray, cap: float,
                         ecap: float) -> None:
        """log of Bennett supermartingale factors for the mean weight, up and down, one row per shift size:
        lam (S - m mu) - m var/b^2 (e^{lam b} - 1 - lam b), lam = shift / sd, b the one-sided range (the null's
        moments as of its last refresh). The up test sees weights clipped at the reference maximum (``s_up``),
        which only lowers their mean. Concepts absent from the batch take the cached factor."""
        n_sup = int(np.searchsorted(where, self._ns))
        if n_sup * _DENSE_SHARE > self._ns:
            # most supported concepts are in the batch: the full formula everywhere (S = 0 for the others)
            sd, sud = np.zeros(self._ns), np.zeros(self._ns)
            sd[where[:n_sup]], sud[where[:n_sup]] = s[:n_sup], s_up[:n_sup]
            for d, dev in enumerate((sud - m * self._mu, m * self._mu - sd)):
                r = self._r_act[d]
                llr = self._lam * dev
                llr -= m * self._psi[d]
                np.clip(llr, _FLOOR_NATS, cap, out=llr)
                r += m
                r *= np.exp(llr, out=llr)
                self._rowmax[2 + d] = self._capped(r, ecap)
            return
        f_act = self._absent_factors(m, cap)[2]
        cols = where[:n_sup]
        fused = _fused()
        if fused is not None:  # the held concepts' log factors and one compiled pass per block (kernels.py)
            llr = np.empty((2, _NK, n_sup))
            fused.activation_llr(self._lam, self._mu, self._psi, cols, s[:n_sup], s_up[:n_sup], float(m),
                                 _FLOOR_NATS, cap, llr)
            np.exp(llr, out=llr)
            for d in range(2):
                fused.block_step(self._r_act[d], f_act[d], cols, llr[d], float(m), ecap, self._rowmax[2 + d])
            return
        mu = self._mu[cols]
        lam = self._lam[:, cols]
        devs = (s_up[:n_sup] - m * mu, m * mu - s[:n_sup])
        for d in range(2):
            r = self._r_act[d]
            r += m
            before = np.take(r, cols, axis=1)
            r *= f_act[d]
            llr = lam * devs[d]
            llr -= m * self._psi[d][:, cols]
            np.clip(llr, _FLOOR_NATS, cap, out=llr)
            before *= np.exp(llr, out=llr)
            r[:, cols] = before
            self._rowmax[2 + d] = self._capped(r, ecap)

    # -- reading ------------------------------------------------------------------------------------------------
    @property
    def evidence(self) -> np.ndarray:
        """log of each hypothesis's mixture R, floored at 0: (4, n_concepts) in ``HYPOTHESES`` order."""
        if self._evidence is None:
            ev = np.zeros((4, self.n_concepts))
            if self._ct:
                cols = (self._concepts, self._concepts[:self._ns])
                on = (self._prev, self._prev, self._act, self._act)
                with np.errstate(divide="ignore"):
                    for h, blk in enumerate(self._blocks()):
                        if on[h] and blk.size:
                            ev[h, cols[h > 0]] = np.maximum(np.log(blk.sum(axis=0) / len(blk)), 0.0)
            self._evidence = ev
        return self._evidence

    def evidence_at(self, h: np.ndarray, j: np.ndarray) -> np.ndarray:
        """``evidence[h, j]`` of a few entries without computing the others (the same arithmetic)."""
        if self._evidence is not None:
            return self._evidence[h, j]
        h, j = np.asarray(h, dtype=np.int64), np.asarray(j, dtype=np.int64)
        out = np.zeros(len(h))
        p = self._pos[j]
        # untested entries stay 0: concepts outside the test, kinds not run, falls and activation of unsupported ones
        on = np.array((self._prev, self._prev, self._act, self._act))[h] & (p >= 0) & ((h == 0) | (p < self._ns))
        blocks = self._blocks()
        with np.errstate(divide="ignore"):
            for hh in np.unique(h[on]).tolist():  # one gather per hypothesis row; column sums as in ``evidence``
                at = np.flatnonzero(on & (h == hh))
                blk = blocks[hh]
                out[at] = np.maximum(np.log(blk[:, p[at]].sum(axis=0) / len(blk)), 0.0)
        return out

    def firing_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """(hypothesis rows, concept indices) where ``evidence >= threshold`` now, sorted like ``np.nonzero`` of
        ``fire``, without the logs of every concept: a block's mixtures are summed, and only those at or above
        exp(threshold) (less a rounding slack) take the log that decides, the same arithmetic as ``evidence``."""
        thr = self.threshold
        bar = math.exp(thr) * (1.0 - _SCREEN_SLACK)
        on = (self._prev, self._prev, self._act, self._act)
        hs, js = [], []
        for h, blk in enumerate(self._blocks()):
            if not on[h] or not blk.size or self._rowmax[h].sum() < bar * len(blk):
                continue
            mix = blk.sum(axis=0) / len(blk)
            near = np.flatnonzero(mix >= bar)
            with np.errstate(divide="ignore"):
                hit = near[np.maximum(np.log(mix[near]), 0.0) >= thr]
            j = self._concepts[hit]
            hs.append(np.full(len(j), h, dtype=np.int64))
            js.append(j)
        if not hs:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        h, j = np.concatenate(hs), np.concatenate(js)
        order = np.lexsort((j, h))
        return h[order], j[order]

    def _any_fire(self) -> bool:
        """Whether some tested hypothesis has evidence >= threshold, without the logs of every concept: a mixture
        is at most the sum of its rows' maxima over the alternatives, so a block whose row maxima fall short
        cannot fire."""
        thr = self.threshold
        if thr <= 0.0:
            return bool(self.tested.any())  # evidence is floored at 0
        bar = math.exp(thr) * (1.0 - _SCREEN_SLACK)
        on = (self._prev, self._prev, self._act, self._act)
        for h, blk in enumerate(self._blocks()):
            if not on[h] or not blk.size or self._rowmax[h].sum() < bar * len(blk):
                continue
            mix = blk.sum(axis=0) / len(blk)
            near = mix[mix >= bar]
            if len(near) and (np.log(near) >= thr).any():
                return True
        return False

    def _result(self) -> SequentialResult:
        self._touch()
        res = SequentialResult(self, self._any_fire())
        self._live = weakref.ref(res)
        return res

    def reset(self) -> None:
        """Start every detector again at R = 0 (the reference and the null counts are kept)."""
        self._touch()
        for blk in (self._r_up, self._r_dn, self._r_act):
            blk[...] = 0.0
        self._rowmax = [np.zeros(len(blk)) for blk in self._blocks()]

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The state in the order of ``idx`` (supported or not), one row per hypothesis x alternative."""
        alpha = self._dense(self._alpha)
        on = np.repeat(self.tested[:, self.idx], [_NF, _NF, _NK, _NK], axis=0)
        return {"n_concepts": self.n_concepts, "ready": self.ready, "idx": self.idx, "alpha": alpha,
                "beta": self._total - alpha, "n": self._n, "wsum": self._dense(self._wsum),
                "wsq": self._dense(self._wsq), "wmax": self._dense(self._wmax), "r": self._dense_r(),
                "n_items": self.n_items, "tested": self.tested, "on": on, "spend": self.spend,
                # the snapshot the null was last refreshed from, and the items since
                "null_alpha": self._dense(self._null[0]), "null_total": self._null[1], "null_n": self._null[2],
                "null_wsum": self._dense(self._null[3]), "null_wsq": self._dense(self._null[4]),
                "since": self._since}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_concepts"]) != self.n_concepts:
            raise ValueError(f"state has {state['n_concepts']} concepts, the test {self.n_concepts}")
        self._touch()
        idx = np.array(state["idx"], dtype=np.int64)
        tested = np.array(state["tested"], dtype=bool)
        r = _widen_legacy(np.asarray(state["r"], dtype=np.float64))
        alpha = np.array(state["alpha"], dtype=np.float64)
        total = alpha + np.array(state["beta"], dtype=np.float64)
        if len(total) and not np.all(total == total[0]):
            raise ValueError("state: alpha + beta must be the same for every concept (items seen + 2 x prior)")
        # the fall and activation rows test the same concepts: those the reference supported
        supported = (tested[1] | tested[2] | tested[3])[idx] if len(idx) else np.zeros(0, dtype=bool)
        null = None
        if "null_alpha" in state:  # a state saved before the null was refreshed in steps has none: refresh now
            null = (state["null_alpha"], float(state["null_total"]), int(state["null_n"]), state["null_wsum"],
                    state["null_wsq"])
        self._install(idx, supported, alpha, float(total[0]) if len(total) else 0.0, int(state["n"]),
                      state["wsum"], state["wsq"], state["wmax"], r, tested, null,
                      int(state.get("since", 0)))
        self.ready = bool(state["ready"])
        self.n_items = int(state["n_items"])
        self.spend = float(state["spend"])
