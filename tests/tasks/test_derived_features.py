"""The opt-in scale features reach back further than the window, never forward."""

import numpy as np
import pandas as pd
import pytest

from closecast.core.config import DEFAULT_FEATURES, WindowConfig
from closecast.core.statuses import INSUFFICIENT_HISTORY
from closecast.models.derived import PARKINSON, derive, extra_rows, source_columns
from closecast.tasks.modeling.features import compute_features
from closecast.tasks.modeling.windows import build_windows, window_columns

DERIVED = ["range22", "range66", "volume60"]


def _prices(n: int = 150, seed: int = 0) -> pd.DataFrame:
    """A validated price frame: random OHLC, volume, adj_close a dividend below close."""
    rng = np.random.default_rng(seed)
    close = 50 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    open_ = close * np.exp(rng.normal(0, 0.003, n))
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) * np.exp(np.abs(rng.normal(0, 0.006, n))),
            "low": np.minimum(open_, close) * np.exp(-np.abs(rng.normal(0, 0.006, n))),
            "close": close,
            "adj_close": close * np.where(np.arange(n) < n // 2, 0.97, 0.99),
            "volume": rng.uniform(1e5, 3e5, n),
        },
        index=pd.bdate_range("2021-01-04", periods=n, name="date"),
    )


def test_each_row_reads_only_itself_and_the_rows_before_it() -> None:
    """Changing every row after day t (prices, ranges, volume) leaves day t's values as they were."""
    prices = _prices()
    t = 100
    later = prices.copy()
    rng = np.random.default_rng(9)
    scale = np.exp(rng.normal(0, 0.2, len(prices) - t - 1))
    for column in ("open", "high", "low", "close", "adj_close"):
        later.iloc[t + 1 :, later.columns.get_loc(column)] *= scale
    later.iloc[t + 1 :, later.columns.get_loc("high")] *= 1.05  # wider ranges after t
    later.iloc[t + 1 :, later.columns.get_loc("volume")] *= 10.0
    before = compute_features(prices, ["close", *DERIVED])
    after = compute_features(later, ["close", *DERIVED])
    day = prices.index[t]
    pd.testing.assert_series_equal(
        before.loc[:day, DERIVED].stack(), after.loc[:day, DERIVED].stack(), rtol=1e-12
    )
    assert not np.allclose(before.loc[day:, DERIVED].iloc[1:], after.loc[day:, DERIVED].iloc[1:])


def test_values_are_parkinson_sigma_and_volume_over_its_60_row_mean() -> None:
    """range22 at a row is Parkinson's σ over it and the 21 rows before; volume60 its ratio."""
    prices = _prices()
    features = compute_features(prices, ["close", *DERIVED])
    day = prices.index[120]
    span = prices.loc[:day].iloc[-22:]
    expected = np.sqrt(np.mean(np.log(span["high"] / span["low"]) ** 2) * PARKINSON)
    np.testing.assert_allclose(features.loc[day, "range22"], expected, rtol=1e-12)
    volume = prices.loc[:day, "volume"].iloc[-60:]
    np.testing.assert_allclose(features.loc[day, "volume60"], volume.iloc[-1] / volume.mean())
    assert list(features.columns) == ["close", *DERIVED]


def test_warm_up_rows_are_dropped_not_left_nan() -> None:
    """The first rows without a full lookback are dropped: the longest lookback decides."""
    prices = _prices()
    assert len(compute_features(prices, ["close", "range22"])) == len(prices) - 21
    features = compute_features(prices, ["close", *DERIVED])
    assert features.index[0] == prices.index[65]
    assert np.isfinite(features.to_numpy()).all()
    assert len(compute_features(prices.iloc[:50], ["close", "range66"])) == 0
    # close, volume and open (the defaults before issue 20) drop nothing; the defaults 65
    assert len(compute_features(prices, ["close", "volume", "open"])) == len(prices)
    defaults = compute_features(prices, window_columns(DEFAULT_FEATURES))
    assert defaults.index[0] == prices.index[65] and np.isfinite(defaults.to_numpy()).all()


def test_zero_volume_and_a_flat_range_are_finite() -> None:
    """A series reporting no volume gets volume60 = 1; high = low gives a zero range."""
    prices = _prices().assign(volume=0.0)
    prices["high"] = prices["low"] = prices["close"]
    features = compute_features(prices, ["close", *DERIVED])
    assert (features["volume60"] == 1.0).all() and (features["range22"] == 0.0).all()


def test_a_ticker_with_too_little_history_is_insufficient_history() -> None:
    """With range66, a ticker whose rows do not cover the lookback is named, not a crash."""
    config = WindowConfig(features=["close", "range66"])
    columns = window_columns(config.features)
    frames = {
        "LONG": compute_features(_prices(300, 1), columns),
        "SHORT": compute_features(_prices(70, 2), columns),  # 5 rows after the warm-up
    }
    data = build_windows(frames, config, frames["LONG"].index[-1].date())
    assert data.issues["SHORT"][0] == INSUFFICIENT_HISTORY
    assert data.tickers == ["LONG"]
    assert np.isfinite(data.train.windows).all()
    assert data.columns == ("close", "range66", "high", "low")


def test_lookback_and_sources() -> None:
    assert extra_rows(["close", "volume", "open"]) == 0
    assert extra_rows(["close", "range22", "volume60"]) == 59
    assert source_columns(["close", "range22", "high", "low"]) == ("close", "high", "low")
    assert source_columns(["close", "volume60", "volume"]) == ("close", "volume")
    with pytest.raises(ValueError, match="not a derived feature"):
        derive(_prices(), "close")


def test_bad_feature_name_is_one_line_listing_the_valid_ones() -> None:
    with pytest.raises(ValueError) as error:
        WindowConfig(features=["close", "range23"])  # type: ignore[list-item]
    text = str(error.value)
    assert "range23" in text and "range22" in text and "volume60" in text
