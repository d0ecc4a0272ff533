"""The fetch's rate limit and its stop: the plain rules, and download_all on a fake live source.

The same behaviour through the real yfinance, over HTTP to a loopback Yahoo, is in
tests/flows/test_fetch_at_scale.py.
"""

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from prefect import flow, get_client
from pydantic import ValidationError

from closecast.cli.app import main
from closecast.cli.options import DataOptions, build_config
from closecast.core.config import DataConfig
from closecast.core.errors import InputError
from closecast.tasks.data.fetch import (
    FetchPlan,
    FetchStopped,
    RateLimit,
    rate_limit_for,
    stopped_message,
)
from closecast.tasks.data.sources import FetchResult, RateLimitError, SampleSource, YFinanceSource
from closecast.tasks.data.steps import download_all
from tests.fakes import yahoo_frame

TICKERS = ["A", "B", "C", "D", "E", "F"]


@dataclass
class LiveSource:
    """A live source (rate-limited like yfinance) that refuses, with HTTP 429, every chunk
    holding a ticker of `refuse`, and serves the others."""

    refuse: set[str] = field(default_factory=set)
    asked: list[list[str]] = field(default_factory=list)
    name: str = "fakelive"
    live: bool = True

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        self.asked.append(list(tickers))
        if self.refuse & set(tickers):
            raise RateLimitError(f"fakelive failed for {tickers[0]}: Too Many Requests")
        return FetchResult(frames={t: yahoo_frame(5) for t in tickers})


def _plans(tickers: list[str], size: int) -> list[FetchPlan]:
    return [FetchPlan(tickers[i : i + size], None, None) for i in range(0, len(tickers), size)]


# --- the rules ----------------------------------------------------------------


def test_a_live_source_gets_fetch_rate_a_minute_in_bursts_of_one_chunk() -> None:
    """yfinance is limited to fetch_rate tickers a minute (slots = one chunk's tickers, freed
    at fetch_rate / 60 a second), one limit per source; a local source is not limited."""
    config = DataConfig(chunk_size=50, fetch_rate=120)
    limit = rate_limit_for(YFinanceSource(), config)
    assert limit == RateLimit("closecast-fetch-yfinance", slots=50, per_second=2.0)
    assert rate_limit_for(SampleSource(), config) is None
    assert limit.wait_seconds(50) == 0  # the first chunk goes at once
    assert limit.wait_seconds(250) == 100  # 200 more tickers at 2 a second


def test_the_default_rate_is_one_ticker_a_second() -> None:
    """The default keeps to the pace yfinance users report safe: 60 tickers a minute."""
    assert DataConfig().fetch_rate == 60


def test_the_stop_message_says_how_far_it_got_and_how_to_resume() -> None:
    """One line under the command's 300 characters: the source, the retries, fetched of
    total, and the command that resumes."""
    message = stopped_message("yfinance", 7_000, 10_000, 3)
    assert message == (
        "yfinance rate limit (HTTP 429) outlasted 3 retries, so the fetch stopped asking: "
        "7,000 of 10,000 tickers fetched and stored; run the same command again later "
        "(a lower --fetch-rate helps) to fetch only the 3,000 left"
    )
    assert len(stopped_message("yfinance", 99_999, 100_000, 10)) < 300
    assert "outlasted 1 retry," in stopped_message("yfinance", 0, 2, 1)


# --- validation ---------------------------------------------------------------


@pytest.mark.parametrize("rate", [0, -5, 100_001, float("nan"), float("inf")])
def test_a_bad_fetch_rate_is_refused(rate: float) -> None:
    """A rate must be a number of tickers a minute in (0, 100,000]."""
    with pytest.raises(ValidationError, match="fetch_rate"):
        DataConfig(fetch_rate=rate)


@pytest.mark.parametrize("rate", ["0", "-5", "1e9", "fast", "nan"])
def test_the_cli_names_a_bad_fetch_rate_in_one_line(tmp_path: Path, rate: str) -> None:
    """--fetch-rate out of range, or no number, is InputError naming the flag and the value
    as typed, before any folder is made."""
    data = DataOptions(tickers="AAA", source="yfinance", fetch_rate=rate)
    with pytest.raises(InputError) as raised:
        build_config(tmp_path / "home", data, uses_mlflow=False)
    message = str(raised.value)
    assert message.startswith(f"invalid --fetch-rate {rate!r}: ") and "\n" not in message
    assert not (tmp_path / "home").exists()


