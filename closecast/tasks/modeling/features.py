"""Features: the model's columns, on a split- and dividend-adjusted basis."""

import pandas as pd


def compute_features(prices: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Select and adjust the feature columns of one ticker's validated prices.

    Prices are stored as the source reports them (close and adj_close); the
    model sees them on the adj_close basis, so a dividend or split is not a
    jump, rescaled so the last row's close is its real close. That keeps a
    point-in-time read independent of dividends paid after it. Volume stays
    as reported.

    Args:
        prices: one ticker's validated price frame, date index.
        features: names from close, volume, open, high, low.

    Returns:
        Frame with exactly `features` as columns, same index.
    """
    unknown = [f for f in features if f not in {"close", "volume", "open", "high", "low"}]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}")
    factor = prices["adj_close"] / prices["close"]
    factor = factor / factor.iloc[-1] if len(factor) else factor
    adjusted = {
        "close": prices["close"] * factor,
        "open": prices["open"] * factor,
        "high": prices["high"] * factor,
        "low": prices["low"] * factor,
        "volume": prices["volume"],
    }
    return pd.DataFrame({name: adjusted[name] for name in features}, index=prices.index)


def latest_rows(frames: dict[str, pd.DataFrame], tickers: list[str], window: int) -> pd.DataFrame:
    """The last `window` rows of each ticker as the pyfunc takes them.

    Columns: ticker, date, open, high, low, close, volume (adjusted basis).
    """
    parts = []
    for ticker in sorted(tickers):
        rows = compute_features(frames[ticker], ["open", "high", "low", "close", "volume"])
        rows = rows.iloc[-window:].rename_axis("date").reset_index()
        parts.append(rows.assign(ticker=ticker))
    columns = ["ticker", "date", "open", "high", "low", "close", "volume"]
    if not parts:
        return pd.DataFrame(columns=columns)
    return pd.concat(parts, ignore_index=True)[columns]


def build_features(frames: dict[str, pd.DataFrame], features: list[str]) -> dict[str, pd.DataFrame]:
    """Feature frames for every ticker."""
    return {ticker: compute_features(frame, features) for ticker, frame in frames.items()}
