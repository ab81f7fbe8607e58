"""Drift tests between a reference and a current window: per-concept prevalence and mean-activation tests with
analytic, ERT-calibrated thresholds corrected across all concepts, hysteresis so alarms do not flap, a stream-level
divergence score. The derivation is in docs/drift.md.

Each test turns the window statistics into *evidence* e = -log(p-bound), where p-bound is a rigorous upper bound on
the one-sided p-value of the observed difference under "reference and current images are exchangeable". A step
tests H hypotheses (concept x kind x direction with enough support) and fires where e >= log(ERT * H), so the
expected number of false alarms per step is at most 1/ERT and the mean run length between false alarms is at least
ERT steps.

>>> import numpy as np
>>> ev_up, ev_down = prevalence_evidence(np.array([20]), 10_000, np.array([60]), 1_000)
>>> bool(ev_up[0] > np.log(1000 * 40_000)), float(ev_down[0])
(True, 0.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.special import rel_entr
from scipy.stats import hypergeom

from monitor.errors import ConfigError
from monitor.records import Alarm
from monitor.drift.stats import WindowStats

__all__ = [
    "HYPOTHESES",
    "DriftConfig",
    "StepResult",
    "ConceptDriftTest",
    "AlarmBook",
    "prevalence_evidence",
    "activation_evidence",
    "bernoulli_kl",
    "js_divergence",
]

# Row order of the (4, n_concepts) evidence arrays.
HYPOTHESES: tuple[tuple[str, str], ...] = (
    ("prevalence", "up"),
    ("prevalence", "down"),
    ("activation", "up"),
    ("activation", "down"),
)
KINDS = ("prevalence", "activation")


def _chernoff_slack(n_cur: int) -> float:
    """How far (nats) the Chernoff exponent can overstate a tail of a count out of n_cur: a binomial tail is at
    least exp(-n KL) / sqrt(8 k), so the gap is under 0.5 log(8 n_cur); 2 nats of margin cover the lighter
    hypergeometric tails. Only power depends on this: the exact tail is never above the bound."""
    return 0.5 * math.log(8.0 * max(n_cur, 1)) + 2.0


@dataclass(frozen=True)
class DriftConfig:
    """Per-concept drift tests.

    ``ert``: expected number of items between false alarms on one stream, all concepts together (the monitor's
    sequential tests run at every batch; :class:`ConceptDriftTest`, the one-shot window comparison, reads it as
    tests between false alarms).
    ``min_support``: a concept's fall and its mean activation are tested only when the reference saw it in at least
    this many images (a rise is tested for every concept: one the reference never saw may appear); the window
    comparison filters on reference and current together. Neither filter looks at the data under test, so both keep
    the false-alarm bound (docs/drift.md).
    ``min_count``: an alarm is raised only when it rests on at least this many images: an "up" alarm needs that many
    current images with the concept, a "down" alarm needs the reference rate to predict that many in the current one.
    ``clear_ratio`` / ``clear_steps``: hysteresis; an active alarm resolves only after its evidence stayed below
    ``clear_ratio`` x threshold for ``clear_steps`` consecutive tests (batches).
    ``stream_threshold``: Jensen-Shannon divergence (bits) above which a stream-level alarm is raised; None (default)
    reports the score without alarming, because that score has no analytic null distribution.
    ``min_prevalence_change``: a prevalence alarm also needs |current - reference prevalence| >= this absolute
    floor (0.0, the default, disables it); a firing one resolves once the change stays below ``clear_ratio`` x the
    floor (or its evidence below ``clear_ratio`` x threshold) for ``clear_steps`` tests. Like ``min_count`` it only
    suppresses alarms, so the false-alarm bound holds.
    ``calibrate``: spend the budget: when the reference is set, a short simulation from the reference (its own items
    when the monitor kept them) measures how far beyond ERT the analytic threshold puts the no-drift run length, and
    lowers the threshold by that factor (aiming at 1.2 x ERT). False keeps the analytic threshold, whose run length is proved >= ERT but is several
    times longer in practice.
    """

    ert: float = 1_000_000.0
    kinds: tuple[str, ...] = KINDS
    min_support: int = 10
    min_count: int = 5
    clear_ratio: float = 0.5
    clear_steps: int = 2
    stream_threshold: float | None = None
    min_prevalence_change: float = 0.0
    calibrate: bool = True

    def __post_init__(self) -> None:
        if not (self.ert > 1):
            raise ConfigError(f"DriftConfig.ert must be > 1 (items between false alarms), got {self.ert!r}")
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ConfigError(f"DriftConfig.kinds must be a non-empty subset of {KINDS}, got {self.kinds!r}")
        if self.min_support < 1 or self.min_count < 0:
            raise ConfigError(f"DriftConfig.min_support must be >= 1 and min_count >= 0, got "
                             f"{self.min_support!r} and {self.min_count!r}")
        if not (0 < self.clear_ratio <= 1):
            raise ConfigError(f"DriftConfig.clear_ratio must be in (0, 1], got {self.clear_ratio!r}")
        if self.clear_steps < 1:
            raise ConfigError(f"DriftConfig.clear_steps must be >= 1, got {self.clear_steps!r}")
        if self.stream_threshold is not None and not (self.stream_threshold > 0):
            raise ConfigError(f"DriftConfig.stream_threshold must be > 0 bits or None, got {self.stream_threshold!r}")
        if not (isinstance(self.min_prevalence_change, (int, float)) and 0.0 <= self.min_prevalence_change < 1.0):
            raise ConfigError(f"DriftConfig.min_prevalence_change must be a number in [0, 1) (absolute prevalence "
                             f"difference), got {self.min_prevalence_change!r}")
        object.__setattr__(self, "kinds", tuple(self.kinds))


# ---------------------------------------------------------------------------------------------------------------
# evidence (= -log of a p-value bound) for the two per-concept tests


def bernoulli_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """KL(Bernoulli(a) || Bernoulli(b)) in nats, elementwise, with 0 log 0 = 0."""
    return rel_entr(a, b) + rel_entr(1.0 - a, 1.0 - b)


def prevalence_evidence(x_ref, n_ref: int, x_cur, n_cur: int) -> tuple[np.ndarray, np.ndarray]:
    """Evidence that a concept's prevalence went up / down from reference to current.

    Conditional on the pooled presence count s, the current count is hypergeometric under exchangeability, and
    Hoeffding's sampling-without-replacement Chernoff bound gives P(p_cur >= observed) <= exp(-n_cur KL(p_cur||p)),
    p = s / (n_ref + n_cur); the same event seen from the reference sample gives exp(-n_ref KL(p_ref||p)). Both are
    valid bounds, so the evidence is the larger exponent. (:class:`ConceptDriftTest` then replaces it by the exact
    hypergeometric tail wherever the bound comes near the threshold.)
    """
    x_ref = np.asarray(x_ref, dtype=np.float64)
    x_cur = np.asarray(x_cur, dtype=np.float64)
    pooled = (x_ref + x_cur) / (n_ref + n_cur)
    p_cur = x_cur / n_cur
    p_ref = x_ref / n_ref
    ev = np.maximum(n_cur * bernoulli_kl(p_cur, pooled), n_ref * bernoulli_kl(p_ref, pooled))
    ev = np.nan_to_num(ev, nan=0.0, posinf=0.0)
    return np.where(p_cur > pooled, ev, 0.0), np.where(p_cur < pooled, ev, 0.0)


def _bennett(n: float, t: np.ndarray, var: np.ndarray, b: np.ndarray) -> np.ndarray:
    """n (var/b^2) h(b t / var), h(u) = (1+u) log(1+u) - u: the Bennett exponent for a mean deviation t >= 0 of n
    draws with variance var and one-sided range b (X - mu <= b)."""
    b = np.maximum(b, 1e-300)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        u = b * t / var
        h = (1.0 + u) * np.log1p(u) - u
        out = n * (var / (b * b)) * h
    return np.where((var > 0) & (t > 0), np.nan_to_num(out, nan=0.0, posinf=np.finfo(np.float64).max), 0.0)


def activation_evidence(sum_ref, sq_ref, n_ref: int, max_ref, sum_cur, sq_cur, n_cur: int, max_cur):
    """Evidence that a concept's mean activation (zeros included) went up / down.

    Conditional on the pooled multiset of the concept's weights (mean mu, population variance var, values in
    [0, M]), the current window is a random subset under exchangeability; Hoeffding's reduction lets Bennett's
    inequality bound P(mean_cur - mu >= t) <= exp(-n var/b^2 h(b t/var)) with b = M - mu for upward and b = mu for
    downward deviations (weights are >= 0). The reference sample gives a second valid bound; the larger exponent
    is kept.
    """
    sum_ref, sq_ref, max_ref = (np.asarray(a, dtype=np.float64) for a in (sum_ref, sq_ref, max_ref))
    sum_cur, sq_cur, max_cur = (np.asarray(a, dtype=np.float64) for a in (sum_cur, sq_cur, max_cur))
    n = n_ref + n_cur
    mu = (sum_ref + sum_cur) / n
    var = np.maximum((sq_ref + sq_cur) / n - mu * mu, 0.0)
    top = np.maximum(max_ref, max_cur)
    t_cur = sum_cur / n_cur - mu  # n_cur t_cur + n_ref t_ref = 0
    t_ref = sum_ref / n_ref - mu
    b_up, b_down = np.maximum(top - mu, 0.0), mu
    up = np.maximum(_bennett(n_cur, t_cur, var, b_up), _bennett(n_ref, -t_ref, var, b_down))
    down = np.maximum(_bennett(n_cur, -t_cur, var, b_down), _bennett(n_ref, t_ref, var, b_up))
    return np.where(t_cur > 0, up, 0.0), np.where(t_cur < 0, down, 0.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence in bits (0..1) between two nonnegative vectors, each normalised to sum 1."""
    p = np.asarray(p, dtype=np.float64)
    q = np.asarray(q, dtype=np.float64)
    sp, sq = p.sum(), q.sum()
    if sp <= 0 or sq <= 0:
        return 0.0 if sp == sq else 1.0
    p, q = p / sp, q / sq
    m = 0.5 * (p + q)
    return float(0.5 * (rel_entr(p, m).sum() + rel_entr(q, m).sum()) / math.log(2))


