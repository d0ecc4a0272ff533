"""The interval scale σ̂: EWMA and HAR scales, their features and spans."""

import json
import math

import numpy as np
import pytest

from closecast.models.encoding import Encoding
from closecast.models.scale import (
    SIGMA_FLOOR,
    ScaleModel,
    ewma_sigma,
    fit_scale,
    last_scale_features,
    predict_scale,
    scale_features,
    scale_history,
    spans_for_window,
    window_sigma,
)

# --- EWMA -----------------------------------------------------------------------------------


def test_ewma_sigma_equals_the_hand_recursion() -> None:
    """σ̂²[t] = (λ s[t−1] + r_t²) / (λ w[t−1] + 1), from s = w = 0: weights of the seen returns."""
    r = np.array([0.01, -0.02, 0.015])
    lam = 0.94
    s0, w0 = 0.01**2, 1.0
    s1, w1 = lam * s0 + 0.02**2, lam * w0 + 1
    s2, w2 = lam * s1 + 0.015**2, lam * w1 + 1
    expected = np.sqrt([s0 / w0, s1 / w1, s2 / w2])
    np.testing.assert_allclose(ewma_sigma(r, lam), expected, rtol=1e-12)


def test_ewma_sigma_converges_to_the_riskmetrics_recursion() -> None:
    """After 600 days it equals σ²(t+1) = λσ²(t) + (1 − λ) r_t², whatever that was seeded with."""
    r = np.random.default_rng(0).normal(0, 0.01, 600)
    variance = 0.05**2  # a poor seed on purpose
    for value in r:
        variance = 0.94 * variance + 0.06 * value**2
    assert ewma_sigma(r)[-1] == pytest.approx(math.sqrt(variance), rel=1e-9)


def test_ewma_sigma_runs_over_windows_along_the_last_axis() -> None:
    """A (N, n) array gives each row's own path; a flat window gets the floor, not 0."""
    rng = np.random.default_rng(1)
    windows = np.vstack([rng.normal(0, 0.02, (2, 9)), np.zeros((1, 9))])  # (3, 9)
    out = ewma_sigma(windows)
    assert out.shape == (3, 9)
    for row, path in zip(windows, out, strict=True):
        np.testing.assert_allclose(path, ewma_sigma(row))
    assert (out[2] == SIGMA_FLOOR).all() and SIGMA_FLOOR > 0


def test_ewma_sigma_rejects_a_bad_lambda_or_a_nan() -> None:
    """λ outside (0, 1) and a NaN return are named in one-line ValueErrors."""
    with pytest.raises(ValueError, match=r"lam must be in \(0, 1\), got 1.0"):
        ewma_sigma(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match=r"non-finite value nan at index \(2,\)"):
        ewma_sigma(np.array([0.01, 0.0, np.nan]))


# --- scale ----------------------------------------------------------------------------------

CLOSE = np.array([100.0, 101.0, 99.0, 102.0, 104.0, 103.0])
HIGH = CLOSE * 1.01
LOW = CLOSE * np.array([0.99, 0.98, 0.99, 0.97, 0.99, 0.98])


def test_scale_features_are_trailing_means_of_moves_and_ranges() -> None:
    """Row t: mean |log return| and mean log(high/low) over spans ending at t; NaN before."""
    x = scale_features(CLOSE, HIGH, LOW, (1, 2))
    assert x.shape == (6, 4)
    moves = np.abs(np.diff(np.log(CLOSE)))
    ranges = np.log(HIGH / LOW)
    np.testing.assert_allclose(x[2], [moves[1], moves[:2].mean(), ranges[2], ranges[1:3].mean()])
    assert np.isnan(x[0, 0]) and np.isnan(x[1, 1]) and np.isnan(x[0, 3])
    assert np.isfinite(x[1, [0, 2, 3]]).all() and np.isfinite(x[2:]).all()


def test_scale_features_of_windows_equal_the_series_at_each_window_end() -> None:
    """Windows of scale_history rows give, in their last row, the series' complete feature row."""
    spans = (1, 2, 4)
    rows = scale_history(spans)
    assert rows == 5
    assert scale_history() == 10  # the default spans fit the LSTM's 10-row window exactly
    series = scale_features(CLOSE, HIGH, LOW, spans)  # (6, 6)
    windows = [np.lib.stride_tricks.sliding_window_view(a, rows) for a in (CLOSE, HIGH, LOW)]
    last = scale_features(*windows, spans)[:, -1]  # (2, 5, 6) -> (2, 6)
    np.testing.assert_allclose(last, series[rows - 1 :])
    assert np.isfinite(last).all()


