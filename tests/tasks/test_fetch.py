from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow
from yfinance.exceptions import YFRateLimitError

from closecast.core.config import DataConfig
from closecast.core.errors import InputError
from closecast.tasks.data.fetch import RETRY_JITTER, FetchPlan, fetch_end, plan_fetches
from closecast.tasks.data.sources import (
    FetchResult,
    SampleSource,
    TransientFetchError,
    YFinanceSource,
)
from closecast.tasks.data.steps import download_all, download_task, refetch_rebased
from closecast.tasks.data.store import normalize_prices, read_prices, write_prices
from tests.fakes import FlakySource, yahoo_frame


def _stored(n: int, start: str = "2020-01-02", seed: int = 0) -> pd.DataFrame:
    frame = yahoo_frame(n, start=start, seed=seed)
    frame.index = frame.index.tz_localize(None).rename("date")
    return frame.rename(columns=str.lower).rename(columns={"adj close": "adj_close"})


# --- planning -----------------------------------------------------------------


def test_plan_new_tickers_from_start_in_chunks() -> None:
    """Tickers new to the store ask from config.start, chunk_size tickers per request."""
    config = DataConfig(start=date(2019, 1, 2), chunk_size=2)
    plans = plan_fetches(dict.fromkeys(["A", "B", "C", "D", "E"]), config, date(2020, 6, 1))
    assert [p.tickers for p in plans] == [["A", "B"], ["C", "D"], ["E"]]
    assert {(p.start, p.end) for p in plans} == {(date(2019, 1, 2), date(2020, 6, 1))}


def test_plan_new_ticker_without_start_asks_history_years() -> None:
    """With no start, a new ticker asks history_years before the end."""
    plans = plan_fetches({"A": None}, DataConfig(history_years=3), date(2020, 2, 29))
    assert plans[0].start == date(2017, 2, 28)


def test_plan_stored_ticker_asks_from_overlap_and_skips_up_to_date() -> None:
    """A stored ticker asks from overlap_days rows before its last; one covering end is skipped."""
    stored = _stored(50)  # ends 2020-03-13, a Friday
    config = DataConfig(overlap_days=5)
    plans = plan_fetches({"OLD": stored.iloc[:40], "DONE": stored}, config, date(2020, 3, 15))
    assert len(plans) == 1
    assert plans[0].tickers == ["OLD"]
    assert plans[0].start == stored.index[35].date()


def test_fetch_end_is_as_of_else_today_for_live_sources() -> None:
    """A live source asks up to today, a local one for everything it has."""
    assert fetch_end(YFinanceSource(), date(2020, 1, 3)) == date(2020, 1, 3)
    assert fetch_end(YFinanceSource(), None) == date.today()
    assert fetch_end(SampleSource(), None) is None


# --- downloads and their retries ----------------------------------------------


def test_retries_back_off_exponentially_with_jitter() -> None:
    """The config's knobs set the retries: fetch_retries of them, the first after
    retry_backoff_seconds, each later one twice as long, each drawn with jitter."""
    task = download_task(DataConfig(fetch_retries=3, retry_backoff_seconds=2.0))
    assert task.retries == 3
    assert task.retry_delay_seconds == [2.0, 4.0, 8.0]
    assert task.retry_jitter_factor == RETRY_JITTER > 0
    assert download_task(DataConfig(fetch_retries=0)).retry_delay_seconds == []


@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize(
    ("error", "retries", "calls", "fetched"),
    [
        (ValueError("could not convert string to float: 'abc'"), 3, 1, False),
        (KeyError("close"), 3, 1, False),
        (YFRateLimitError(), 3, 1, False),  # a source's own error type is not a retry signal
        (TransientFetchError("yfinance failed for AAA: Too Many Requests"), 3, 2, True),
        (ConnectionError("connection reset by peer"), 3, 2, True),
        (TimeoutError("read timed out"), 3, 2, True),
        (TimeoutError("read timed out"), 0, 1, False),
    ],
)
def test_download_retries_only_network_errors(
    error: Exception, retries: int, calls: int, fetched: bool
) -> None:
    """Rate limits and network errors are retried, up to fetch_retries times; a parse error or
    a bug runs once and fails its chunk's tickers with a one-line reason."""
    source = FlakySource(errors=[error], frames={"AAA": _stored(5)})
    config = DataConfig(fetch_retries=retries, retry_backoff_seconds=0)

    @flow
    def download_once() -> FetchResult:
        return download_all(source, [FetchPlan(["AAA"], None, None)], config)

    result = download_once()

    assert source.calls == calls
    assert ("AAA" in result.frames) == fetched
    if not fetched:
        assert result.failures["AAA"].startswith("AAA: ")


@pytest.mark.usefixtures("prefect_harness")
def test_download_raises_bad_input() -> None:
    """An InputError from a source is the user's to fix: it is raised, not a fetch failure."""
    source = FlakySource(errors=[InputError("cannot read AAA.csv")], frames={})

    @flow
    def download_once() -> FetchResult:
        return download_all(source, [FetchPlan(["AAA"], None, None)], DataConfig())

    with pytest.raises(InputError, match=r"AAA\.csv"):
        download_once()
    assert source.calls == 1


@pytest.mark.usefixtures("prefect_harness")
def test_refetch_rebased_replaces_each_history_whole(tmp_path: Path) -> None:
    """A re-based ticker is asked for everything the source has, and its file is replaced by
    the answer, rows the store had and the source lost included."""
    prices_dir = tmp_path / "prices"
    write_prices(prices_dir, "AAA", _stored(60, start="2019-12-02", seed=1))
    rebased = _stored(40)
    source = FlakySource(errors=[], frames={"AAA": rebased})

    @flow
    def refetch() -> FetchResult:
        return refetch_rebased(source, ["AAA"], prices_dir, DataConfig(), None)

    result = refetch()

    stored = read_prices(prices_dir, "AAA")
    assert stored is not None
    pd.testing.assert_frame_equal(stored, normalize_prices(rebased))
    assert stored.index[0] == pd.Timestamp("2020-01-02")  # December 2019 is gone
    assert source.calls == 1 and result.failures == {}