# ---------------------------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    """Everything one step of the per-concept tests found; arrays are (4, n_concepts) in ``HYPOTHESES`` order."""

    evidence: np.ndarray
    tested: np.ndarray
    fire: np.ndarray
    threshold: float
    n_hypotheses: int
    ref_prevalence: np.ndarray
    cur_prevalence: np.ndarray
    ref_mean: np.ndarray
    cur_mean: np.ndarray
    pooled_sd: np.ndarray
    stream_score: float
    n_ref: int
    n_cur: int

    @property
    def concept_scores(self) -> np.ndarray:
        """Largest evidence per concept over kinds and directions (0 where untested)."""
        return self.evidence.max(axis=0)

    def effect_size(self, h: int, j: int) -> float:
        """Cohen's h for prevalence, standardized mean difference for activation."""
        if HYPOTHESES[h][0] == "prevalence":
            return float(2 * math.asin(math.sqrt(self.cur_prevalence[j])) -
                         2 * math.asin(math.sqrt(self.ref_prevalence[j])))
        sd = self.pooled_sd[j]
        return float((self.cur_mean[j] - self.ref_mean[j]) / sd) if sd > 0 else 0.0


class ConceptDriftTest:
    """The per-concept tests of one step: reference vs current :class:`~monitor.drift.stats.WindowStats`."""

    def __init__(self, config: DriftConfig | None = None) -> None:
        self.config = config or DriftConfig()

    def threshold(self, n_hypotheses: int) -> float:
        """Evidence needed to fire when ``n_hypotheses`` are tested in one step: log(ERT x H)."""
        return math.log(self.config.ert * max(n_hypotheses, 1))

    @staticmethod
    def _refine_prevalence(evidence, x_ref, n_ref, x_cur, n_cur, floor: float, limit: int = 4096) -> None:
        """Replace the Chernoff bound by the exact conditional (Fisher) tail where the bound is within reach of
        the threshold; the exact p-value is never larger than the bound, so this only sharpens the test."""
        rows = evidence[:2]
        cand = np.flatnonzero(rows.max(axis=0) >= floor)
        if len(cand) > limit:  # keep the cost bounded in a storm: refine the strongest
            cand = cand[np.argsort(rows.max(axis=0)[cand])[-limit:]]
        if not len(cand):
            return
        xr, xc = x_ref[cand], x_cur[cand]
        s = xr + xc
        up = rows[0, cand] > 0
        exact = np.zeros(len(cand))
        with np.errstate(divide="ignore"):
            if up.any():
                exact[up] = -hypergeom.logsf(xc[up] - 1, n_ref + n_cur, s[up], n_cur)
            if (~up).any():
                exact[~up] = -hypergeom.logcdf(xc[~up], n_ref + n_cur, s[~up], n_cur)
        exact = np.nan_to_num(exact, nan=0.0, posinf=np.finfo(np.float64).max)
        h = np.where(up, 0, 1)
        evidence[h, cand] = np.maximum(evidence[h, cand], exact)

    def run(self, reference: WindowStats, current: WindowStats) -> StepResult:
        cfg = self.config
        r, c = reference.concepts, current.concepts
        if r.n_concepts != c.n_concepts:
            raise ValueError(f"reference has {r.n_concepts} concepts, current {c.n_concepts}")
        n_r, n_c = r.n_images, c.n_images
        m = r.n_concepts
        evidence = np.zeros((4, m))
        tested = np.zeros((4, m), dtype=bool)
        if n_r == 0 or n_c == 0:
            empty = np.zeros(m)
            return StepResult(evidence, tested, tested.copy(), math.inf, 0, empty, empty, empty, empty, empty,
                              0.0, n_r, n_c)
        support = (r.presence + c.presence) >= cfg.min_support
        # only supported concepts are evaluated: the per-step cost is O(concepts with support), not O(all)
        idx = np.flatnonzero(support)
        if "prevalence" in cfg.kinds and len(idx):
            up, down = prevalence_evidence(r.presence[idx], n_r, c.presence[idx], n_c)
            evidence[0, idx], evidence[1, idx] = up, down
            tested[0, idx] = tested[1, idx] = True
        if "activation" in cfg.kinds and len(idx):
            up, down = activation_evidence(r.weight_sum[idx], r.weight_sq_sum[idx], n_r, r.weight_max[idx],
                                           c.weight_sum[idx], c.weight_sq_sum[idx], n_c, c.weight_max[idx])
            evidence[2, idx], evidence[3, idx] = up, down
            tested[2, idx] = tested[3, idx] = True
        n_h = int(tested.sum())
        thr = self.threshold(n_h)
        if "prevalence" in cfg.kinds and len(idx):
            self._refine_prevalence(evidence, r.presence, n_r, c.presence, n_c, max(1.0, thr - _chernoff_slack(n_c)))
        ref_prev, cur_prev, ref_mean, cur_mean, pooled_sd, ok = report_and_gates(r, c, cfg)
        fire = tested & ok & (evidence >= thr)
        score = js_divergence(r.weight_sum, c.weight_sum)
        return StepResult(evidence, tested, fire, thr, n_h, ref_prev, cur_prev, ref_mean, cur_mean, pooled_sd,
                          score, n_r, n_c)


