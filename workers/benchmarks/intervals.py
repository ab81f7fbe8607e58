"""How sure a benchmark figure is: exact intervals for the drift bench's no-drift run lengths (a Poisson count of
false alarms) and detection delays (a median of a few runs), and the verdict of a target band given its interval.

The formulas and what they assume are in docs/benchmarks.md (section "drift", "Issue 15, fourth round").
"""

from __future__ import annotations

import math
import statistics
from typing import Sequence

from scipy import stats

__all__ = ["VERDICTS", "band_verdict", "censored_median", "dispersion_p", "median_ci", "poisson_mean_ci", "run_length_ratio_ci"]

# Ordered from best to worst. "met": the point estimate is inside the band but the interval is not; "missed": the
# point estimate is outside but the interval still reaches the band.
VERDICTS = ("met_with_confidence", "met", "missed", "missed_with_confidence")


def poisson_mean_ci(count: int, level: float = 0.95) -> tuple[float, float]:
    """Exact (Garwood) two-sided interval for the mean of a Poisson variable observed at ``count``.

    The bounds solve P(X >= count | lo) = (1 - level)/2 and P(X <= count | hi) = (1 - level)/2, which the gamma /
    chi-square identity turns into quantiles. At ``count`` 0 the lower bound is 0 and the upper bound is the
    one-sided one, P(X = 0 | hi) = 1 - level, i.e. hi = -log(1 - level).
    """
    if count < 0 or int(count) != count:
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if count == 0:
        return 0.0, -math.log1p(-level)
    tail = (1.0 - level) / 2.0
    return float(stats.chi2.ppf(tail, 2 * count) / 2.0), float(stats.chi2.ppf(1.0 - tail, 2 * count + 2) / 2.0)


def run_length_ratio_ci(items: int, alarms: int, ert: float, level: float = 0.95) -> tuple[float, float | None]:
    """Interval for (mean items between false alarms) / ERT, from ``alarms`` false alarms in ``items`` items.

    Alarms are taken as a Poisson count with mean items / run length, so the run-length interval is items over the
    count interval, reversed. With no alarm only a lower bound exists (the upper end is None): the one-sided bound
    at ``level``, the honest statement of a censored run.
    """
    if items <= 0:
        raise ValueError(f"items must be positive, got {items!r}")
    if ert <= 0:
        raise ValueError(f"ert must be positive, got {ert!r}")
    lo_mean, hi_mean = poisson_mean_ci(alarms, level)
    lo = items / hi_mean / ert
    return lo, (None if lo_mean == 0.0 else items / lo_mean / ert)


def censored_median(values: Sequence[float | None], censor: float) -> float:
    """The median of delays where None (nothing detected within the horizon) counts as ``censor``; NaN when empty."""
    vals = [censor if v is None else v for v in values]
    return float(statistics.median(vals)) if vals else math.nan


def median_ci(values: Sequence[float], level: float = 0.95) -> tuple[tuple[float, float] | None, float]:
    """Distribution-free interval for a median from order statistics: ([x_(j), x_(n+1-j)], its exact coverage).

    For any continuous distribution the number of runs below the median is Binomial(n, 1/2), so [x_(j), x_(n+1-j)]
    covers the median with probability 1 - 2 P(B <= j - 1); j is the largest rank that keeps that at least
    ``level``. With too few runs even [min, max] falls short (n < 6 at 95 %): the interval is None and the coverage
    returned is that of [min, max]. Ties (quantised delays) only make the coverage larger.
    """
    xs = sorted(float(v) for v in values)
    n = len(xs)
    if n == 0:
        return None, 0.0
    j = 0
    while j + 1 <= n - j and 1.0 - 2.0 * stats.binom.cdf(j, n, 0.5) >= level:
        j += 1  # [x_(j+1), x_(n-j)] still covers at level
    if j == 0:
        return None, float(1.0 - 2.0 * stats.binom.cdf(0, n, 0.5))
    return (xs[j - 1], xs[n - j]), float(1.0 - 2.0 * stats.binom.cdf(j - 1, n, 0.5))


def band_verdict(point: float, interval: tuple[float, float | None] | None, lo: float, hi: float) -> str:
    """Where a figure stands against the band [lo, hi] (use -inf / inf for a one-sided target), one of VERDICTS.
    An interval's missing upper end (a censored figure) is +infinity."""
    inside = lo <= point <= hi
    if interval is None:
        return "met" if inside else "missed"
    a, b = interval[0], math.inf if interval[1] is None else interval[1]
    if lo <= a and b <= hi:
        return "met_with_confidence"
    if inside:
        return "met"
    return "missed_with_confidence" if b < lo or a > hi else "missed"


def dispersion_p(counts: Sequence[int]) -> float | None:
    """p-value of the index-of-dispersion test that per-seed alarm counts (equal items per seed) share one Poisson
    mean. A small value says the seeds' rates differ (each seed calibrates on its own reference), so the pooled
    Poisson interval is too narrow for the bench's setup as a whole. None with fewer than two seeds or no alarm."""
    k = len(counts)
    total = sum(counts)
    if k < 2 or total == 0:
        return None
    mean = total / k
    statistic = sum((c - mean) ** 2 for c in counts) / mean
    return float(stats.chi2.sf(statistic, k - 1))
