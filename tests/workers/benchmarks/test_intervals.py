"""The drift bench's intervals: the exact Poisson interval checked against its defining tail equations (Poisson
tails summed here with math, not scipy) and published values, the median's order-statistic interval against its
binomial coverage, and the band verdicts."""

from __future__ import annotations

import math

import pytest

from workers.benchmarks import intervals


def _poisson_cdf(k: int, mean: float) -> float:
    """P(X <= k) for X ~ Poisson(mean), summed term by term."""
    term, total = math.exp(-mean), 0.0
    for i in range(k + 1):
        if i:
            term *= mean / i
        total += term
    return total


@pytest.mark.parametrize("count", [1, 2, 5, 13, 34, 100])
def test_the_poisson_interval_solves_its_two_tail_equations(count):
    lo, hi = intervals.poisson_mean_ci(count)
    assert 1.0 - _poisson_cdf(count - 1, lo) == pytest.approx(0.025, rel=1e-9)  # P(X >= count | lo)
    assert _poisson_cdf(count, hi) == pytest.approx(0.025, rel=1e-9)  # P(X <= count | hi)
    assert lo < count < hi


def test_the_poisson_interval_matches_published_values():
    # Garwood's exact 95 % limits as tabulated (e.g. Ulm 1990): 1 -> 0.0253, 5.572; 10 -> 4.795, 18.39
    assert intervals.poisson_mean_ci(1) == pytest.approx((0.02532, 5.5716), abs=1e-4)
    assert intervals.poisson_mean_ci(10) == pytest.approx((4.7954, 18.3904), abs=1e-4)


def test_no_alarm_gives_the_one_sided_bound():
    lo, hi = intervals.poisson_mean_ci(0)
    assert lo == 0.0 and hi == pytest.approx(2.99573, abs=1e-5)
    assert _poisson_cdf(0, hi) == pytest.approx(0.05)  # P(X = 0 | hi) = 1 - level


@pytest.mark.parametrize("bad", [-1, 2.5])
def test_a_count_that_is_not_a_non_negative_integer_is_refused(bad):
    with pytest.raises(ValueError, match="non-negative integer"):
        intervals.poisson_mean_ci(bad)


def test_the_run_length_interval_is_items_over_the_count_interval():
    # the third round's synthetic null: 34 alarms in 200,000 items at ERT 5,000 is 1.18 x ERT
    lo, hi = intervals.run_length_ratio_ci(200_000, 34, 5000.0)
    m_lo, m_hi = intervals.poisson_mean_ci(34)
    assert (lo, hi) == pytest.approx((40.0 / m_hi, 40.0 / m_lo))
    assert lo < 200_000 / 34 / 5000 < hi
    assert (round(lo, 2), round(hi, 2)) == (0.84, 1.70)


def test_a_censored_null_has_only_a_lower_bound():
    lo, hi = intervals.run_length_ratio_ci(30_000, 0, 5000.0)
    assert hi is None and lo == pytest.approx(6.0 / 2.99573, rel=1e-5)


def _coverage(n: int, j: int) -> float:
    return 1.0 - 2.0 * sum(math.comb(n, i) for i in range(j)) / 2 ** n


def test_the_median_interval_of_ten_runs_is_the_second_and_ninth_order_statistics():
    # the lead's ten x3 delays; sorted: 160 160 224 288 352 352 352 480 480 480
    delays = [352, 288, 480, 160, 480, 224, 160, 352, 352, 480]
    ci, coverage = intervals.median_ci(delays)
    assert ci == (160.0, 480.0)
    assert coverage == pytest.approx(_coverage(10, 2)) and coverage == pytest.approx(1 - 22 / 1024)
    assert _coverage(10, 3) < 0.95 <= coverage  # rank 3 would fall short: 2 is the largest rank that covers


@pytest.mark.parametrize("n", range(6, 40))
def test_the_median_interval_uses_the_innermost_ranks_that_still_cover(n):
    ci, coverage = intervals.median_ci(range(n))  # x_(k) = k - 1
    j = int(ci[0]) + 1
    assert ci[1] == n - j and coverage == pytest.approx(_coverage(n, j))
    assert coverage >= 0.95 > _coverage(n, j + 1)


def test_too_few_runs_have_no_95_percent_median_interval():
    assert intervals.median_ci([320, 480]) == (None, 0.5)
    ci, coverage = intervals.median_ci([1, 2, 3, 4, 5])
    assert ci is None and coverage == pytest.approx(1 - 2 / 32)
    assert intervals.median_ci([]) == (None, 0.0)


@pytest.mark.parametrize(("point", "interval", "verdict"), [
    (1.3, (1.1, 1.6), "met_with_confidence"),
    (1.18, (0.84, 1.70), "met"),
    (2.18, (1.4, 3.5), "missed"),
    (3.0, (2.2, 4.1), "missed_with_confidence"),
    (0.6, (0.4, 0.9), "missed_with_confidence"),
    (8.0, (4.0, None), "missed_with_confidence"),  # censored: the upper end is infinite
    (1.5, (1.2, None), "met"),
    (1.5, None, "met"),
    (2.5, None, "missed"),
])
def test_a_band_verdict_reads_the_interval_against_the_band(point, interval, verdict):
    assert intervals.band_verdict(point, interval, 1.0, 2.0) == verdict
    assert verdict in intervals.VERDICTS


def test_a_one_sided_target_takes_an_infinite_lower_end():
    assert intervals.band_verdict(352, (160, 480), -math.inf, 250) == "missed"
    assert intervals.band_verdict(200, (160, 240), -math.inf, 250) == "met_with_confidence"


def test_dispersion_p_tells_equal_seeds_from_unequal_ones():
    assert intervals.dispersion_p([20, 20, 20]) == pytest.approx(1.0)
    assert intervals.dispersion_p([5, 40, 20]) < 1e-4
    assert intervals.dispersion_p([12]) is None and intervals.dispersion_p([0, 0]) is None


def test_censored_median_counts_a_missed_detection_as_the_horizon():
    assert intervals.censored_median([352, None, 160], 5000) == 352.0
    assert intervals.censored_median([160, 224, None, None], 5000) == (224 + 5000) / 2
    assert math.isnan(intervals.censored_median([], 5000))