def report_and_gates(ref, cur, cfg: DriftConfig):
    """What an alarm reports about reference ``ref`` and current ``cur`` (ConceptMoments with images), and the
    gates that may only suppress an alarm, per hypothesis row of HYPOTHESES: returns (reference prevalence, current
    prevalence, reference mean, current mean, pooled sd, ok of shape (4, concepts))."""
    n_r, n_c = max(ref.n_images, 1), max(cur.n_images, 1)
    ref_prev, cur_prev = ref.presence / n_r, cur.presence / n_c
    ref_mean, cur_mean = ref.weight_sum / n_r, cur.weight_sum / n_c
    n = n_r + n_c
    mu = (ref.weight_sum + cur.weight_sum) / n
    pooled_sd = np.sqrt(np.maximum((ref.weight_sq_sum + cur.weight_sq_sum) / n - mu * mu, 0.0))
    # min_count only suppresses alarms, so it cannot add false ones
    up_ok = cur.presence >= cfg.min_count
    down_ok = ref_prev * n_c >= cfg.min_count
    # a practical-significance floor for prevalence only: large windows make tiny moves "significant"
    big = np.abs(cur_prev - ref_prev) >= cfg.min_prevalence_change
    return ref_prev, cur_prev, ref_mean, cur_mean, pooled_sd, np.stack([up_ok & big, down_ok & big, up_ok, down_ok])


