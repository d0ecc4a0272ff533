"""What every price source shares: the result, the protocol, and the local-source selection."""

from dataclasses import dataclass, field
from datetime import date
from typing import Protocol

import pandas as pd

from closecast.core.calendar import session_on_or_before
from closecast.core.errors import PipelineError
from closecast.core.statuses import FETCH_FAILED, STALE_DATA, Issues

# Yahoo's column names (yfinance's frames, the sample data) -> the store's.
YAHOO_COLUMNS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}


class TransientFetchError(PipelineError):
    """A rate limit or network failure: the fetch task retries it with backoff.

    A PipelineError, so that a chunk whose retries are spent is logged in one
    line, without the traceback (core.errors.NoTracebackForExpected): the
    source's refusal says it all.
    """


class RateLimitError(TransientFetchError):
    """The source said "too many requests" (HTTP 429). Retried like any transient error;
    once a chunk's retries are spent on it, the fetch asks the source nothing more."""


@dataclass
class FetchResult:
    """Frames for the tickers a source had, and why it had none for the others."""

    frames: dict[str, pd.DataFrame] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    end: date | None = None  # the last date the fetch asked for

    def issues(self, loaded: dict[str, pd.DataFrame]) -> Issues:
        """Why failed tickers lack fresh prices.

        A failed ticker with no stored rows is fetch_failed. One that falls
        back on stored rows ending before `end`'s session is stale_data, with
        the fetch error in its message; with rows up to it, it is fine.
        """
        issues: Issues = {}
        last_session = pd.Timestamp(session_on_or_before(self.end)) if self.end else None
        for ticker, message in self.failures.items():
            if ticker not in loaded:
                issues[ticker] = (FETCH_FAILED, message)
            elif last_session is not None and loaded[ticker].index[-1] < last_session:
                last = loaded[ticker].index[-1].date().isoformat()
                issues[ticker] = (STALE_DATA, f"fetch failed ({message}); last stored price {last}")
        return issues

    def require_any(self, tickers: list[str]) -> None:
        """Raise PipelineError when the fetch failed for every requested ticker."""
        if tickers and set(tickers) <= set(self.failures):
            first = self.failures[tickers[0]]
            raise PipelineError(f"every fetch failed ({len(tickers)} tickers), e.g. {first}")

    def update(self, other: "FetchResult") -> None:
        """Add another fetch's results; a ticker that has frames is not a failure."""
        self.frames.update(other.frames)
        self.failures.update(other.failures)
        for ticker in self.frames:
            self.failures.pop(ticker, None)


class PriceSource(Protocol):
    name: str
    live: bool  # a live source has data up to today; a local one up to its last row

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        """Daily OHLCV for `tickers` on dates in [start, end] (None: unbounded)."""
        ...


def _clip(frame: pd.DataFrame, start: date | None, end: date | None) -> pd.DataFrame:
    if start is not None:
        frame = frame[frame.index >= pd.Timestamp(start)]
    if end is not None:
        frame = frame[frame.index <= pd.Timestamp(end)]
    return frame


def _span(start: date | None, end: date | None) -> str:
    """` from 2020-01-02 to 2020-03-31`, ` up to ...`, ` from ...`, or nothing when unbounded."""
    if start and end:
        return f" from {start.isoformat()} to {end.isoformat()}"
    if end:
        return f" up to {end.isoformat()}"
    return f" from {start.isoformat()} on" if start else ""


def select_local(
    available: dict[str, pd.DataFrame], tickers: list[str], start: date | None, end: date | None
) -> FetchResult:
    """A local source's answer: each ticker's rows in [start, end], or why it has none."""
    result = FetchResult()
    for ticker in tickers:
        if ticker not in available:
            result.failures[ticker] = f"ticker {ticker} is not in the source"
            continue
        frame = _clip(available[ticker], start, end)
        if frame.empty:
            result.failures[ticker] = f"the source has no rows for {ticker}{_span(start, end)}"
        else:
            result.frames[ticker] = frame
    return result