def test_last_scale_features_are_the_last_row_to_the_bit() -> None:
    """The last row alone equals scale_features' last row exactly, NaN for a span too long."""
    rng = np.random.default_rng(5)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (40, 10)), axis=1))  # (N, T)
    high, low = (
        close * rng.uniform(1.0, 1.03, close.shape),
        close * rng.uniform(0.97, 1.0, close.shape),
    )
    for spans in ((1, 5, 9), (1, 2, 4, 10)):
        full = scale_features(close, high, low, spans)[:, -1, :]  # (N, T, 2S) -> (N, 2S)
        last = last_scale_features(close, high, low, spans)
        np.testing.assert_array_equal(last, full)
    assert (
        np.isnan(last[:, 3]).all() and np.isfinite(last[:, 7]).all()
    )  # 10 returns: no; ranges: yes
    with pytest.raises(ValueError, match="high >= low"):
        last_scale_features(close, low, high, (1,))


def test_scale_features_reject_bad_spans_and_prices() -> None:
    """A span of 0 and a high below its low are named errors."""
    with pytest.raises(ValueError, match=r"spans must be positive day counts, got \(0, 5\)"):
        scale_features(CLOSE, HIGH, LOW, (0, 5))
    with pytest.raises(ValueError, match=r"high >= low"):
        scale_features(CLOSE, LOW, HIGH, (1,))


def test_fit_scale_recovers_non_negative_coefficients_and_skips_nan_rows() -> None:
    """|r| = 0.5·f0 + 0.8·f4 is recovered; a NaN row is ignored; the model survives JSON."""
    rng = np.random.default_rng(2)
    x = rng.uniform(0.001, 0.03, (400, 6))
    target = (0.5 * x[:, 0] + 0.8 * x[:, 4]) * rng.choice([-1, 1], 400)
    x[0] = np.nan
    model = fit_scale(x, target, (1, 5, 22))
    np.testing.assert_allclose(model.coefficients, [0.5, 0, 0, 0, 0.8, 0], atol=1e-9)
    assert ScaleModel.from_dict(json.loads(json.dumps(model.to_dict()))) == model
    np.testing.assert_allclose(predict_scale(model, x[1:3]), np.abs(target[1:3]))
    assert np.isnan(predict_scale(model, x[:1])).all()


def test_a_flat_window_gets_the_volatility_floor() -> None:
    """Closes that never move, high = low: every scale gives SIGMA_FLOOR > 0, never 0."""
    flat = np.full(10, 50.0)
    model = ScaleModel((1, 5, 9), (0.1, 0.1, 0.1, 0.2, 0.2, 0.2))
    features = scale_features(flat, flat, flat, model.spans)[-1]  # (6,)
    assert predict_scale(model, features) == SIGMA_FLOOR > 0
    assert window_sigma(np.diff(np.log(flat))) == SIGMA_FLOOR
    assert ewma_sigma(np.diff(np.log(flat)))[-1] == SIGMA_FLOOR


def test_fit_and_predict_scale_reject_mismatched_shapes() -> None:
    """Features of the wrong width, too few rows or a negative coefficient are named errors."""
    with pytest.raises(ValueError, match=r"features must be \(N, 6\)"):
        fit_scale(np.ones((10, 4)), np.ones(10), (1, 5, 22))
    with pytest.raises(ValueError, match=r"only 3 complete rows"):
        fit_scale(np.ones((3, 6)), np.ones(3), (1, 5, 22))
    with pytest.raises(ValueError, match=r"the scale model expects 6"):
        predict_scale(ScaleModel((1, 5, 22), (0.1,) * 6), np.ones((2, 4)))
    with pytest.raises(ValueError, match=r"coefficients >= 0"):
        ScaleModel.from_dict({"spans": [1, 5, 22], "coefficients": [0.1, -0.1, 0, 0, 0, 0]})


def test_window_sigma_is_the_encodings_volatility_as_a_fraction() -> None:
    """The window's own σ equals closecast.models.encoding's (percent) divided by 100."""
    windows = np.stack([CLOSE, CLOSE, CLOSE], axis=-1)[None]  # (1, T, F)
    expected = Encoding(("close", "volume", "open")).volatility(windows) / 100
    np.testing.assert_allclose(window_sigma(np.diff(np.log(CLOSE))), expected[0])
    with pytest.raises(ValueError, match=r"non-finite"):
        window_sigma(np.array([0.01, np.inf]))


@pytest.mark.parametrize(
    ("window", "spans"), [(10, (1, 5, 9)), (30, (1, 5, 9)), (5, (1, 4)), (2, (1,))]
)
def test_spans_for_window_fit_inside_the_window(window: int, spans: tuple[int, ...]) -> None:
    """The scale's spans never need more rows than the model's window holds."""
    assert spans_for_window(window) == spans
    assert scale_history(spans) <= window


def test_spans_for_window_refuses_a_one_row_window() -> None:
    with pytest.raises(ValueError, match="at least 2 rows, got 1"):
        spans_for_window(1)