@dataclass
class _Active:
    alarm: Alarm
    below: int = 0


class AlarmBook:
    """Hysteresis over test results: one firing Alarm when a (concept, kind, direction) crosses the threshold, one
    resolved Alarm after its evidence stayed under ``clear_ratio`` x threshold for ``clear_steps`` tests."""

    def __init__(self, stream: str, concept_names: list[str], config: DriftConfig | None = None) -> None:
        self.stream = stream
        self.concept_names = list(concept_names)
        self.config = config or DriftConfig()
        self._active: dict[tuple[int, int], _Active] = {}  # (hypothesis row or -1 for stream, concept) -> state
        self.n_fired = 0

    @property
    def active(self) -> list[Alarm]:
        return [a.alarm for a in self._active.values()]

    @property
    def n_active(self) -> int:
        return len(self._active)

    def reset(self) -> None:
        """Forget every active alarm (no resolved records are raised)."""
        self._active.clear()

    def _alarm(self, res: StepResult, h: int, j: int, bounds: dict[str, float], state: str) -> Alarm:
        kind, direction = HYPOTHESES[h]
        ev = float(res.evidence[h, j])
        return Alarm(
            stream=self.stream, kind=kind, direction=direction, concept_index=int(j),
            concept=self.concept_names[j],
            reference_prevalence=float(res.ref_prevalence[j]), current_prevalence=float(res.cur_prevalence[j]),
            reference_mean=float(res.ref_mean[j]), current_mean=float(res.cur_mean[j]),
            effect_size=res.effect_size(h, j), score=ev, p_value=float(min(1.0, math.exp(-ev))),
            state=state, **bounds,
        )

    def _stream_alarm(self, res: StepResult, bounds: dict[str, float], state: str) -> Alarm:
        return Alarm(stream=self.stream, kind="stream", direction="none", concept_index=-1, concept="",
                     reference_prevalence=math.nan, current_prevalence=math.nan, reference_mean=math.nan,
                     current_mean=math.nan, effect_size=res.stream_score, score=res.stream_score,
                     p_value=math.nan, state=state, **bounds)

    def step(self, res: StepResult, window: tuple[float, float], reference: tuple[float, float],
             fired: tuple[float, int] | None = None) -> list[Alarm]:
        """Alarm transitions after one test. ``fired`` = (event time, item offset) of the tested batch, recorded in
        every alarm this step raises or resolves."""
        bounds = {"window_start": float(window[0]), "window_end": float(window[1]),
                  "reference_start": float(reference[0]), "reference_end": float(reference[1])}
        if fired is not None:
            bounds["event_time"], bounds["item_offset"] = float(fired[0]), int(fired[1])
        out: list[Alarm] = []
        clear_at = self.config.clear_ratio * res.threshold
        for key in list(self._active):
            h, j = key
            if h < 0:
                still = res.stream_score >= self.config.clear_ratio * (self.config.stream_threshold or math.inf)
            else:
                still = res.evidence[h, j] >= clear_at
                if HYPOTHESES[h][0] == "prevalence" and self.config.min_prevalence_change > 0:
                    # the same band as the evidence: fire at the floor, clear under clear_ratio x floor
                    change = abs(float(res.cur_prevalence[j]) - float(res.ref_prevalence[j]))
                    still = still and change >= self.config.clear_ratio * self.config.min_prevalence_change
            entry = self._active[key]
            entry.below = 0 if still else entry.below + 1
            if entry.below >= self.config.clear_steps:
                del self._active[key]
                out.append(self._stream_alarm(res, bounds, "resolved") if h < 0
                           else self._alarm(res, h, j, bounds, "resolved"))
        # np.nonzero of a 2-d mask costs ~15x a flat scan and a divmod (same keys, same row-major order)
        for h, j in zip(*np.divmod(np.flatnonzero(res.fire), res.fire.shape[1])):
            key = (int(h), int(j))
            if key in self._active:
                self._active[key].below = 0
                continue
            alarm = self._alarm(res, int(h), int(j), bounds, "firing")
            self._active[key] = _Active(alarm)
            out.append(alarm)
            self.n_fired += 1
        thr = self.config.stream_threshold
        if thr is not None and res.stream_score >= thr:
            key = (-1, -1)
            if key in self._active:
                self._active[key].below = 0
            else:
                alarm = self._stream_alarm(res, bounds, "firing")
                self._active[key] = _Active(alarm)
                out.append(alarm)
                self.n_fired += 1
        return out

    def state_dict(self) -> dict[str, Any]:
        keys = list(self._active)
        return {
            "n_fired": self.n_fired,
            "keys": np.array(keys, dtype=np.int64).reshape(-1, 2),
            "below": np.array([self._active[k].below for k in keys], dtype=np.int64),
            "alarms": [asdict(self._active[k].alarm) for k in keys],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_fired = int(state["n_fired"])
        self._active = {}
        for key, below, alarm in zip(state["keys"].tolist(), state["below"].tolist(), state["alarms"]):
            self._active[(int(key[0]), int(key[1]))] = _Active(Alarm(**alarm), int(below))
