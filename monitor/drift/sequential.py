"""Sequential per-concept drift tests, updated at every committed batch: a Shiryaev-Roberts e-detector per concept,
kind and direction, combined across concepts so that the expected number of items between false alarms of a stream
is at least the ERT the user set. The derivation, its assumptions and where they fail are in docs/drift.md (§4).

Per concept j and hypothesis h the detector keeps R = sum over candidate change points s of the likelihood ratio of
the items since s (alternative: the rate or mean moved by a factor from a small grid; null: the reference's rate or
mean). Under no drift R_n minus the number of items seen is a (super)martingale, so the first time any tested
hypothesis has R >= H x ERT comes after at least ERT items on average (H = the number tested).

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
from typing import Any

import numpy as np

from monitor.drift.detectors import HYPOTHESES, DriftConfig
from monitor.drift.stats import WindowStats
from monitor.records import SparseCodes

__all__ = ["RATE_FACTORS", "MEAN_SHIFTS", "SequentialResult", "SequentialConceptTest"]

# Alternatives mixed with equal weights: a prevalence that moved up (down) by one of these factors, and a mean
# activation that moved by one of these multiples of its null standard deviation. A mixture costs log(len) nats of
# threshold and adapts to the size of the shift.
RATE_FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0)
MEAN_SHIFTS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
# Jeffreys prior on a concept's rate under the null: the reference counts update it.
_PRIOR = 0.5
_CAP_NATS = 2.0
# calibrate() aims the no-drift run length at this multiple of ERT: a margin above 1 for the simulation's error
CALIBRATION_TARGET = 1.3


def _config_dict(cfg: DriftConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


class SequentialResult:
    """What one batch left behind; (4, n_concepts) arrays in ``HYPOTHESES`` order."""

    __slots__ = ("evidence", "tested", "fire", "threshold", "n_hypotheses")

    def __init__(self, evidence, tested, fire, threshold, n_hypotheses) -> None:
        self.evidence = evidence  # log R, floored at 0
        self.tested = tested
        self.fire = fire  # evidence >= threshold (before the min_count / floor gates of the alarm book)
        self.threshold = threshold
        self.n_hypotheses = n_hypotheses


class SequentialConceptTest:
    """Shiryaev-Roberts e-detectors of every concept's prevalence and mean activation against a reference.

    ``set_reference(stats)`` fixes the null (a concept is tested when the reference saw it in at least
    ``min_support`` images); ``update(codes)`` folds one committed batch in and returns a :class:`SequentialResult`.
    Cost per batch: O(nonzeros) to count, plus O(tested concepts x alternatives) vector work.
    """

    def __init__(self, n_concepts: int, config: DriftConfig | None = None) -> None:
        self.n_concepts = int(n_concepts)
        self.config = config or DriftConfig()
        c = self.n_concepts
        self.ready = False
        self.idx = np.zeros(0, dtype=np.int64)  # tested concepts
        self.kinds = tuple(k for k in ("prevalence", "activation") if k in self.config.kinds)
        # prevalence null: Beta(alpha, beta) over the rate, updated by every item seen (reference, then stream)
        self._alpha = self._beta = np.zeros(0)
        self._log_p1 = self._log_q1 = np.zeros((0, 0))  # (2 x factors, tested): log p1, log(1 - p1)
        # activation null: running n, sum and sum of squares of each concept's weight (zeros included), and the
        # largest weight of the reference (current weights are clipped to it, which keeps the bound valid)
        self._n = 0
        self._wsum = self._wsq = self._wmax = np.zeros(0)
        self._r = np.zeros((0, 0))  # (hypothesis rows x alternatives, tested): R
        self._on = np.zeros((0, 0), dtype=bool)  # which of those detectors run (the others stay at R = 0)
        self.n_items = 0  # items tested since the reference was set
        self.evidence = np.zeros((4, c))
        self.tested = np.zeros((4, c), dtype=bool)
        self.spend = 0.0  # nats taken off log(H x ERT) by calibrate()
        self.calibration: dict[str, float] = {}

    # -- reference ------------------------------------------------------------------------------------------------
    def set_reference(self, reference: WindowStats) -> None:
        """Use ``reference`` as the null from now on. Accumulated evidence is kept (a trailing reference moves
        under running detectors); a first reference starts every detector at R = 0."""
        cfg = self.config
        r = reference.concepts
        if r.n_concepts != self.n_concepts:
            raise ValueError(f"reference has {r.n_concepts} concepts, the test {self.n_concepts}")
        # every concept can rise (one the reference never saw is the clearest drift there is); falling, and the
        # mean activation, need a reference that saw the concept in at least min_support images
        idx = np.arange(self.n_concepts) if r.n_images else np.zeros(0, dtype=np.int64)
        supported = r.presence[idx] >= cfg.min_support
        old = (self.idx, self._r) if self.ready else None
        self.idx = idx
        n_r = max(int(r.n_images), 1)
        x = r.presence[idx].astype(np.float64)
        self._alpha = x + _PRIOR
        self._beta = (n_r - x) + _PRIOR
        rate = self._alpha / (self._alpha + self._beta)
        f = np.array(RATE_FACTORS)
        p1 = np.concatenate([np.minimum(rate[None, :] * f[:, None], 0.99), rate[None, :] / f[:, None]])
        self._log_p1, self._log_q1 = np.log(p1), np.log1p(-p1)
        self._n = n_r
        self._wsum = r.weight_sum[idx].astype(np.float64)
        self._wsq = r.weight_sq_sum[idx].astype(np.float64)
        self._wmax = r.weight_max[idx].astype(np.float64)
        rows = 2 * len(RATE_FACTORS) + 2 * len(MEAN_SHIFTS)
        r_new = np.zeros((rows, len(idx)))
        if old is not None and len(old[0]):
            # keep the evidence of concepts tested before and after the change
            common, a, b = np.intersect1d(old[0], idx, return_indices=True)
            r_new[:, b] = old[1][:, a]
        self._r = r_new
        self.tested = np.zeros((4, self.n_concepts), dtype=bool)
        for h, (kind, direction) in enumerate(HYPOTHESES):
            if kind in self.kinds:
                self.tested[h, idx] = True if (kind, direction) == ("prevalence", "up") else supported
        self._on = np.repeat(self.tested[:, idx], [len(RATE_FACTORS)] * 2 + [len(MEAN_SHIFTS)] * 2, axis=0)
        self.ready = True

    @property
    def n_hypotheses(self) -> int:
        return int(self.tested.sum())

    @property
    def threshold(self) -> float:
        """Evidence (log R) at which a hypothesis fires: log(H x ERT), less the calibrated overshoot ``spend``."""
        return math.log(self.config.ert * max(self.n_hypotheses, 1)) - self.spend

    # -- spending the budget ----------------------------------------------------------------------------------------
    def calibrate(self, batch_size: int, *, target: float = CALIBRATION_TARGET, seed: int = 0,
                  min_alarms: int = 100, max_batches: int = 3000, max_concepts: int = 1000) -> float:
        """Measure how far beyond ERT the bound log(H x ERT) puts the run length on this reference, and lower the
        threshold by that factor (divided by ``target``, never raised): sets and returns ``spend`` (nats).

        The detectors run on a simulated no-drift stream drawn from the reference itself (each tested concept
        active with its reference rate, independently; weights from a gamma law with its reference mean and
        variance when active) at a small ERT', where false alarms are frequent. The ratio run length / ERT' is the
        overshoot of the crossings, which renewal theory says does not depend on the threshold once it is large;
        it carries over to the real ERT.
        """
        if not self.ready or not len(self.idx):
            return 0.0
        m = max(int(batch_size), 1)
        rng = np.random.default_rng(seed)
        # a random subset of the tested concepts is enough: the ratio is the mean over hypotheses of their overshoot
        keep = np.sort(rng.choice(len(self.idx), size=min(len(self.idx), max_concepts), replace=False))
        ert_sim = 2.0 * m
        sim = SequentialConceptTest(self.n_concepts, DriftConfig(**{**_config_dict(self.config), "ert": ert_sim}))
        state = self.state_dict()
        for key in ("idx", "alpha", "beta", "wsum", "wsq", "wmax"):
            state[key] = state[key][keep]
        for key in ("log_p1", "log_q1", "r", "on"):
            state[key] = state[key][:, keep]
        state["tested"] = np.zeros_like(state["tested"])
        state["tested"][:, state["idx"]] = self.tested[:, self.idx[keep]]
        sim.load_state_dict(state)
        sim.spend = 0.0
        sim._r[:] = 0.0
        rate = sim._alpha / (sim._alpha + sim._beta)
        x = np.maximum(sim._alpha - _PRIOR, 1.0)
        a = sim._wsum / x  # mean weight when active (a stand-in where the reference never saw the concept)
        a = np.where(a > 0, a, 0.1)
        b = np.maximum(sim._wsq / x - a * a, 1e-12 * a * a)  # its variance
        b = np.where(b > 0, b, a * a)
        shape, scale = a * a / b, b / a
        second = b + a * a
        limit = math.exp(sim.threshold)
        nf, nk = len(RATE_FACTORS), len(MEAN_SHIFTS)
        alarms, items = 0, 0
        by_kind = [0, 0, 0, 0]
        for _ in range(max_batches):
            presence = rng.binomial(m, rate).astype(np.float64)
            s = np.where(presence > 0, rng.gamma(np.maximum(presence, 1.0) * shape, scale), 0.0)
            sim._step(m, presence, s, presence * second)
            items += m
            r = sim._r
            tops = (r[:nf].sum(axis=0).max() / nf, r[nf:2 * nf].sum(axis=0).max() / nf,
                    r[2 * nf:2 * nf + nk].sum(axis=0).max() / nk, r[2 * nf + nk:].sum(axis=0).max() / nk)
            if max(tops) >= limit:
                alarms += 1
                by_kind[int(np.argmax(tops))] += 1
                sim._r[:] = 0.0
                if alarms >= min_alarms:
                    break
        ratio = (items / max(alarms, 1)) / ert_sim
        self.spend = math.log(max(ratio / target, 1.0))
        self.calibration = {"ert_sim": ert_sim, "items": items, "alarms": alarms, "ratio": ratio,
                            "batch_size": m, "concepts": len(keep), "by_hypothesis": by_kind}
        return self.spend

    # -- one batch ------------------------------------------------------------------------------------------------
    def update(self, codes: SparseCodes) -> SequentialResult:
        """Fold one committed batch in (every row of ``codes``); returns the evidence after it."""
        if not self.ready:
            raise ValueError("set_reference must be called before update")
        c = self.n_concepts
        m = len(codes)
        if m == 0 or not len(self.idx):
            return self._result()
        ind = codes.indices
        presence = np.bincount(ind, minlength=c)[self.idx].astype(np.float64)
        # activation: clip each weight at the reference maximum, then sums per concept
        full_max = np.zeros(c)
        full_max[self.idx] = self._wmax
        w = codes.values.astype(np.float64)
        s = np.bincount(ind, weights=w, minlength=c)[self.idx]
        sq = np.bincount(ind, weights=w * w, minlength=c)[self.idx]
        over = w > full_max[ind]
        s_up = s
        if over.any():  # the up test sees weights clipped at the reference maximum (its bound needs a range)
            s_up = s - np.bincount(ind[over], weights=w[over] - full_max[ind][over], minlength=c)[self.idx]
        self._step(m, presence, s, sq, s_up)
        return self._result()

    def _step(self, m: int, presence: np.ndarray, s: np.ndarray, sq: np.ndarray, s_up: np.ndarray | None = None
              ) -> None:
        """One batch of ``m`` items given, per tested concept, its presence count, clipped weight sum and sum of
        squares (trusted inputs)."""
        absent = m - presence
        lr_rows = []
        if "prevalence" in self.kinds:
            # null: the predictive rate of the Beta posterior before this batch (reference and stream so far)
            rate = self._alpha / (self._alpha + self._beta)
            lp, lq = np.log(rate), np.log1p(-rate)
            lr_rows.append(presence * (self._log_p1 - lp) + absent * (self._log_q1 - lq))
            self._alpha += presence
            self._beta += absent
        else:
            lr_rows.append(np.full((2 * len(RATE_FACTORS), len(self.idx)), -np.inf))
        if "activation" in self.kinds:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # unsupported concepts: masked below
                lr_rows.append(self._activation_lr(m, s, s if s_up is None else s_up))
        else:
            lr_rows.append(np.full((2 * len(MEAN_SHIFTS), len(self.idx)), -np.inf))
        self._n += m
        self._wsum += s
        self._wsq += sq
        log_lr = np.where(self._on, np.concatenate(lr_rows), -np.inf)  # untested hypotheses keep R = 0
        # Shiryaev-Roberts over batches: R <- (R + m) x LR, i.e. a new candidate change point per item of the batch.
        # R is kept on the linear scale (exp is far cheaper than logaddexp) and capped at exp(threshold + 2): the
        # cap sits above the threshold, so it never changes when a detector first crosses it, and it lets a
        # long-firing detector come down soon after the shift ends.
        cap = self.threshold + _CAP_NATS
        self._r += m
        self._r *= np.exp(np.minimum(log_lr, cap))
        np.minimum(self._r, math.exp(cap), out=self._r)
        self.n_items += m

    def _activation_lr(self, m: int, s: np.ndarray, s_up: np.ndarray) -> np.ndarray:
        """log of Bennett supermartingale factors for the mean weight, up and down, one row per shift size. The up
        test sees weights clipped at the reference maximum (``s_up``), which only lowers their mean."""
        n = self._n
        mu = self._wsum / n
        var = np.maximum(self._wsq / n - mu * mu, 1e-300)
        sd = np.sqrt(var)
        out = []
        for sign, b, dev in ((1.0, np.maximum(self._wmax - mu, 1e-12), s_up - m * mu),
                             (-1.0, np.maximum(mu, 1e-12), s - m * mu)):
            for k in MEAN_SHIFTS:
                lam = k / sd
                # E exp(lam (X - mu)) <= exp(var/b^2 (e^{lam b} - 1 - lam b)) for X - mu <= b (Bennett)
                u = np.minimum(lam * b, 700.0)
                psi = var / (b * b) * np.expm1(u) - var / (b * b) * u
                out.append(sign * lam * dev - m * psi)
        return np.stack(out)

    def _result(self) -> SequentialResult:
        nf, nk = len(RATE_FACTORS), len(MEAN_SHIFTS)
        blocks = (slice(0, nf), slice(nf, 2 * nf), slice(2 * nf, 2 * nf + nk), slice(2 * nf + nk, 2 * nf + 2 * nk))
        ev = np.zeros((4, self.n_concepts))
        if len(self.idx):
            for h, sl in enumerate(blocks):
                if HYPOTHESES[h][0] not in self.kinds:
                    continue
                mix = self._r[sl].sum(axis=0) / (nf if h < 2 else nk)
                with np.errstate(divide="ignore"):
                    ev[h, self.idx] = np.maximum(np.log(mix), 0.0)
        self.evidence = ev
        thr = self.threshold
        return SequentialResult(ev, self.tested, self.tested & (ev >= thr), thr, self.n_hypotheses)

    def reset(self) -> None:
        """Start every detector again at R = 0 (the reference and the null counts are kept)."""
        self._r[:] = 0.0
        self.evidence = np.zeros((4, self.n_concepts))

    # -- state ----------------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"n_concepts": self.n_concepts, "ready": self.ready, "idx": self.idx, "alpha": self._alpha,
                "beta": self._beta, "log_p1": self._log_p1, "log_q1": self._log_q1, "n": self._n,
                "wsum": self._wsum, "wsq": self._wsq, "wmax": self._wmax, "r": self._r,
                "n_items": self.n_items, "tested": self.tested, "on": self._on, "spend": self.spend}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_concepts"]) != self.n_concepts:
            raise ValueError(f"state has {state['n_concepts']} concepts, the test {self.n_concepts}")
        self.ready = bool(state["ready"])
        self.idx = np.array(state["idx"], dtype=np.int64)
        self._alpha = np.array(state["alpha"], dtype=np.float64)
        self._beta = np.array(state["beta"], dtype=np.float64)
        self._log_p1 = np.array(state["log_p1"], dtype=np.float64)
        self._log_q1 = np.array(state["log_q1"], dtype=np.float64)
        self._n = int(state["n"])
        self._wsum = np.array(state["wsum"], dtype=np.float64)
        self._wsq = np.array(state["wsq"], dtype=np.float64)
        self._wmax = np.array(state["wmax"], dtype=np.float64)
        self._r = np.asarray(state["r"], dtype=np.float64).copy()
        self.n_items = int(state["n_items"])
        self.tested = np.array(state["tested"], dtype=bool)
        self.spend = float(state["spend"])
        self._on = np.array(state["on"], dtype=bool)
        self._result()
