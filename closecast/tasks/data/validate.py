"""Validation: drop bad rows with a count per reason, flag tickers left with nothing."""

import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from closecast.core.statuses import INVALID_DATA, Issues
from closecast.tasks.data.store import column_values

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

    def last_closes(self) -> dict[str, float]:
        """The last valid close of each ticker (a dropped bad row never shows in a report)."""
        return {t: float(f["close"].iloc[-1]) for t, f in self.frames.items()}


def bad_row_reasons(frame: pd.DataFrame) -> pd.DataFrame:
    """One boolean column per reason (REASONS), True where a row breaks that rule: the
    table of `broken_rules`."""
    return pd.DataFrame(broken_rules(frame), index=frame.index, columns=list(REASONS))


def broken_rules(frame: pd.DataFrame) -> np.ndarray:
    """(n, len(REASONS)) booleans, True where a row breaks that rule.

    Rules: prices finite and > 0; volume finite and >= 0; high and low
    bracket open and close; no bar that repeats the next bar's open, high,
    low and close exactly (a stale copy, as data vendors sometimes publish);
    no close that jumps more than SPIKE_LOG_RETURN away from both its
    neighbours (a single bad tick). Rules that look at the next row never
    see past the frame, so a point-in-time frame is judged on its own rows.
    """
    values = column_values(frame, [*PRICE_FIELDS, "volume"])
    prices, volume = values[:, :-1], values[:, -1]  # (n, 5), (n,)
    open_, high, low, close = prices[:, 0], prices[:, 1], prices[:, 2], prices[:, 3]
    finite = np.isfinite(prices)
    ohlc = prices[:, :4]
    next_ohlc = np.vstack([ohlc[1:], np.full((1, 4), np.nan)])  # row i holds row i + 1
    tolerance = 1e-9 * np.abs(close)
    with np.errstate(invalid="ignore", divide="ignore"):
        log_close = np.log(np.where(close > 0, close, np.nan))
    jump_in = np.concatenate([[np.nan], np.diff(log_close)])
    jump_out = np.concatenate([np.diff(log_close), [np.nan]])
    rules = {
        "non_finite_price": ~finite.all(axis=1),
        "non_positive_price": (np.where(finite, prices, 1.0) <= 0).any(axis=1),
        "bad_volume": ~(np.isfinite(volume) & (volume >= 0)),
        "inconsistent_ohlc": (high < np.maximum(open_, close) - tolerance)
        | (low > np.minimum(open_, close) + tolerance),
        "repeated_bar": (ohlc == next_ohlc).all(axis=1),
        "price_spike": (np.abs(jump_in) > SPIKE_LOG_RETURN)
        & (np.abs(jump_out) > SPIKE_LOG_RETURN)
        & (np.sign(jump_in) != np.sign(jump_out)),
    }
    return np.column_stack([rules[reason] for reason in REASONS])


def validate_frame(frame: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, int]]:
    """Drop bad rows; return the clean frame and the count of rows per first broken rule."""
    broken = broken_rules(frame)  # (n, R)
    bad = broken.any(axis=1)
    first = broken.argmax(axis=1)[bad]  # index into REASONS of each bad row's first rule
    counts = np.bincount(first, minlength=len(REASONS))
    clean = frame[~bad] if bad.any() else frame
    if not (clean.index.is_unique and clean.index.is_monotonic_increasing):
        clean = clean[~clean.index.duplicated(keep="last")].sort_index()
    return clean, {REASONS[i]: int(n) for i, n in enumerate(counts) if n}


def validate_prices(frames: dict[str, pd.DataFrame]) -> ValidatedPrices:
    """Validate every ticker; one with no row left gets status invalid_data."""
    result = ValidatedPrices()
    records = []
    for ticker, frame in frames.items():
        clean, counts = validate_frame(frame)
        records += [{"ticker": ticker, "reason": r, "rows": n} for r, n in counts.items()]
        if clean.empty:
            result.issues[ticker] = (
                INVALID_DATA,
                (
                    f"all {len(frame)} price rows failed validation: "
                    + ", ".join(f"{n} {reason}" for reason, n in counts.items())
                ),
            )
        else:
            result.frames[ticker] = clean
    if records:
        result.dropped = pd.DataFrame(records, columns=["ticker", "reason", "rows"])
    return result
