"""Sequential per-concept drift tests, updated at every committed batch: a Shiryaev-Roberts e-detector per concept,
kind and direction, combined across concepts so that the expected number of items between false alarms of a stream
is at least the ERT the user set. The derivation, its assumptions and where they fail are in docs/drift.md (§4).

Per concept j and hypothesis h the detector keeps R = sum over candidate change points s of the likelihood ratio of
the items since s (null: the concept's predictive rate, or mean, learned from the reference and the stream before the
batch; alternative: that rate or mean moved by a factor from a small grid, so the alternative follows the null). Under
no drift R_n minus the number of items seen is a (super)martingale, so the first time any tested hypothesis has
R >= H x ERT comes after at least ERT items on average (H = the number tested).

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
from monitor.records import SparseCodes

__all__ = ["RATE_FACTORS", "FALL_FACTORS", "MEAN_SHIFTS", "SequentialResult", "SequentialConceptTest"]

# Alternatives mixed with equal weights. Prevalence: the alternative follows the null's predictive rate p (learned
# from the reference and the stream before the batch): an item lacks the concept with probability (1 - p)^e, so the
# alternative rate is 1 - (1 - p)^e, about e x p for a rare concept and never above 1. Rises use e in RATE_FACTORS,
# falls e in FALL_FACTORS. The fast update takes the absent-item factors (1 - p)^(m (e - 1)) of all eight from two
# exps by squaring, so these exact grids are what it is written for (a test checks it against the direct update).
# Mean activation: a mean moved by one of MEAN_SHIFTS standard deviations. A mixture costs log(len) nats of
# threshold and adapts to the size of the shift.
RATE_FACTORS: tuple[float, ...] = (1.5, 2.0, 3.0, 5.0)
FALL_FACTORS: tuple[float, ...] = (0.75, 0.5, 0.25, 0.125)
MEAN_SHIFTS: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8)
# Jeffreys prior on a concept's rate under the null: the reference counts update it.
_PRIOR = 0.5
_CAP_NATS = 2.0
# calibrate() aims the no-drift run length at this multiple of ERT: a margin above 1 for the simulation's error
CALIBRATION_TARGET = 1.3

_NF, _NK = len(RATE_FACTORS), len(MEAN_SHIFTS)
_SHIFTS = np.array(MEAN_SHIFTS)[:, None]
_EXPONENTS = np.array(RATE_FACTORS + FALL_FACTORS)[:, None]  # (8, 1): e of each prevalence row, rises first
# Relative slack of the "can anything fire" screen, far above the rounding of a sum of four terms and a log.
_SCREEN_SLACK = 1e-9
_FACTOR_CACHE = 4  # batch sizes whose dead-row points are kept
# the activation shifts double from one to the next, so e^{lam b} - 1 of the larger ones follows by squaring
_DOUBLING = all(b == 2.0 * a for a, b in zip(MEAN_SHIFTS, MEAN_SHIFTS[1:]))
# log-LR below which a factor is 0.0 in float64 (exp underflows at -745.1), with a margin for rounding
_DEAD_NATS = -800.0
# Factors are floored at exp(-700) ~ 1e-304. R enters the next batch only through R + m (m >= 1), where anything
# below 1e-16 m vanishes, and a mixture below 1 has evidence 0: R = 1e-304 and R = 0 are the same detector. The floor
# keeps the arithmetic off subnormal numbers and the slow paths of exp, each 10-100x slower per element.
_FLOOR_NATS = -700.0


def _dead_from(shift: float, m: int) -> float:
    """The t = shift x (b / sd) from which an up-activation factor of a batch of m items is at most exp(-800)
    whatever the batch holds (up to t = 700, where the direct update clips): its weights are clipped at the
    reference maximum, so S - m mu <= m b and log LR <= m D(t), D(t) = t - shift^2 (e^t - 1 - t) / t^2 (b^2 / var
    = (t / shift)^2). D is concave with D(0) = 0, so past the last grid point where m D > -800 it stays below."""
    t = np.geomspace(1e-3, 700.0, 20_001)
    bound = m * (t - shift * shift * (np.expm1(t) - t) / (t * t))
    above = np.flatnonzero(bound > _DEAD_NATS)
    if not len(above):
        return float(t[0])
    return float(t[above[-1] + 1]) if above[-1] + 1 < len(t) else math.inf


def _config_dict(cfg: DriftConfig) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(cfg)


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

    Cost per batch. Every tested detector moves at every batch (the null learns from absences too), so the work is
    one pass over the tested detectors, kept small: concepts are stored with the supported ones first, so the fall
    and activation detectors are contiguous slices of only the concepts they test; a prevalence detector's
    likelihood ratio for a concept absent from the batch is a power of (1 - p)^m, the eight of a concept come from
    two exps by squaring, so only the concepts present in the batch (and the rare ones whose factor could pass the
    floor or the cap) take the exact formula; the
    evidence (a log per concept and kind) is computed only when read, and whether anything fires is decided from
    the largest R of each detector row first. docs/drift.md (§4, "Cost") gives the equalities this rests on;
    tests/monitor/drift/test_sequential.py checks them against the direct update on random streams.
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
        self._evidence: np.ndarray | None = None
        empty = np.zeros(0)
        self._install(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool), empty, 0.0, 0, empty, empty, empty,
                      np.zeros((16, 0)),
                      np.zeros((4, self.n_concepts), dtype=bool))

    # -- layout -----------------------------------------------------------------------------------------------------
    def _install(self, idx, supported, alpha, total, n, wsum, wsq, wmax, r, tested) -> None:
        """Take a state given in the order of ``idx`` (the layout of state_dict) and store it with the supported
        concepts first: position i of the internal arrays holds concept ``idx[perm[i]]``."""
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
        self._l_up = np.empty_like(self._r_up)  # scratch for the factors of a batch
        self._l_dn = np.empty_like(self._r_dn)
        self.tested = np.asarray(tested, dtype=bool)
        self._n_hyp = int(self.tested.sum())
        self._dead: dict[int, np.ndarray] = {}
        self._evidence = None
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
        for key in ("r", "on"):
            state[key] = state[key][:, keep]
        state["tested"] = np.zeros_like(state["tested"])
        state["tested"][:, state["idx"]] = self.tested[:, self.idx[keep]]
        state["r"] = np.zeros_like(state["r"])
        state["spend"] = 0.0
        sim.load_state_dict(state)
        # the simulated stream is drawn in the order of the kept concepts, then handed to the detectors in theirs
        perm = sim._perm
        rate = state["alpha"] / (state["alpha"] + state["beta"])
        x = np.maximum(state["alpha"] - _PRIOR, 1.0)
        a = state["wsum"] / x  # mean weight when active (a stand-in where the reference never saw the concept)
        a = np.where(a > 0, a, 0.1)
        b = np.maximum(state["wsq"] / x - a * a, 1e-12 * a * a)  # its variance
        b = np.where(b > 0, b, a * a)
        shape, scale = a * a / b, b / a
        second = b + a * a
        limit = math.exp(sim.threshold)
        alarms, items = 0, 0
        by_kind = [0, 0, 0, 0]
        for _ in range(max_batches):
            presence = rng.binomial(m, rate).astype(np.float64)
            s = np.where(presence > 0, rng.gamma(np.maximum(presence, 1.0) * shape, scale), 0.0)
            sim._step(m, presence[perm], s[perm], (presence * second)[perm])
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
                            "batch_size": m, "concepts": len(keep), "by_hypothesis": by_kind}
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
        ct = self._ct
        pos = self._pos[codes.indices]  # internal position of each nonzero's concept
        w = codes.values.astype(np.float64)
        if not self._all:
            keep = pos >= 0
            pos, w = pos[keep], w[keep]
        presence = np.bincount(pos, minlength=ct).astype(np.float64)
        s = np.bincount(pos, weights=w, minlength=ct)
        sq = np.bincount(pos, weights=w * w, minlength=ct)
        # the up test sees each weight clipped at the reference maximum (its bound needs a range)
        cut = self._wmax[pos]
        over = w > cut
        s_up = s
        if over.any():
            s_up = s - np.bincount(pos[over], weights=w[over] - cut[over], minlength=ct)
        self._step(m, presence, s, sq, s_up)
        return self._result()

    def _step(self, m: int, presence: np.ndarray, s: np.ndarray, sq: np.ndarray, s_up: np.ndarray | None = None
              ) -> None:
        """One batch of ``m`` items given, per tested concept in internal order, its presence count, weight sum,
        sum of squares and weight sum clipped at the reference maximum (trusted inputs).

        Shiryaev-Roberts over batches: R <- (R + m) x LR, i.e. a new candidate change point per item of the batch.
        R is kept on the linear scale and capped at exp(threshold + 2): the cap sits above the threshold, so it
        never changes when a detector first crosses it, and it lets a long-firing detector come down soon after
        the shift ends. The log-LR is capped there too, before exp.
        """
        self._touch()
        cap = self.threshold + _CAP_NATS
        ecap = math.exp(cap)
        if self._prev:
            self._prevalence_step(m, presence, cap, ecap)
            self._alpha += presence  # the null learns from the batch after testing it
            self._total += m
        if self._act and self._ns:
            self._activation_step(m, s, s if s_up is None else s_up, cap, ecap)
        self._n += m
        self._wsum += s
        self._wsq += sq
        self.n_items += m

    def _dead_points(self, m: int) -> np.ndarray:
        """Per batch size m: the t = shift x b / sd from which each up-activation row goes dead (``_dead_from``)."""
        got = self._dead.get(m)
        if got is None:
            if len(self._dead) >= _FACTOR_CACHE:
                self._dead.pop(next(iter(self._dead)))
            got = self._dead[m] = np.array([_dead_from(d, m) for d in MEAN_SHIFTS])
        return got

    def _prevalence_step(self, m: int, presence: np.ndarray, cap: float, ecap: float) -> None:
        """log LR = k log(p1 / p) + (m - k) (e - 1) log(1 - p), p the Beta predictive rate before the batch and
        p1 = 1 - (1 - p)^e the alternative that follows it. For k = 0 the ratio is (1 - p)^(m (e - 1)): with
        x = m log(1 - p), the rises' four are exp(x / 2) and its square, fourth and eighth power, the falls' four
        are powers of exp(-x / 8) (exponents 2, 4, 6, 7) -- two exps per concept for eight factors. The concepts of
        the batch, and the rare ones where a factor could pass the floor or the cap, get the full formula."""
        ns = self._ns
        rate = self._alpha / self._total
        lq = np.log1p(-rate)
        x = lq * m  # <= 0
        l_up, l_dn = self._l_up, self._l_dn
        np.exp(x * 0.5, out=l_up[0])  # e = 1.5
        np.multiply(l_up[0], l_up[0], out=l_up[1])  # e = 2
        np.multiply(l_up[1], l_up[1], out=l_up[2])  # e = 3
        np.multiply(l_up[2], l_up[2], out=l_up[3])  # e = 5
        if ns:
            h = np.exp(x[:ns] * -0.125)
            np.multiply(h, h, out=l_dn[0])  # e = 3/4: (1 - p)^(-m/4)
            np.multiply(l_dn[0], l_dn[0], out=l_dn[1])  # e = 1/2
            np.multiply(l_dn[1], l_dn[0], out=l_dn[2])  # e = 1/4
            np.multiply(l_dn[2], h, out=l_dn[3])  # e = 1/8
        # the full formula where the batch has the concept, where exp(4x) (the smallest factor) could pass the floor,
        # and where exp(-7x/8) (the largest) could pass the cap
        exact = presence > 0
        low = 4.0 * float(x.min(initial=0.0)) < _FLOOR_NATS
        if low:
            exact |= x < _FLOOR_NATS / 4.0
        if ns and -0.875 * float(x[:ns].min()) > cap:
            exact[:ns] |= x[:ns] < cap / -0.875
        where = np.flatnonzero(exact)
        if len(where):
            k = presence[where]
            lqw = lq[where]
            # k (log p1 - log p) + (m - k) (e - 1) log(1 - p), p1 = -expm1(e log(1 - p))
            ew = _EXPONENTS * lqw
            llr = np.log(-np.expm1(ew))
            llr -= np.log(rate[where])
            llr *= k
            llr += (m - k) * (ew - lqw)
            np.clip(llr, _FLOOR_NATS, cap, out=llr)
            np.exp(llr, out=llr)
            n_sup = int(np.searchsorted(where, ns))  # supported concepts come first
            for i in range(_NF):
                l_up[i, where] = llr[i]
                l_dn[i, where[:n_sup]] = llr[_NF + i, :n_sup]
        for h, (r, lr) in enumerate(((self._r_up, l_up), (self._r_dn, l_dn))):
            r += m
            r *= lr
            self._rowmax[h] = self._capped(r, ecap)

    @staticmethod
    def _capped(r: np.ndarray, ecap: float) -> np.ndarray:
        """Cap a block of R at exp(cap); returns its row maxima."""
        top = r.max(axis=1) if r.size else np.zeros(len(r))
        if top.max(initial=0.0) > ecap:
            np.minimum(r, ecap, out=r)
            top = np.minimum(top, ecap)
        return top

    def _activation_step(self, m: int, s: np.ndarray, s_up: np.ndarray, cap: float, ecap: float) -> None:
        """log of Bennett supermartingale factors for the mean weight, up and down, one row per shift size:
        lam (S - m mu) - m var/b^2 (e^{lam b} - 1 - lam b), lam = shift / sd, b the one-sided range. The up test
        sees weights clipped at the reference maximum (``s_up``), which only lowers their mean."""
        ns, n = self._ns, self._n
        mu = self._wsum[:ns] / n
        var = self._wsq[:ns] / n
        var -= mu * mu
        np.maximum(var, 1e-300, out=var)
        sd = np.sqrt(var)
        lam = _SHIFTS / sd  # (shift, concept)
        dead = self._dead_points(m)
        # one-sided ranges: up to the reference maximum, down to zero; deviations signed so that both grow with
        # evidence against the null
        sides = ((np.maximum(self._wmax[:ns] - mu, 1e-12), s_up[:ns] - m * mu),
                 (np.maximum(mu, 1e-12), m * mu - s[:ns]))
        for d, (b, dev) in enumerate(sides):
            r = self._r_act[d]
            a = b / sd  # lam b / shift
            top = float(a.max())
            rows = _NK
            if d == 0:
                # an up row whose factor is below exp(-800) for every concept whatever the batch holds is set to
                # R = 0, as the direct update does (it multiplies by exp(-800) = 0.0); from the largest shift down
                low = float(a.min())
                while rows and MEAN_SHIFTS[rows - 1] * low >= dead[rows - 1] and MEAN_SHIFTS[rows - 1] * top <= 700.0:
                    rows -= 1
                    if self._rowmax[2][rows] != 0.0:
                        r[rows] = 0.0
            if not rows:
                continue
            lam_r = lam[:rows]
            v = var / (b * b)
            if MEAN_SHIFTS[rows - 1] * top * (1.0 + 1e-12) < 700.0 and _DOUBLING:
                # e^{2x} - 1 = (e^x - 1)(e^x + 1): one expm1 per concept, the larger shifts by doubling; and with
                # u = lam b unclipped, lam dev - m v (E - u) = lam (dev + m v b) - m v E
                e = np.empty((rows, ns))
                np.expm1(lam_r[0] * b, out=e[0])
                for i in range(1, rows):
                    np.multiply(e[i - 1], e[i - 1] + 2.0, out=e[i])
                e *= m * v
                llr = lam_r * (dev + m * var / b)
                llr -= e
            else:
                u = np.minimum(lam_r * b, 700.0)
                psi = v * np.expm1(u)
                psi -= v * u
                llr = lam_r * dev
                llr -= m * psi
            np.clip(llr, _FLOOR_NATS, cap, out=llr)
            rr = r[:rows]
            rr += m
            rr *= np.exp(llr, out=llr)
            top_rows = self._capped(rr, ecap)
            self._rowmax[2 + d] = np.concatenate([top_rows, np.zeros(_NK - rows)])

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
        out = np.zeros(len(h))
        on = (self._prev, self._prev, self._act, self._act)
        blocks = self._blocks()
        for i, (hh, jj) in enumerate(zip(np.asarray(h).tolist(), np.asarray(j).tolist())):
            p = int(self._pos[jj])
            if p < 0 or not on[hh] or (hh > 0 and p >= self._ns):
                continue
            blk = blocks[hh]
            with np.errstate(divide="ignore"):
                out[i] = np.maximum(np.log(blk[:, [p]].sum(axis=0) / len(blk)), 0.0)[0]
        return out

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
                "n_items": self.n_items, "tested": self.tested, "on": on, "spend": self.spend}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if int(state["n_concepts"]) != self.n_concepts:
            raise ValueError(f"state has {state['n_concepts']} concepts, the test {self.n_concepts}")
        self._touch()
        idx = np.array(state["idx"], dtype=np.int64)
        tested = np.array(state["tested"], dtype=bool)
        alpha = np.array(state["alpha"], dtype=np.float64)
        total = alpha + np.array(state["beta"], dtype=np.float64)
        if len(total) and not np.all(total == total[0]):
            raise ValueError("state: alpha + beta must be the same for every concept (items seen + 2 x prior)")
        # the fall and activation rows test the same concepts: those the reference supported
        supported = (tested[1] | tested[2] | tested[3])[idx] if len(idx) else np.zeros(0, dtype=bool)
        self._install(idx, supported, alpha, float(total[0]) if len(total) else 0.0, int(state["n"]), state["wsum"], state["wsq"], state["wmax"], state["r"],
                      tested)
        self.ready = bool(state["ready"])
        self.n_items = int(state["n_items"])
        self.spend = float(state["spend"])