def test_the_cli_takes_a_fetch_rate(tmp_path: Path) -> None:
    """--fetch-rate reaches the config; left out, the default."""
    data = DataOptions(tickers="AAA", source="yfinance", fetch_rate="30")
    assert build_config(tmp_path, data, uses_mlflow=False).data.fetch_rate == 30
    default = build_config(tmp_path, DataOptions(tickers="AAA"), uses_mlflow=False)
    assert default.data.fetch_rate == 60


@pytest.mark.usefixtures("prefect_harness")  # a flow command: no temporary Prefect API
@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("0", "closecast: error: invalid --fetch-rate '0': Input should be greater than 0"),
        ("fast", "closecast: error: invalid --fetch-rate 'fast': Input should be a valid number"),
    ],
)
def test_fetch_with_a_bad_rate_exits_2(
    tmp_path: Path, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`closecast fetch --fetch-rate 0` (or not a number) exits 2 in one line naming it."""
    home = tmp_path / "home"
    code = main(["fetch", "--tickers", "AAA", "--home", str(home), "--fetch-rate", value])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert says in err and len(err.splitlines()) == 1
    assert not home.exists()


# --- download_all under the limit ---------------------------------------------


@pytest.mark.usefixtures("prefect_harness")
def test_each_chunk_waits_on_the_limit_the_flow_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flow creates (or updates) the Prefect limit with the config's numbers, and each
    chunk takes one slot per ticker before it asks the source."""
    taken: list[tuple[str, int]] = []
    monkeypatch.setattr(
        "prefect.concurrency.sync.rate_limit",
        lambda name, occupy, **kw: taken.append((name, occupy)),
    )
    source = LiveSource()
    config = DataConfig(chunk_size=4, fetch_rate=90, retry_backoff_seconds=0)

    @flow
    def download() -> FetchResult:
        return download_all(source, _plans(TICKERS, 4), config)

    result = download()

    assert sorted(result.frames) == TICKERS
    assert taken == [("closecast-fetch-fakelive", 4), ("closecast-fetch-fakelive", 2)]
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("closecast-fetch-fakelive")
    assert (limit.limit, limit.slot_decay_per_second, limit.active) == (4, 1.5, True)

    # a later run with other numbers updates the same limit
    config = DataConfig(chunk_size=3, fetch_rate=30, retry_backoff_seconds=0)
    download()
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("closecast-fetch-fakelive")
    assert (limit.limit, limit.slot_decay_per_second) == (3, 0.5)


@pytest.mark.usefixtures("prefect_harness")
def test_a_rate_limit_that_outlasts_the_retries_stops_the_fetch() -> None:
    """Chunk 2 still refused after its retry: chunk 1 was handed over to be stored, chunk 3
    is never asked for, and the error names the counts."""
    source = LiveSource(refuse={"C"})
    config = DataConfig(fetch_retries=1, retry_backoff_seconds=0, fetch_rate=60_000)
    kept: list[list[str]] = []

    @flow
    def download() -> FetchResult:
        return download_all(
            source, _plans(TICKERS, 2), config, lambda c: kept.append(sorted(c.frames))
        )

    with pytest.raises(FetchStopped) as stopped:
        download()

    assert source.asked == [["A", "B"], ["C", "D"], ["C", "D"]]
    assert kept == [["A", "B"]]
    message = str(stopped.value)
    assert message.startswith("fakelive rate limit (HTTP 429) outlasted 1 retry, so the fetch")
    assert "2 of 6 tickers fetched and stored" in message
    assert message.endswith("to fetch only the 4 left")


@pytest.mark.usefixtures("prefect_harness")
def test_a_local_source_is_read_a_few_chunks_at_once_without_a_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A local source takes no slot, and every chunk is read and handed over."""
    taken: list[str] = []
    monkeypatch.setattr(
        "prefect.concurrency.sync.rate_limit", lambda name, **kw: taken.append(name)
    )
    source = LiveSource(name="fakelocal", live=False)
    kept: list[str] = []

    @flow
    def download() -> FetchResult:
        return download_all(
            source, _plans(TICKERS, 1), DataConfig(), lambda c: kept.extend(c.frames)
        )

    result = download()

    assert taken == [] and sorted(kept) == TICKERS == sorted(result.frames)
    assert isinstance(result.frames["A"], pd.DataFrame)
