import numpy as np
import pandas as pd
import pytest

from closecast.tasks.modeling.features import compute_features, latest_rows


@pytest.fixture
def prices() -> pd.DataFrame:
    """Five days, a dividend after day 2 and another after day 5 (so adj_close < close)."""
    close = np.array([10.0, 11.0, 12.0, 13.0, 14.0])
    ratio = np.array([0.9, 0.9, 1.0, 1.0, 1.0]) * 0.98
    return pd.DataFrame(
        {
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "adj_close": close * ratio,
            "volume": [100.0, 200.0, 300.0, 400.0, 500.0],
        },
        index=pd.date_range("2020-01-06", periods=5, freq="B", name="date"),
    )


def test_features_are_on_the_adjusted_basis_ending_at_the_real_close(
    prices: pd.DataFrame,
) -> None:
    """Prices before a dividend are scaled down by it; the last close is the real close."""
    features = compute_features(prices, ["close", "volume", "open", "high", "low"])
    np.testing.assert_allclose(features["close"], [9.0, 9.9, 12.0, 13.0, 14.0])
    np.testing.assert_allclose(features["open"], [8.55, 9.45, 11.5, 12.5, 13.5])
    np.testing.assert_allclose(features["high"].iloc[-1], 15.0)
    np.testing.assert_allclose(features["volume"], prices["volume"])
    assert features["close"].iloc[-1] == prices["close"].iloc[-1]
    assert list(features.columns) == ["close", "volume", "open", "high", "low"]


def test_features_ignore_the_basis_of_later_dividends(prices: pd.DataFrame) -> None:
    """A later dividend rescales every stored adj_close; the features do not change."""
    rebased = prices.assign(adj_close=prices["adj_close"] * 0.97)
    pd.testing.assert_frame_equal(
        compute_features(prices, ["close", "open"]), compute_features(rebased, ["close", "open"])
    )


def test_features_keep_only_the_asked_columns_in_order(prices: pd.DataFrame) -> None:
    """Close alone works; the order asked is the order returned."""
    assert list(compute_features(prices, ["close"]).columns) == ["close"]
    assert list(compute_features(prices, ["open", "close"]).columns) == ["open", "close"]


def test_unknown_feature_is_named(prices: pd.DataFrame) -> None:
    """An unknown feature name raises a ValueError naming it."""
    with pytest.raises(ValueError, match="vwap"):
        compute_features(prices, ["close", "vwap"])


def test_latest_rows_are_the_last_window_per_ticker(prices: pd.DataFrame) -> None:
    """The pyfunc input: last `window` rows per ticker, sorted by ticker, real last close."""
    rows = latest_rows({"BBB": prices, "AAA": prices.iloc[:4]}, ["BBB", "AAA"], 3)
    assert list(rows.columns) == ["ticker", "date", "open", "high", "low", "close", "volume"]
    assert list(rows["ticker"]) == ["AAA"] * 3 + ["BBB"] * 3
    assert rows["close"].iloc[-1] == 14.0 and rows["close"].iloc[2] == 13.0
    assert rows["date"].iloc[0] == pd.Timestamp("2020-01-07")


def test_latest_rows_read_from_the_tail_equal_the_whole_history_adjusted(
    prices: pd.DataFrame,
) -> None:
    """A window that spans a dividend (day 2 of the last 4) is adjusted exactly as the
    whole history's features are, although only its own rows are read."""
    rows = latest_rows({"AAA": prices}, ["AAA"], 4).set_index("date")
    whole = compute_features(prices, ["open", "high", "low", "close", "volume"]).iloc[-4:]
    assert rows["close"].iloc[0] < prices["close"].iloc[1]  # the dividend scaled day 2 down
    pd.testing.assert_frame_equal(
        rows.drop(columns="ticker"), whole, check_names=False, check_freq=False
    )
