"""Helpers of the drift tests: the direct (dense, unoptimised) update of the sequential concept tests, kept as the
reference that the optimised ``SequentialConceptTest`` must reproduce."""

from __future__ import annotations

import math

import numpy as np

from monitor.drift.detectors import HYPOTHESES, DriftConfig
from monitor.drift.sequential import _CAP_NATS, FALL_FACTORS, MEAN_SHIFTS, RATE_FACTORS, REFRESH_FRACTION
from monitor.records import SparseCodes


class DirectSequential:
    """Every detector of every tested concept updated with the formulas of docs/drift.md §4 as written: one
    (16, concepts) array of R, log-LRs of all rows computed for all concepts and masked where untested. Starts from
    ``SequentialConceptTest.state_dict()`` (same threshold: pass the test's ``spend``)."""

    def __init__(self, state: dict, config: DriftConfig, n_concepts: int) -> None:
        self.config = config
        self.n_concepts = n_concepts
        self.kinds = tuple(k for k in ("prevalence", "activation") if k in config.kinds)
        self.idx = np.array(state["idx"])
        self.alpha = np.array(state["alpha"], dtype=np.float64)
        self.beta = np.array(state["beta"], dtype=np.float64)
        self.n = int(state["n"])
        self.wsum, self.wsq, self.wmax = (np.array(state[k], dtype=np.float64) for k in ("wsum", "wsq", "wmax"))
        self.r = np.array(state["r"], dtype=np.float64)
        self.tested = np.array(state["tested"])
        self.on = np.array(state["on"])
        self.spend = float(state["spend"])
        # the null as of its last refresh: (alpha, beta, n, wsum, wsq), refreshed once REFRESH_FRACTION x its n items passed
        total = float(state["null_total"])
        self.null = (np.array(state["null_alpha"]), total - np.array(state["null_alpha"]), int(state["null_n"]),
                     np.array(state["null_wsum"]), np.array(state["null_wsq"]))
        self.since = int(state["since"])

    @property
    def threshold(self) -> float:
        return math.log(self.config.ert * max(int(self.tested.sum()), 1)) - self.spend

    def update(self, codes: SparseCodes) -> None:
        c, m = self.n_concepts, len(codes)
        ind = codes.indices
        presence = np.bincount(ind, minlength=c)[self.idx].astype(np.float64)
        full_max = np.zeros(c)
        full_max[self.idx] = self.wmax
        w = codes.values.astype(np.float64)
        s = np.bincount(ind, weights=w, minlength=c)[self.idx]
        sq = np.bincount(ind, weights=w * w, minlength=c)[self.idx]
        over = w > full_max[ind]
        s_up = s - np.bincount(ind[over], weights=w[over] - full_max[ind][over], minlength=c)[self.idx]
        self.step(m, presence, s, sq, s_up)

    def step(self, m, presence, s, sq, s_up) -> None:
        absent = m - presence
        rows = []
        if self.since >= REFRESH_FRACTION * self.null[2]:
            self.null = (self.alpha.copy(), self.beta.copy(), self.n, self.wsum.copy(), self.wsq.copy())
            self.since = 0
        n_alpha, n_beta, n_n, n_wsum, n_wsq = self.null
        if "prevalence" in self.kinds:
            rate = n_alpha / (n_alpha + n_beta)  # the predictive rate p as of the last refresh
            for e in RATE_FACTORS + FALL_FACTORS:
                # the alternative follows it: an item lacks the concept with probability (1 - p)^e
                p1 = -np.expm1(e * np.log1p(-rate))
                # log(1 - p1) is e log(1 - p) by definition; written from p1 it rounds to log(0) once (1 - p)^e
                # falls under 1e-16 (e = 100 on a frequent concept)
                rows.append((presence * (np.log(p1) - np.log(rate)) + absent * (e * np.log1p(-rate) - np.log1p(-rate)))[None])
            self.alpha += presence
            self.beta += absent
        else:
            rows.append(np.full((2 * len(RATE_FACTORS), len(self.idx)), -np.inf))
        if "activation" in self.kinds:
            mu = n_wsum / n_n
            var = np.maximum(n_wsq / n_n - mu * mu, 1e-300)
            sd = np.sqrt(var)
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                for sign, b, dev in ((1.0, np.maximum(self.wmax - mu, 1e-12), s_up - m * mu),
                                     (-1.0, np.maximum(mu, 1e-12), s - m * mu)):
                    for k in MEAN_SHIFTS:
                        lam = k / sd
                        u = np.minimum(lam * b, 700.0)
                        psi = var / (b * b) * np.expm1(u) - var / (b * b) * u
                        rows.append((sign * lam * dev - m * psi)[None])
        else:
            rows.append(np.full((2 * len(MEAN_SHIFTS), len(self.idx)), -np.inf))
        self.n += m
        self.since += m
        self.wsum += s
        self.wsq += sq
        log_lr = np.where(self.on, np.concatenate(rows), -np.inf)
        cap = self.threshold + _CAP_NATS
        self.r += m
        self.r *= np.exp(np.minimum(log_lr, cap))
        np.minimum(self.r, math.exp(cap), out=self.r)

    def evidence(self) -> np.ndarray:
        nf, nk = len(RATE_FACTORS), len(MEAN_SHIFTS)
        blocks = (slice(0, nf), slice(nf, 2 * nf), slice(2 * nf, 2 * nf + nk), slice(2 * nf + nk, 2 * nf + 2 * nk))
        ev = np.zeros((4, self.n_concepts))
        for h, sl in enumerate(blocks):
            if HYPOTHESES[h][0] in self.kinds and len(self.idx):
                with np.errstate(divide="ignore"):
                    ev[h, self.idx] = np.maximum(np.log(self.r[sl].sum(axis=0) / (nf if h < 2 else nk)), 0.0)
        return ev

    def fire(self) -> np.ndarray:
        return self.tested & (self.evidence() >= self.threshold)
