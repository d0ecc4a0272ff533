"""Evaluation metrics on numbers small enough to check by hand."""

import numpy as np
import pandas as pd
import pytest
import torch

from closecast.models.calibration import close_intervals, normal_calibration
from closecast.models.encoding import Encoding
from closecast.models.forecaster import Forecaster
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import ScaleModel, spans_for_window
from closecast.tasks.modeling.evaluation import (
    evaluate_model,
    interval_metrics,
    newey_west_lags,
    paired_difference,
    per_ticker_metrics,
    score_forecasts,
    window_interval_scores,
)
from closecast.tasks.modeling.windows import WindowSet

LAST = np.array([100.0, 100.0, 50.0, 50.0])
ACTUAL = np.array([102.0, 99.0, 51.0, 50.5])


def test_a_perfect_forecast_has_skill_1() -> None:
    """Predicting the actual closes: zero errors, skill 1, every direction right."""
    m = score_forecasts(ACTUAL.copy(), ACTUAL, LAST)
    assert m["test_rmse"] == 0 and m["test_mae"] == 0 and m["test_mape"] == 0
    assert m["skill"] == 1.0
    assert m["test_directional_accuracy"] == 1.0


def test_the_naive_forecast_has_skill_0() -> None:
    """Predicting the last close scores exactly the naive baseline: skill 0."""
    m = score_forecasts(LAST.copy(), ACTUAL, LAST)
    assert m["test_rmse"] == pytest.approx(m["naive_rmse"])
    assert m["test_mae"] == pytest.approx(m["naive_mae"])
    assert m["skill"] == pytest.approx(0.0)


def test_errors_are_relative_to_the_last_close() -> None:
    """RMSE/MAE use error / last close; MAPE is in percent of the actual close."""
    # relative naive errors: -0.02, 0.01, -0.02, -0.01
    m = score_forecasts(LAST.copy(), ACTUAL, LAST)
    assert m["naive_rmse"] == pytest.approx(np.sqrt((4 + 1 + 4 + 1) * 1e-4 / 4))
    assert m["naive_mae"] == pytest.approx(0.015)
    # predicted 101, 100, 50, 50: relative errors -0.01, 0.01, -0.02, -0.01
    m = score_forecasts(np.array([101.0, 100.0, 50.0, 50.0]), ACTUAL, LAST)
    assert m["test_rmse"] == pytest.approx(np.sqrt((1 + 1 + 4 + 1) * 1e-4 / 4))
    assert m["test_mae"] == pytest.approx(0.0125)
    expected_mape = np.mean([1 / 102, 1 / 99, 1 / 51, 0.5 / 50.5]) * 100
    assert m["test_mape"] == pytest.approx(expected_mape)
    assert m["skill"] == pytest.approx(1 - np.sqrt(7 / 10))


def test_directional_accuracy_counts_predicted_moves_with_the_actual_sign() -> None:
    """Up/down/up/flat predicted against up/down/up/up actual moves: 3 of 4 right."""
    predicted = np.array([101.0, 99.5, 52.0, 50.0])  # +, -, +, 0
    m = score_forecasts(predicted, ACTUAL, LAST)  # actual moves +, -, +, +
    assert m["test_directional_accuracy"] == pytest.approx(0.75)


def test_scoring_refuses_empty_or_non_finite_predictions() -> None:
    """No windows, or a NaN prediction: a ValueError that says which."""
    with pytest.raises(ValueError, match="no test windows"):
        score_forecasts(np.empty(0), np.empty(0), np.empty(0))
    with pytest.raises(ValueError, match="1 predictions are not finite"):
        score_forecasts(np.array([np.nan, 1.0]), np.ones(2), np.ones(2))


def test_per_ticker_metrics_are_in_price_units() -> None:
    """Per ticker: RMSE/MAE in currency, the naive RMSE beside it, and skill."""
    predictions = pd.DataFrame(
        {
            "ticker": ["A", "A", "B", "B"],
            "last_close": LAST,
            "actual_close": ACTUAL,
            "predicted_close": [101.0, 100.0, 51.0, 50.5],
        }
    )
    table = per_ticker_metrics(predictions).set_index("ticker")
    assert list(table["windows"]) == [2, 2]
    assert table.loc["A", "rmse"] == pytest.approx(1.0)  # errors -1, +1
    assert table.loc["A", "mae"] == pytest.approx(1.0)
    assert table.loc["A", "naive_rmse"] == pytest.approx(np.sqrt((4 + 1) / 2))
    assert table.loc["B", "rmse"] == 0.0 and table.loc["B", "skill"] == 1.0
    assert table.loc["A", "skill"] == pytest.approx(1 - 1 / np.sqrt(2.5))


# Two 3-day windows, one rising and one falling, whose next closes are 12.5 and 18.0.
CLOSES = np.array([[10.0, 11.0, 12.0], [20.0, 19.0, 18.0]])


def _two_windows(windows: np.ndarray) -> WindowSet:
    """CLOSES' windows (2, 3, C) as a test span, the closes in column 0."""
    return WindowSet(
        windows=windows,
        next_close=np.array([12.5, 18.0]),
        tickers=np.array(["A", "B"], dtype=object),
        target_dates=np.array(["2024-01-02", "2024-01-02"], dtype="datetime64[ns]"),
        baseline_sigma=np.array([0.01, 0.02]),
    )


