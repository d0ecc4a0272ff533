"""Validation: drop bad rows with a count per reason, flag tickers left with nothing."""

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from closecast.statuses import INVALID_DATA, Issues

logger = logging.getLogger(__name__)

PRICE_FIELDS = ["open", "high", "low", "close", "adj_close"]
REASONS = (
    "non_finite_price",
    "non_positive_price",
    "bad_volume",
    "inconsistent_ohlc",
    "repeated_bar",
    "price_spike",
)
# A close this far (in log terms, about 28%) from both neighbours, which move
# back the same way, is a bad tick: real moves that size do not revert next day.
SPIKE_LOG_RETURN = 0.25


@dataclass
class ValidatedPrices:
    """Clean frames per ticker, rows dropped per (ticker, reason), tickers left unusable."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    dropped: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["ticker", "reason", "rows"])
    )
    issues: Issues = field(default_factory=dict)

    @property
    def rows_dropped(self) -> int:
        return int(self.dropped["rows"].sum()) if len(self.dropped) else 0


def bad_row_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per reason, True where a row breaks that rule.

    Rules: prices finite and > 0; volume finite and >= 0; high and low
    bracket open and close; no bar that repeats the next bar's open, high,
    low and close exactly (a stale copy, as data vendors sometimes publish);
    no close that jumps more than SPIKE_LOG_RETURN away from both its
    neighbours (a single bad tick). Rules that look at the next row never
    see past the frame, so a point-in-time frame is judged on its own rows.
    """
    prices = frame[PRICE_FIELDS].to_numpy()
    finite = np.isfinite(prices)
    ohlc = frame[["open", "high", "low", "close"]]
    nxt = ohlc.shift(-1)
    tolerance = 1e-9 * ohlc["close"].abs()
    log_close = np.log(frame["close"].where(frame["close"] > 0))
    jump_in = log_close.diff()
    jump_out = log_close.shift(-1) - log_close
    return pd.DataFrame(
        {
            "non_finite_price": ~finite.all(axis=1),
            "non_positive_price": (np.where(finite, prices, 1.0) <= 0).any(axis=1),
            "bad_volume": ~(np.isfinite(frame["volume"]) & (frame["volume"] >= 0)),
            "inconsistent_ohlc": (frame["high"] < ohlc[["open", "close"]].max(axis=1) - tolerance)
            | (frame["low"] > ohlc[["open", "close"]].min(axis=1) + tolerance),
            "repeated_bar": (ohlc == nxt).all(axis=1),
            "price_spike": (jump_in.abs() > SPIKE_LOG_RETURN)
            & (jump_out.abs() > SPIKE_LOG_RETURN)
            & (np.sign(jump_in) != np.sign(jump_out)),
        },
        index=frame.index,
    )


def validate_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop bad rows; return the clean frame and the count of rows per first broken rule."""
    reasons = bad_row_reasons(frame)
    first_reason = reasons.idxmax(axis=1).where(reasons.any(axis=1))
    counts = first_reason.value_counts().to_dict()
    clean = frame[first_reason.isna()]
    clean = clean[~clean.index.duplicated(keep="last")].sort_index()
    return clean, {str(k): int(v) for k, v in counts.items()}


def validate_all(frames: dict[str, pd.DataFrame]) -> ValidatedPrices:
    """Validate every ticker; one with no row left gets status invalid_data."""
    result = ValidatedPrices()
    records = []
    for ticker, frame in frames.items():
        clean, counts = validate_frame(frame)
        records += [{"ticker": ticker, "reason": r, "rows": n} for r, n in counts.items()]
        if clean.empty:
            result.issues[ticker] = (INVALID_DATA, f"all {len(frame)} rows failed validation")
        else:
            result.frames[ticker] = clean
    if records:
        result.dropped = pd.DataFrame(records, columns=["ticker", "reason", "rows"])
    return result


@task(name="validate-prices", cache_policy=NO_CACHE)
def validate_prices(frames: dict[str, pd.DataFrame]) -> ValidatedPrices:
    """Apply the validation rules and log how many rows each rule dropped."""
    result = validate_all(frames)
    if result.rows_dropped:
        by_reason = result.dropped.groupby("reason")["rows"].sum().to_dict()
        get_run_logger().warning("dropped %d invalid rows: %s", result.rows_dropped, by_reason)
    return result
