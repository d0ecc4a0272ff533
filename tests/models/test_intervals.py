"""The interval method: fit_intervals' recipe, Intervals' bounds, and the recipe on real data."""

import json
from dataclasses import dataclass

import numpy as np
import pytest

from closecast.models.calibration import (
    close_intervals,
    fit_conformal,
    min_calibration_size,
    normal_calibration,
)
from closecast.models.interval_scores import coverage, interval_score
from closecast.models.intervals import (
    SCALE_COLUMNS,
    Intervals,
    fit_intervals,
    window_scale_inputs,
)
from closecast.models.scale import (
    ewma_sigma,
    fit_scale,
    predict_scale,
    scale_features,
    scale_history,
    spans_for_window,
)

COLUMNS = ("close", *SCALE_COLUMNS)  # a close-only model's windows


@dataclass
class Split:
    """Windows as tasks' WindowSet holds them: close first."""

    windows: np.ndarray  # (N, T, C)
    tickers: np.ndarray  # (N,)
    next_close: np.ndarray  # (N,)

    @property
    def last_close(self) -> np.ndarray:
        return self.windows[:, -1, 0]


@dataclass
class Drift:
    """A point forecast of last close · e^drift (0: the naive forecast)."""

    window: int
    drift: float = 0.0
    features: tuple[str, ...] = ("close",)

    def predict_windows(self, windows: np.ndarray, tickers: np.ndarray) -> np.ndarray:
        return windows[:, -1, 0] * np.exp(self.drift)


def random_split(n: int, window: int = 10, seed: int = 0) -> Split:
    """n windows of a random walk with highs and lows around the close."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (n, window + 1)), axis=1))  # (n, T + 1)
    spread = np.exp(rng.uniform(0.001, 0.02, (n, window + 1)))
    windows = np.stack([close, close * spread, close / spread], axis=-1)[:, :-1]  # (n, T, 3)
    return Split(windows, np.array(["AAA"] * n, dtype=object), close[:, -1])


def test_fit_intervals_fits_the_scale_on_train_and_calibrates_on_train_and_validation() -> None:
    """The scale comes from the training windows only; z of both splits make the quantiles."""
    train, validation = random_split(300, seed=1), random_split(100, seed=2)
    model = Drift(window=10, drift=0.001)
    intervals = fit_intervals(model, COLUMNS, train, validation)
    spans = spans_for_window(10)
    scale = fit_scale(
        window_scale_inputs(train.windows, COLUMNS, spans),
        np.log(train.next_close / train.last_close),
        spans,
    )
    assert intervals.scale == scale
    z = [
        (
            np.log(s.next_close / s.last_close)
            - np.log(model.predict_windows(s.windows, s.tickers) / s.last_close)
        )
        / predict_scale(scale, window_scale_inputs(s.windows, COLUMNS, spans))
        for s in (train, validation)
    ]
    assert intervals.calibration == fit_conformal(np.concatenate(z))
    assert intervals.calibration.n == 400


def test_too_few_windows_to_calibrate_on_give_normal_quantiles() -> None:
    few = min_calibration_size() - 1
    intervals = fit_intervals(
        Drift(window=10), COLUMNS, random_split(few - 10, seed=3), random_split(10, seed=4)
    )
    assert intervals.calibration == normal_calibration()


def test_fit_intervals_refuses_windows_whose_features_are_not_first() -> None:
    with pytest.raises(ValueError, match=r"expected the features first: \('close', 'high'"):
        fit_intervals(
            Drift(window=10), ("high", "close", "low"), random_split(50), random_split(50)
        )


def test_intervals_draw_around_the_point_forecast_and_round_trip_through_json() -> None:
    """`around` is close_intervals of the window's scale, centred on the point forecast."""
    split = random_split(200, seed=5)
    intervals = fit_intervals(Drift(window=10), COLUMNS, split, random_split(50, seed=6))
    point = split.last_close * 1.002
    bounds = intervals.around(point, split.windows, COLUMNS)
    sigma = predict_scale(
        intervals.scale, window_scale_inputs(split.windows, COLUMNS, intervals.scale.spans)
    )
    expected = close_intervals(
        split.last_close, np.log(point / split.last_close), sigma, intervals.calibration
    )
    assert bounds.keys() == expected.keys()
    for column, values in expected.items():
        np.testing.assert_array_equal(bounds[column], values)
    assert (bounds["lower_80"] < point).all() and (point < bounds["upper_80"]).all()
    assert Intervals.from_dict(json.loads(json.dumps(intervals.to_dict()))) == intervals


def test_the_recommended_recipe_is_calibrated_on_real_index_data() -> None:
    """har10 + conformal on ^GSPC (arch's offline sample): fit on 2,000 days, test the next 500.

    Coverage lands within sampling error of nominal, and its 95% interval
    score is no worse than RiskMetrics EWMA's on the same days.
    """
    from arch.data import sp500

    prices = sp500.load().iloc[:3000]
    close, high, low = (prices[c].to_numpy() for c in ("Close", "High", "Low"))
    spans = (1, 5, 9)
    x = scale_features(close, high, low, spans)[:-1]  # (2999, 6): row t forecasts t + 1
    r = np.diff(np.log(close))  # (2999,): r[t] is the return after row t
    fit, test = slice(0, 2500), slice(2500, 2999)
    model = fit_scale(x[fit], r[fit], spans)
    sigma = predict_scale(model, x)
    calibration = fit_conformal((r / sigma)[fit][scale_history(spans) :])
    y = np.expm1(r[test])
    ewma = ewma_sigma(r)[:-1]  # [t] forecasts r[t + 1]
    scores = {}
    for name, s, cal in (
        ("har10", sigma[test], calibration),
        ("ewma", np.append(np.nan, ewma)[test], normal_calibration()),
    ):
        bounds = close_intervals(np.ones(len(y)), np.zeros(len(y)), s, cal)
        relative = {k: v - 1 for k, v in bounds.items()}
        scores[name] = interval_score(relative["lower_95"], relative["upper_95"], y, 0.05).mean()
        if name == "har10":
            assert coverage(relative["lower_80"], relative["upper_80"], y) == pytest.approx(
                0.8, abs=0.06
            )
            assert coverage(relative["lower_95"], relative["upper_95"], y) == pytest.approx(
                0.95, abs=0.03
            )
    assert scores["har10"] <= scores["ewma"]
