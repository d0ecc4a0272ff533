"""Features: the model's columns, on a split- and dividend-adjusted basis."""

import numpy as np
import pandas as pd

from closecast.core.config import FEATURES, PRICE_FEATURES, FeatureName
from closecast.models.derived import extra_rows, feature_columns, source_columns
from closecast.tasks.data.store import column_values

# The pyfunc's input rows: every feature, in the OHLCV order people keep prices in.
ROW_FEATURES: tuple[FeatureName, ...] = ("open", "high", "low", "close", "volume")


def compute_features(prices: pd.DataFrame, features: list[str]) -> pd.DataFrame:
    """Select and adjust the feature columns of one ticker's validated prices.

    Prices are stored as the source reports them (close and adj_close); the
    model sees them on the adj_close basis, so a dividend or split is not a
    jump, rescaled so the last row's close is its real close. That keeps a
    point-in-time read independent of dividends paid after it. Volume stays
    as reported.

    The derived features (range22, range66, volume60: models/derived.py)
    read each row and the rows before it only; the first rows, which have too
    few before them, are dropped, so a ticker with too little history has too
    few rows (insufficient_history) rather than NaN inputs.

    Args:
        prices: one ticker's validated price frame, date index.
        features: names from FEATURES (closecast.core.config).

    Returns:
        Frame with exactly `features` as columns, same index (less the warm-up
        rows of derived features).
    """
    unknown = [f for f in features if f not in FEATURES]
    if unknown:
        raise ValueError(f"unknown feature(s) {', '.join(unknown)}")
    raw = _columns(prices, ["close", "adj_close", *source_columns(features)])
    factor = raw["adj_close"] / raw["close"]
    factor = factor / factor[-1] if len(factor) else factor
    adjusted = {
        name: raw[name] * factor if name in PRICE_FEATURES else raw[name]
        for name in source_columns(features)
    }
    skip = extra_rows(features)
    values = {name: column[skip:] for name, column in feature_columns(adjusted, features).items()}
    return pd.DataFrame(values, index=prices.index[skip:], columns=list(features))


def _columns(frame: pd.DataFrame, names: list[str]) -> dict[str, np.ndarray]:
    """The named columns of `frame` as arrays, each once."""
    names = list(dict.fromkeys(names))
    values = column_values(frame, names)
    return {name: values[:, i] for i, name in enumerate(names)}


def latest_rows(frames: dict[str, pd.DataFrame], tickers: list[str], window: int) -> pd.DataFrame:
    """The last `window` rows of each ticker as the pyfunc takes them.

    A model with derived features needs `Forecaster.input_rows` rows (its
    window and the rows its features read before it): pass that as `window`.

    Columns: ticker, date, open, high, low, close, volume (adjusted basis).
    """
    columns = ["ticker", "date", *ROW_FEATURES]
    if not tickers:
        return pd.DataFrame(columns=columns)
    names, dates, parts = [], [], []
    for ticker in sorted(tickers):
        # ROW_FEATURES derive nothing, and the adjustment is relative to the last row: the
        # last `window` rows give the same values as the whole history, at a fraction of it.
        rows = compute_features(frames[ticker].iloc[-window:], list(ROW_FEATURES))
        names.append(np.full(len(rows), ticker, dtype=object))
        dates.append(rows.index.to_numpy())
        parts.append(rows.to_numpy(np.float64))
    values = np.concatenate(parts)  # (rows, len(ROW_FEATURES))
    table = {"ticker": np.concatenate(names), "date": np.concatenate(dates)}
    table |= {name: values[:, i] for i, name in enumerate(ROW_FEATURES)}
    return pd.DataFrame(table, columns=columns)


def build_features(frames: dict[str, pd.DataFrame], features: list[str]) -> dict[str, pd.DataFrame]:
    """Feature frames for every ticker."""
    return {ticker: compute_features(frame, features) for ticker, frame in frames.items()}
