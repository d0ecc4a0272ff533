"""Offline stand-ins for Yahoo Finance, faithful to yfinance 1.7.

Only the network is faked: `yfinance.Ticker.history` returns what Yahoo's
chart endpoint would have given for a daily, unadjusted request, or fails as
yfinance 1.7 fails. `yf.download` itself runs for real, so the frames the
pipeline sees are assembled by yfinance's own code: (Price, Ticker)
MultiIndex columns even for one ticker, NaN columns for a failed ticker in a
batch, an empty frame when every ticker failed.

How `Ticker.history` fails follows `yfinance.config.debug.hide_exceptions`
(True by default) and the `raise_errors` argument: a rate limit is always
raised; with exceptions shown, any other error is raised as it is; with them
hidden, an unknown symbol is logged, recorded on `_price_history._last_error`
and answered with an empty frame, and a network error loses its type on the
way (the timezone lookup logs it and the symbol reads as delisted).
"""

import logging
from dataclasses import dataclass, field
from datetime import date
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import yfinance
from yfinance.exceptions import YFRateLimitError, YFTickerMissingError, YFTzMissingError

from closecast.core.calendar import sessions_between
from closecast.tasks.data.sources import FetchResult

YAHOO_COLUMNS = ["Open", "High", "Low", "Close", "Adj Close", "Volume"]


def yahoo_frame(
    n: int, start: str = "2020-01-02", seed: int = 0, base: float = 100.0
) -> pd.DataFrame:
    """A daily bar frame shaped like `Ticker.history(auto_adjust=False)` returns.

    XNYS sessions, index `Date` tz-aware in America/New_York, float prices,
    int64 volume, Adj Close a little below Close (dividends).
    """
    rng = np.random.default_rng(seed)
    sessions = sessions_between(date.fromisoformat(start), date(2027, 11, 1))[:n]
    close = base * np.exp(np.cumsum(rng.normal(0.0003, 0.012, n)))
    open_ = close * np.exp(rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.01, n))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.01, n))
    index = pd.DatetimeIndex(pd.to_datetime(sessions)).tz_localize("America/New_York")
    return pd.DataFrame(
        {
            "Open": open_,
            "High": high,
            "Low": low,
            "Close": close,
            "Adj Close": close * 0.98,
            "Volume": rng.integers(1_000_000, 5_000_000, n).astype(np.int64),
        },
        index=index.rename("Date"),
    )


@dataclass
class FakeYahoo:
    """What the fake Yahoo serves: history per ticker, and errors to raise."""

    history: dict[str, pd.DataFrame] = field(default_factory=dict)
    # ticker -> exceptions raised on successive calls (then it serves history)
    failures: dict[str, list[Exception]] = field(default_factory=dict)
    calls: list[tuple[str, object, object]] = field(default_factory=list)
    # one entry per yf.download call: (tickers asked for, start, end)
    downloads: list[tuple[list[str], object, object]] = field(default_factory=list)

    def rate_limit(self, ticker: str, times: int = 1) -> None:
        """Yahoo answers the next `times` requests for `ticker` with HTTP 429."""
        self.fail(ticker, *[YFRateLimitError() for _ in range(times)])

    def fail(self, ticker: str, *errors: Exception) -> None:
        """The next requests for `ticker` fail with `errors`, one each, in order."""
        self.failures.setdefault(ticker, []).extend(errors)

    def serve(self, ticker_obj: yfinance.Ticker, **kwargs: object) -> pd.DataFrame:
        symbol = ticker_obj.ticker.upper()
        self.calls.append((symbol, kwargs.get("start"), kwargs.get("end")))
        pending = self.failures.get(symbol)
        error: Exception | None = pending.pop(0) if pending else None
        if error is None and symbol not in self.history:
            # What Yahoo does for an unknown symbol: no timezone, so "delisted".
            error = YFTzMissingError(symbol)
        if error is not None:
            shown = kwargs.get("raise_errors") or not yfinance.config.debug.hide_exceptions
            if isinstance(error, YFRateLimitError) or shown:
                raise error
            soft = error if isinstance(error, YFTickerMissingError) else YFTzMissingError(symbol)
            logging.getLogger("yfinance").error(str(soft))
            ticker_obj._price_history = SimpleNamespace(_last_error=str(soft).split(": ", 1)[1])
            return yfinance.utils.empty_df()
        frame = self.history[symbol]
        start, end = kwargs.get("start"), kwargs.get("end")
        if start is not None:
            frame = frame[frame.index.tz_localize(None) >= pd.Timestamp(start)]
        if end is not None:  # exclusive, as in yfinance
            frame = frame[frame.index.tz_localize(None) < pd.Timestamp(end)]
        ticker_obj._price_history = SimpleNamespace(_last_error=None)
        return frame.copy()


@pytest.fixture
def fake_yahoo(monkeypatch: pytest.MonkeyPatch) -> FakeYahoo:
    """Patch yfinance's network layer; `yf.download` runs for real on top of it.

    yfinance's exception switch starts at its default (exceptions hidden) and
    is restored afterwards, whatever the code under test set.
    """
    fake = FakeYahoo()
    monkeypatch.setitem(yfinance.config.debug.data, "hide_exceptions", True)

    def history(self: yfinance.Ticker, *args: object, **kwargs: object) -> pd.DataFrame:
        return fake.serve(self, **kwargs)

    real_download = yfinance.download

    def download(tickers: list[str] | str, *args: object, **kwargs: object) -> pd.DataFrame:
        asked = list(tickers) if isinstance(tickers, list | tuple) else str(tickers).split()
        fake.downloads.append((asked, kwargs.get("start"), kwargs.get("end")))
        return real_download(tickers, *args, **kwargs)

    monkeypatch.setattr(yfinance.Ticker, "history", history)
    monkeypatch.setattr(yfinance, "download", download)
    return fake


@dataclass
class FlakySource:
    """A local price source that raises `errors` on its first downloads, then serves `frames`.

    `calls` counts downloads, so a test sees how often the fetch task ran it.
    """

    errors: list[Exception]
    frames: dict[str, pd.DataFrame]
    calls: int = 0
    name: str = "flaky"
    live: bool = False

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return FetchResult(frames={t: self.frames[t] for t in tickers})
