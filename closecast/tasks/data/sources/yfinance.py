"""The yfinance source: Yahoo Finance through yfinance 1.7, one batched `yf.download` per chunk.

yf.download keeps its per-ticker errors to itself: it catches each ticker's
exception, records its text on a context local to the call (`multi._DownloadCtx`;
`yfinance.shared._ERRORS` is no longer filled), logs it, and returns empty
columns for that ticker. So the batch's frame says which tickers failed, and
only those are asked again through `Ticker.history`, the call yf.download
makes per ticker, with yfinance's exceptions raised: the failure then arrives
typed. `YFRateLimitError` and network errors are worth a retry of the chunk;
`YFTickerMissingError` (unknown or delisted) and the rest fail their ticker,
in yfinance's own words.
"""

from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pandas as pd

from closecast.tasks.data.sources.base import (
    YAHOO_COLUMNS,
    FetchResult,
    RateLimitError,
    TransientFetchError,
)
from closecast.tasks.data.store import normalize_prices

# Both asks: daily bars, unadjusted (Close and Adj Close kept apart), no dividend columns,
# and a per-request timeout so a hung connection fails this try (the task retries), not the night.
_REQUEST: dict[str, Any] = {"auto_adjust": False, "actions": False, "timeout": 30}


def _rows(frame: pd.DataFrame) -> pd.DataFrame | None:
    """A canonical frame of Yahoo's columns, or None when it holds no row."""
    frame = frame.rename(columns=YAHOO_COLUMNS).dropna(how="all")
    return None if frame.empty else normalize_prices(frame)


def split_download(
    raw: pd.DataFrame | None, tickers: list[str]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Split yf.download's (Price, Ticker) MultiIndex frame into one frame per ticker.

    Returns:
        The frames of the tickers that have rows, and the tickers that have none.
    """
    present = set()
    if raw is not None and not raw.empty and isinstance(raw.columns, pd.MultiIndex):
        present = set(raw.columns.get_level_values("Ticker"))
    frames: dict[str, pd.DataFrame] = {}
    empty: list[str] = []
    for ticker in tickers:
        frame = None
        if raw is not None and ticker in present:
            frame = _rows(raw.xs(ticker, axis=1, level="Ticker"))
        if frame is None:
            empty.append(ticker)
        else:
            frames[ticker] = frame
    return frames, empty


def is_transient(exc: Exception) -> bool:
    """A rate limit, a network error or a 5xx is worth a retry; a 4xx answer is not.

    OSError covers the errors of curl_cffi and requests, as yfinance's own
    retry rule reads them; an HTTP 404 (an unknown symbol's quote) is one too,
    and fails the same way on every try.
    """
    from yfinance.exceptions import YFRateLimitError

    if isinstance(exc, YFRateLimitError):
        return True
    status = getattr(getattr(exc, "response", None), "status_code", None)
    if isinstance(status, int) and 400 <= status < 500 and status != 429:
        return False
    return isinstance(exc, OSError)


def _rate_limited(exc: Exception) -> bool:
    """yfinance's YFRateLimitError, or an HTTP 429 that reached us as a request error."""
    from yfinance.exceptions import YFRateLimitError

    status = getattr(getattr(exc, "response", None), "status_code", None)
    return isinstance(exc, YFRateLimitError) or status == 429


def _reason(exc: Exception) -> str:
    """yfinance's words for a failure on one line: `possibly delisted; no timezone found`."""
    from yfinance.exceptions import YFTickerMissingError

    text = str(exc) or type(exc).__name__
    if isinstance(exc, YFTickerMissingError):
        text = text.removeprefix(f"${exc.ticker}: ")
    return text.splitlines()[0]


@dataclass
class YFinanceSource:
    """Yahoo Finance through `yf.download`, one batched call per chunk, unadjusted."""

    name: str = "yfinance"
    live: bool = True

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        """One `yf.download` for all `tickers`, then one `Ticker.history` per ticker it missed.

        Raises:
            RateLimitError: a ticker the batch missed was refused with HTTP 429
                when asked again; the fetch task retries the chunk.
            TransientFetchError: the same for a network error.
        """
        import yfinance as yf

        # yfinance's switch for raising its typed errors (1.7 deprecates `raise_errors=` in
        # its favour). It is process-wide and left on: closecast reads Yahoo only here, and
        # yf.download catches per ticker either way.
        yf.config.debug.hide_exceptions = False
        # yfinance's `end` is exclusive: ask for the day after the last one wanted.
        until = (end or date.today()) + timedelta(days=1)
        raw = yf.download(
            tickers,
            start=start,
            end=until,
            group_by="column",
            multi_level_index=True,
            progress=False,
            threads=True,
            **_REQUEST,
        )
        frames, missed = split_download(raw, tickers)
        result = FetchResult(frames=frames)
        for ticker in missed:
            try:
                frame = _rows(yf.Ticker(ticker).history(start=start, end=until, **_REQUEST))
            except Exception as exc:  # as yf.download does: one ticker's error is its own
                if is_transient(exc):
                    message = f"yfinance failed for {ticker}: {_reason(exc)}"
                    typed = RateLimitError if _rate_limited(exc) else TransientFetchError
                    raise typed(message) from exc
                result.failures[ticker] = f"{ticker}: {_reason(exc)}"
                continue
            if frame is None:
                result.failures[ticker] = f"{ticker}: yfinance returned no rows"
            else:
                result.frames[ticker] = frame  # the batch's miss was passing
        return result
