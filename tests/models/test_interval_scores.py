"""Interval scores: the Gneiting–Raftery score, coverage, Kupiec and Christoffersen tests."""

import math
import warnings

import numpy as np
import pytest
from scipy.stats import chi2

from closecast.models.interval_scores import (
    christoffersen_pvalue,
    coverage,
    interval_score,
    kupiec_pvalue,
)


@pytest.fixture
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def _hits(n: int, misses: list[int]) -> np.ndarray:
    hits = np.ones(n, dtype=bool)
    hits[misses] = False
    return hits


# --- interval score and coverage ------------------------------------------------------------


def test_interval_score_is_width_plus_scaled_distance_of_a_miss() -> None:
    """Inside: the width; outside: width + (2 / alpha) × the distance to the nearer bound."""
    lower, upper = np.full(4, -1.0), np.full(4, 1.0)
    y = np.array([0.0, 1.0, 2.0, -3.0])
    np.testing.assert_allclose(interval_score(lower, upper, y, 0.2), [2.0, 2.0, 12.0, 22.0])
    np.testing.assert_allclose(interval_score(lower, upper, y, 0.05), [2.0, 2.0, 42.0, 82.0])


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5])
def test_interval_score_rejects_an_alpha_outside_0_1(alpha: float) -> None:
    """An alpha that is no miss probability is named in a one-line ValueError."""
    with pytest.raises(ValueError, match=f"alpha must be in \\(0, 1\\), got {alpha}"):
        interval_score(np.zeros(2), np.ones(2), np.zeros(2), alpha)


def test_interval_score_rejects_an_inverted_interval() -> None:
    """lower > upper is an error naming the position, not a negative width."""
    with pytest.raises(ValueError, match=r"lower > upper at position 1"):
        interval_score(np.array([0.0, 2.0]), np.array([1.0, 1.0]), np.zeros(2), 0.2)


def test_coverage_counts_outcomes_on_the_bounds_as_inside() -> None:
    """Coverage is the share of y in [lower, upper], bounds included."""
    y = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5, 3.0, 0.0])
    assert coverage(np.full(8, -1.0), np.full(8, 1.0), y) == 5 / 8


def test_coverage_of_nothing_is_an_error() -> None:
    """No observations: a ValueError saying so, not a NaN."""
    with pytest.raises(ValueError, match=r"0 observations"):
        coverage(np.array([]), np.array([]), np.array([]))


# --- Kupiec and Christoffersen --------------------------------------------------------------


def test_kupiec_is_one_at_exact_nominal_and_near_zero_far_from_it() -> None:
    """800 hits in 1,000 at 80% gives p = 1; 500 in 1,000 gives p ≈ 0."""
    assert kupiec_pvalue(_hits(1000, list(range(0, 1000, 5))), 0.8) == pytest.approx(1.0)
    assert kupiec_pvalue(_hits(1000, list(range(500))), 0.8) < 1e-10


def test_kupiec_matches_the_chi2_likelihood_ratio() -> None:
    """15 misses in 100 at 80%: LR = 2[15 ln(.15/.2) + 85 ln(.85/.8)], χ²(1) survival."""
    lr = 2 * (15 * math.log(0.15 / 0.2) + 85 * math.log(0.85 / 0.8))
    assert kupiec_pvalue(_hits(100, list(range(15))), 0.8) == pytest.approx(chi2.sf(lr, 1))


@pytest.mark.parametrize("all_hit", [True, False])
def test_coverage_tests_handle_no_misses_and_no_hits(all_hit: bool, no_warnings: None) -> None:
    """All inside (or all outside): the LR of the rate alone, no clustering term, no NaN warnings."""
    hits = np.full(100, all_hit)
    lr = -2 * 100 * math.log(0.95 if all_hit else 0.05)
    assert kupiec_pvalue(hits, 0.95) == pytest.approx(chi2.sf(lr, 1))
    assert christoffersen_pvalue(hits, 0.95) == pytest.approx(chi2.sf(lr, 2))
    assert christoffersen_pvalue(hits, 0.95) < 0.01


def test_christoffersen_flags_clustered_misses_that_kupiec_accepts() -> None:
    """20 misses in 100 at 80%: scattered passes both tests, in 2 runs of 10 fails Christoffersen."""
    scattered = _hits(100, list(np.random.default_rng(0).choice(100, 20, replace=False)))
    clustered = _hits(100, list(range(10, 20)) + list(range(60, 70)))
    assert kupiec_pvalue(clustered, 0.8) == pytest.approx(1.0)
    assert christoffersen_pvalue(scattered, 0.8) > 0.2
    assert christoffersen_pvalue(clustered, 0.8) < 1e-4


def test_christoffersen_counts_transitions_within_each_sequence_only() -> None:
    """Rows of a 2-D array are separate sequences: the same as a list, unlike concatenating."""
    a = _hits(50, [1, 7, 20, 33, 49])  # ends on a miss
    b = _hits(50, [0, 12, 25, 38, 44])  # starts on one
    pooled = christoffersen_pvalue(np.stack([a, b]), 0.9)
    assert pooled == christoffersen_pvalue([a, b], 0.9)
    assert pooled != christoffersen_pvalue(np.concatenate([a, b]), 0.9)
    assert kupiec_pvalue([a, b], 0.9) == kupiec_pvalue(np.concatenate([a, b]), 0.9)


@pytest.mark.parametrize("test", [kupiec_pvalue, christoffersen_pvalue])
def test_coverage_tests_reject_bad_input(test) -> None:
    """A nominal outside (0, 1), non-boolean hits or no hits at all are named errors."""
    with pytest.raises(ValueError, match=r"nominal coverage must be in \(0, 1\), got 80"):
        test(np.ones(10, dtype=bool), 80)
    with pytest.raises(ValueError, match=r"hits must be booleans"):
        test(np.array([0.5, 1.0]), 0.8)
    with pytest.raises(ValueError, match=r"at least 1 observation"):
        test(np.array([], dtype=bool), 0.8)
