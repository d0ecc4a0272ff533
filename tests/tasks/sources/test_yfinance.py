from datetime import date

import numpy as np
import pandas as pd
import pytest
import yfinance
from curl_cffi.requests import Response
from curl_cffi.requests.exceptions import ConnectionError as CurlConnectionError
from curl_cffi.requests.exceptions import HTTPError
from yfinance.exceptions import YFRateLimitError

from closecast.tasks.data.sources import TransientFetchError, YFinanceSource
from closecast.tasks.data.sources.yfinance import split_download
from closecast.tasks.data.store import PRICE_COLUMNS
from tests.fakes import FakeYahoo, yahoo_frame

START, END = date(2020, 1, 2), date(2020, 2, 10)


def _asks(fake: FakeYahoo, ticker: str) -> int:
    """How many requests reached Yahoo for `ticker`."""
    return [call[0] for call in fake.calls].count(ticker)


def _http_404() -> HTTPError:
    """What curl_cffi's `raise_for_status` raises for Yahoo's 404 on an unknown symbol's quote."""
    response = Response()
    response.status_code, response.reason, response.ok = 404, "Not Found", False
    with pytest.raises(HTTPError) as raised:
        response.raise_for_status()
    return raised.value


def test_yfinance_returns_unadjusted_rows_and_asks_end_plus_one_day(
    fake_yahoo: FakeYahoo,
) -> None:
    """One batched download, unadjusted Close and Adj Close kept, `end` = last day + 1."""
    fake_yahoo.history = {"AAA": yahoo_frame(60), "BBB": yahoo_frame(60, seed=1)}
    as_of = date(2020, 3, 13)  # a Friday inside the history

    result = YFinanceSource().download(["AAA", "BBB"], START, as_of)

    assert fake_yahoo.downloads == [(["AAA", "BBB"], START, date(2020, 3, 14))]
    assert sorted(call[0] for call in fake_yahoo.calls) == ["AAA", "BBB"]  # nothing asked twice
    assert result.failures == {}
    aaa = result.frames["AAA"]
    assert list(aaa.columns) == PRICE_COLUMNS
    assert aaa.index[-1] == pd.Timestamp(as_of)
    expected = fake_yahoo.history["AAA"]
    expected = expected[expected.index.tz_localize(None) <= pd.Timestamp(as_of)]
    np.testing.assert_allclose(aaa["close"], expected["Close"])
    np.testing.assert_allclose(aaa["adj_close"], expected["Adj Close"])
    assert (aaa["adj_close"] < aaa["close"]).all()  # not auto-adjusted


def test_yfinance_download_is_multiindex_even_for_one_ticker(fake_yahoo: FakeYahoo) -> None:
    """yfinance 1.7 gives (Price, Ticker) columns for one ticker; the split handles it."""
    fake_yahoo.history = {"AAA": yahoo_frame(20)}
    raw = yfinance.download(
        ["AAA"], start="2020-01-02", end="2020-02-01", auto_adjust=False, progress=False
    )
    assert isinstance(raw.columns, pd.MultiIndex)
    assert raw.columns.names == ["Price", "Ticker"]

    frames, missed = split_download(raw, ["AAA"])
    assert len(frames["AAA"]) == len(raw) and missed == []


def test_split_download_of_nothing_misses_every_ticker() -> None:
    """An empty download (every ticker failed) has no frame and misses each ticker."""
    assert split_download(pd.DataFrame(), ["AAA", "BBB"]) == ({}, ["AAA", "BBB"])


def test_yfinance_unknown_ticker_fails_alone_in_yfinances_words(fake_yahoo: FakeYahoo) -> None:
    """An unknown symbol fails with yfinance's own one-line reason, read from its typed
    error when asked again; the others still arrive."""
    fake_yahoo.history = {"AAA": yahoo_frame(30)}

    result = YFinanceSource().download(["AAA", "NOPE"], START, END)

    assert set(result.frames) == {"AAA"}
    assert result.failures == {"NOPE": "NOPE: possibly delisted; no timezone found"}
    assert (_asks(fake_yahoo, "AAA"), _asks(fake_yahoo, "NOPE")) == (1, 2)


def test_yfinance_every_ticker_unknown_gives_failures_not_an_error(fake_yahoo: FakeYahoo) -> None:
    """When Yahoo knows none of the tickers, each is a failure and no frame is returned."""
    result = YFinanceSource().download(["NOPE", "NADA"], None, END)
    assert result.frames == {}
    assert set(result.failures) == {"NOPE", "NADA"}


@pytest.mark.parametrize(
    "error",
    [
        YFRateLimitError(),
        CurlConnectionError("Failed to perform, curl: (7) Could not connect to server"),
        TimeoutError("read timed out"),
    ],
    ids=["rate limit", "connection", "timeout"],
)
def test_yfinance_rate_limit_or_network_error_is_transient(
    fake_yahoo: FakeYahoo, error: Exception
) -> None:
    """A rate limit or network error that outlasts the second ask raises TransientFetchError,
    chained to yfinance's own exception, so the task retries; the retry gets the rows."""
    fake_yahoo.history = {"AAA": yahoo_frame(30), "BBB": yahoo_frame(30, seed=1)}
    fake_yahoo.fail("AAA", error, error)
    source = YFinanceSource()

    with pytest.raises(TransientFetchError, match=r"^yfinance failed for AAA: ") as raised:
        source.download(["AAA", "BBB"], START, END)
    assert raised.value.__cause__ is error
    result = source.download(["AAA", "BBB"], START, END)

    assert set(result.frames) == {"AAA", "BBB"} and result.failures == {}
    assert _asks(fake_yahoo, "AAA") == 3


def test_yfinance_rate_limit_gone_by_the_second_ask_costs_nothing(fake_yahoo: FakeYahoo) -> None:
    """A rate limit that has cleared when the missed ticker is asked again gives its rows."""
    fake_yahoo.history = {"AAA": yahoo_frame(30), "BBB": yahoo_frame(30, seed=1)}
    fake_yahoo.rate_limit("AAA")

    result = YFinanceSource().download(["AAA", "BBB"], START, END)

    assert set(result.frames) == {"AAA", "BBB"} and result.failures == {}
    assert len(fake_yahoo.downloads) == 1 and _asks(fake_yahoo, "AAA") == 2


def test_yfinance_http_404_fails_its_ticker_without_a_retry(fake_yahoo: FakeYahoo) -> None:
    """A 4xx answer (an unknown symbol's quote) fails that ticker alone: a retry would get
    the same answer."""
    fake_yahoo.history = {"AAA": yahoo_frame(30), "BBB": yahoo_frame(30, seed=1)}
    fake_yahoo.fail("AAA", _http_404(), _http_404())

    result = YFinanceSource().download(["AAA", "BBB"], START, END)

    assert set(result.frames) == {"BBB"}
    assert result.failures == {"AAA": "AAA: HTTP Error 404: Not Found"}
