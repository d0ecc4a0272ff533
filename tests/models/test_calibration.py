"""Interval calibration: the levels and their columns, conformal and normal quantiles,
interval closes."""

import json
import math

import numpy as np
import pytest

from closecast.models.calibration import (
    INTERVAL_COLUMNS,
    LEVEL_PERCENTS,
    LEVELS,
    MIN_QUANTILE,
    Calibration,
    bound_columns,
    close_intervals,
    fit_conformal,
    min_calibration_size,
    normal_calibration,
)
from closecast.models.interval_scores import coverage
from closecast.models.scale import SIGMA_FLOOR


def test_the_interval_columns_and_percents_derive_from_the_levels() -> None:
    """One definition of the levels (fractions); the names are made from it."""
    assert LEVELS == (0.8, 0.95)
    assert LEVEL_PERCENTS == (80, 95)
    assert INTERVAL_COLUMNS == ("lower_80", "upper_80", "lower_95", "upper_95")
    assert bound_columns(0.9) == ("lower_90", "upper_90")


@pytest.mark.parametrize(
    ("n", "lower", "upper"),
    [
        (39, (-16.0, -19.0), (16.0, 19.0)),  # ranks 4, 1 and 36, 39: the least n for 95%
        (49, (-20.0, -24.0), (20.0, 24.0)),  # 50·0.025 = 1.25 -> rank 1; 50·0.975 -> rank 49
    ],
)
def test_fit_conformal_takes_the_finite_sample_ranks(
    n: int, lower: tuple[float, float], upper: tuple[float, float]
) -> None:
    """Ranks ⌊(n + 1)·α/2⌋ and ⌈(n + 1)·(1 − α/2)⌉ of z = −(n − 1)/2 .. (n − 1)/2."""
    calibration = fit_conformal(np.arange(float(n)) - (n - 1) / 2)
    assert calibration.lower == lower and calibration.upper == upper
    assert calibration.n == n
    assert min_calibration_size((0.8, 0.95)) == 39


def test_fit_conformal_reaches_nominal_coverage_on_normal_draws() -> None:
    """Calibrated on 2,000 iid N(0, 1) draws, it covers fresh draws at 80% / 95% ± 2 points."""
    rng = np.random.default_rng(3)
    calibration = fit_conformal(rng.standard_normal(2000))
    fresh = rng.standard_normal(20000)
    for level, lo, hi in zip(calibration.levels, calibration.lower, calibration.upper, strict=True):
        assert coverage(np.full(20000, lo), np.full(20000, hi), fresh) == pytest.approx(
            level, abs=0.02
        )
    np.testing.assert_allclose(calibration.upper, [1.28, 1.96], atol=0.12)


@pytest.mark.parametrize(
    "z",
    [
        np.zeros(100),  # degenerate: every residual on the centre
        np.random.default_rng(4).exponential(1.0, 100),  # all above the centre
        -np.random.default_rng(5).exponential(1.0, 100),  # all below
        np.random.default_rng(6).standard_t(3, 50),
    ],
)
def test_calibrated_intervals_never_cross_and_never_have_zero_width(z: np.ndarray) -> None:
    """lower_95 ≤ lower_80 ≤ point ≤ upper_80 ≤ upper_95, strictly apart, whatever the residuals."""
    calibration = fit_conformal(z)
    lo80, lo95 = calibration.lower
    hi80, hi95 = calibration.upper
    assert lo95 <= lo80 <= -MIN_QUANTILE < 0 < MIN_QUANTILE <= hi80 <= hi95
    rng = np.random.default_rng(7)
    last = rng.uniform(1, 500, 200)
    center = rng.normal(0, 0.01, 200)
    sigma = np.maximum(rng.exponential(0.01, 200), SIGMA_FLOOR)
    bounds = close_intervals(last, center, sigma, calibration)
    point = last * np.exp(center)
    assert (bounds["lower_95"] <= bounds["lower_80"]).all()
    assert (bounds["lower_80"] < point).all() and (point < bounds["upper_80"]).all()
    assert (bounds["upper_80"] <= bounds["upper_95"]).all()


def test_fit_conformal_rejects_too_few_or_non_finite_residuals() -> None:
    """38 residuals cannot give a 95% quantile; a NaN residual is named."""
    with pytest.raises(ValueError, match=r"only 38 calibration residuals; .* at least 39"):
        fit_conformal(np.zeros(38))
    with pytest.raises(ValueError, match=r"z has a non-finite value"):
        fit_conformal(np.append(np.zeros(50), np.nan))
    with pytest.raises(ValueError, match=r"levels must be distinct central coverages"):
        fit_conformal(np.zeros(50), (0.8, 80))


def test_a_calibration_round_trips_through_json_and_refuses_crossing_quantiles() -> None:
    """to_dict/from_dict keep every float; quantiles that do not widen are a ValueError."""
    calibration = fit_conformal(np.random.default_rng(8).standard_normal(500))
    assert Calibration.from_dict(json.loads(json.dumps(calibration.to_dict()))) == calibration
    assert calibration.quantiles(0.95) == (calibration.lower[1], calibration.upper[1])
    with pytest.raises(ValueError, match=r"must widen with the level"):
        Calibration((0.8, 0.95), (-1.3, -1.0), (1.3, 2.0))
    with pytest.raises(ValueError, match=r"level 0.9 is not calibrated"):
        calibration.quantiles(0.9)


def test_normal_calibration_is_the_riskmetrics_interval() -> None:
    """±1.2816 and ±1.9600: EWMA σ̂ with these quantiles is the baseline."""
    calibration = normal_calibration()
    np.testing.assert_allclose(calibration.upper, [1.28155, 1.95996], atol=1e-5)
    np.testing.assert_allclose(calibration.lower, [-1.28155, -1.95996], atol=1e-5)


def test_close_intervals_scale_with_the_last_close_and_reject_a_zero_sigma() -> None:
    """Bounds are last · exp(center + q·σ̂); σ̂ = 0 is an error, not a zero-width interval."""
    calibration = Calibration((0.8, 0.95), (-1.0, -2.0), (1.5, 3.0))
    out = close_intervals(np.array([100.0]), np.array([0.0]), np.array([0.01]), calibration)
    assert out["lower_80"][0] == pytest.approx(100 * math.exp(-0.01))
    assert out["upper_95"][0] == pytest.approx(100 * math.exp(0.03))
    assert list(out) == ["lower_80", "upper_80", "lower_95", "upper_95"]
    with pytest.raises(ValueError, match=r"sigma must be > 0, got 0.0"):
        close_intervals(np.array([100.0]), np.array([0.0]), np.array([0.0]), calibration)