def test_evaluate_forecaster_scores_the_model_and_naive_on_the_same_windows() -> None:
    """A model that predicts a zero return is the naive forecast: skill 0, one row per window."""
    torch.manual_seed(0)
    module = LSTMForecaster(LSTMConfig(hidden_size=4, distribution="none"), n_features=1)
    with torch.no_grad():  # output exactly 0 = a zero log return = tomorrow's close is today's
        module.head.weight.zero_()
        module.head.bias.zero_()
    forecaster = Forecaster(module, Encoding(features=("close",)), window=3)
    test = _two_windows(CLOSES[:, :, None])  # (2, 3, 1)
    evaluation = evaluate_model(forecaster, test)
    np.testing.assert_allclose(evaluation.predictions["predicted_close"], [12.0, 18.0])
    assert evaluation.metrics["skill"] == pytest.approx(0.0)
    assert evaluation.metrics["naive_rmse"] == pytest.approx(np.sqrt((0.5 / 12) ** 2 / 2))
    assert list(evaluation.per_ticker["ticker"]) == ["A", "B"]


def test_an_untrained_distributional_model_is_the_har_recipe() -> None:
    """The default head at its zero initialisation (location 0, multiplier 1) forecasts
    tomorrow = today with the HAR scale's intervals: skill 0, the recipe's bounds, and the
    heads' validation scores among the metrics."""
    module = LSTMForecaster(LSTMConfig(hidden_size=4), n_features=1)  # normal, zero head
    scale = ScaleModel(spans_for_window(3), (0.5, 0.2, 0.3, 0.1))
    calibration = normal_calibration()
    intervals = Intervals(scale, calibration)
    forecaster = Forecaster(
        module,
        Encoding(features=("close",)),
        window=3,
        intervals=intervals,
        head="lstm",
        head_scores={"lstm": 0.02, "har": 0.021},
    )
    windows = np.stack([CLOSES, CLOSES * 1.02, CLOSES * 0.97], axis=-1)  # (2, 3, 3)
    test = _two_windows(windows)  # close, high, low
    evaluation = evaluate_model(forecaster, test)
    np.testing.assert_allclose(evaluation.predictions["predicted_close"], [12.0, 18.0])
    assert evaluation.metrics["skill"] == pytest.approx(0.0)
    sigma_hat = intervals.base_scale(windows, ("close", "high", "low"))
    recipe = close_intervals(test.last_close, np.zeros(2), sigma_hat, calibration)
    for column, bounds in recipe.items():
        np.testing.assert_allclose(evaluation.predictions[column], bounds, rtol=1e-12)
    assert evaluation.metrics["val_interval_score_lstm"] == 0.02
    assert evaluation.metrics["val_interval_score_har"] == 0.021


DATES = np.repeat(pd.date_range("2024-01-02", periods=4, freq="B").to_numpy(), 2)  # 2 tickers


def test_paired_difference_averages_tickers_per_session_and_uses_newey_west() -> None:
    """Daily differentials 1, 3, 2, 6 (two tickers each, ±0.5 around them), one lag: mean 3,
    γ₀ = 14/4, γ₁ = −3/4, so the variance of the mean is (3.5 − 0.75) / 4 = 0.6875; the
    interval is t(3)'s 95% around 3 and p = P(t(3) ≤ 3 / √0.6875)."""
    daily = np.array([1.0, 3.0, 2.0, 6.0])
    a = np.repeat(daily, 2) + np.tile([0.5, -0.5], 4)  # (8,): the tickers differ, dates agree
    result = paired_difference(a, np.zeros(8), DATES, lags=1)
    se = np.sqrt(0.6875)
    assert (result.mean, result.sessions, result.lags) == (3.0, 4, 1)
    assert result.low == pytest.approx(3.0 - 3.182446 * se, abs=1e-5)
    assert result.high == pytest.approx(3.0 + 3.182446 * se, abs=1e-5)
    assert result.pvalue == pytest.approx(0.981853, abs=1e-5)  # t(3).cdf(3.6181): a is worse
    flipped = paired_difference(np.zeros(8), a, DATES, lags=1)
    assert flipped.pvalue == pytest.approx(1 - result.pvalue)  # b − a: a is better beyond chance


def test_paired_difference_with_no_variance_gives_no_interval() -> None:
    """One session, or identical forecasts: no interval; p 0.5 at a tie, NaN otherwise."""
    one = paired_difference(np.array([1.0, 2.0]), np.zeros(2), DATES[:2])
    assert one.sessions == 1 and np.isnan(one.low) and np.isnan(one.pvalue)
    tie = paired_difference(np.ones(8), np.ones(8), DATES)
    assert tie.mean == 0 and tie.pvalue == 0.5 and np.isnan(tie.high)
    assert paired_difference(np.empty(0), np.empty(0), DATES[:0]).sessions == 0


@pytest.mark.parametrize(("n", "lags"), [(1, 0), (2, 1), (20, 2), (60, 3), (250, 4)])
def test_newey_west_lags_grow_slowly_with_the_sessions(n: int, lags: int) -> None:
    """⌊4 (n / 100)^(2/9)⌋, at most n − 1."""
    assert newey_west_lags(n) == lags


def test_window_interval_scores_average_to_the_run_level_score() -> None:
    """Each window's mean of its 80% and 95% scores; their mean is test_interval_score."""
    bounds = close_intervals(LAST, np.zeros(4), np.full(4, 0.01), normal_calibration())
    scores = window_interval_scores(bounds, ACTUAL, LAST)
    run = interval_metrics(bounds, ACTUAL, LAST)
    assert scores.shape == (4,)
    assert scores.mean() == pytest.approx((run["interval_score_80"] + run["interval_score_95"]) / 2)
