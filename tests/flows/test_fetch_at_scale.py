"""A fetch at scale against the real yfinance 1.7, over HTTP to a Yahoo on loopback that
answers HTTP 429 after N requests (tests/loopback_yahoo.py): backoff and resume, a 429
storm's one line and exit 1, and a fetch killed midway that the next one resumes."""

import os
import signal
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from prefect.settings import PREFECT_API_URL
from prefect.tasks import exponential_backoff

from closecast.cli.app import main
from closecast.core.calendar import sessions_between
from closecast.core.config import DataConfig
from closecast.flows.fetch import fetch
from closecast.tasks.data import fetch as planning
from closecast.tasks.data.fetch import FetchStopped
from closecast.tasks.data.store import read_prices
from tests.fakes import yahoo_frame
from tests.loopback_yahoo import LoopbackYahoo, loopback_yahoo  # noqa: F401
from tests.waiting import wait_for

pytestmark = pytest.mark.usefixtures("prefect_harness")

START = date(2020, 1, 2)
AS_OF = sessions_between(START, date(2020, 12, 31))[59]
TICKERS = ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"]
CHUNK = 2  # tickers per yf.download: each is 2 chart requests (time zone, history)


@pytest.fixture
def yahoo(loopback_yahoo: LoopbackYahoo) -> LoopbackYahoo:  # noqa: F811
    """Yahoo holds 80 sessions of each ticker from 2020-01-02."""
    loopback_yahoo.history = {
        t: yahoo_frame(80, seed=i, base=20.0 + 10 * i) for i, t in enumerate(TICKERS)
    }
    return loopback_yahoo


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fetch flow plans chunks of CHUNK tickers, whatever the config (the CLI has no
    flag for it), and retries without waiting (the config's backoff, zeroed)."""
    real = planning.plan_fetches

    def plan(stored: dict, data: DataConfig, end: date | None) -> list[planning.FetchPlan]:
        return real(stored, data.model_copy(update={"chunk_size": CHUNK}), end)

    monkeypatch.setattr("closecast.flows.fetch.plan_fetches", plan)
    monkeypatch.setattr(
        "closecast.tasks.data.steps.exponential_backoff", lambda _: exponential_backoff(0)
    )


def _data(tickers: list[str], **options: object) -> DataConfig:
    settings: dict[str, object] = {
        "start": START,
        "chunk_size": CHUNK,
        "fetch_rate": 60_000,  # the limit is applied; at this rate it never makes a test wait
        "retry_backoff_seconds": 0,
        **options,
    }
    return DataConfig(source="yfinance", tickers=tickers, as_of=AS_OF, **settings)


def _assert_stored(home: Path, yahoo: LoopbackYahoo, tickers: list[str]) -> None:
    """Each ticker's file is readable and holds Yahoo's rows up to AS_OF, unadjusted."""
    for ticker in tickers:
        stored = read_prices(home / "prices", ticker)
        served = yahoo.history[ticker]
        served = served[served.index.tz_localize(None) <= pd.Timestamp(AS_OF)]
        assert stored is not None, ticker
        assert list(stored.index) == list(served.index.tz_localize(None))
        assert stored["close"].tolist() == served["Close"].tolist()
        assert stored["adj_close"].tolist() == served["Adj Close"].tolist()
        assert stored["volume"].tolist() == served["Volume"].astype(float).tolist()


def _files(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "prices").iterdir())


def test_429s_after_n_requests_are_backed_off_and_the_fetch_completes(
    tmp_path: Path, yahoo: LoopbackYahoo
) -> None:
    """Yahoo serves the first chunk, then refuses 8 requests: more than one try of the
    second chunk can absorb (yfinance re-asks a refused request once, closecast re-asks a
    ticker the batch missed once). The task's retry asks again, Yahoo has recovered, and
    every ticker is stored."""
    yahoo.refuse_after(2 * CHUNK, times=8)

    result = fetch(_data(TICKERS[:4], fetch_retries=2), tmp_path)

    assert result.failures == {}
    assert yahoo.refused == 8
    last_refusal = max(i for i, (*_, status) in enumerate(yahoo.charts) if status == 429)
    served_after = {s for s, kind, status in yahoo.charts[last_refusal:] if status == 200}
    assert served_after and served_after <= {"CCC", "DDD"}
    assert _files(tmp_path) == [f"{t}.parquet" for t in TICKERS[:4]]
    _assert_stored(tmp_path, yahoo, TICKERS[:4])


def test_without_retries_the_same_429s_stop_the_fetch(tmp_path: Path, yahoo: LoopbackYahoo) -> None:
    """The same refusals with no retry left: the fetch stops after the first chunk, which
    is stored; the third is never asked for."""
    yahoo.refuse_after(2 * CHUNK, times=8)

    with pytest.raises(FetchStopped, match=r"2 of 6 tickers fetched and stored"):
        fetch(_data(TICKERS, fetch_retries=0), tmp_path)

    assert _files(tmp_path) == ["AAA.parquet", "BBB.parquet"]
    assert not {"EEE", "FFF"} & {symbol for symbol, *_ in yahoo.charts}


@pytest.mark.usefixtures("small_chunks")
def test_a_429_storm_ends_in_one_line_keeps_what_arrived_and_the_rerun_resumes(
    tmp_path: Path,
    yahoo: LoopbackYahoo,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`closecast fetch` on six tickers: Yahoo serves the first chunk, then answers 429 for
    good. Exit 1 with one closecast line naming 2 of 6 fetched and the command to run again;
    the two files are whole and readable, nothing else is in the store, the rest is never
    asked for. Run again once Yahoo recovers, it asks only for the four missing."""
    home = tmp_path / "home"
    args = ["fetch", "--source", "yfinance", "--tickers", ",".join(TICKERS),
            "--home", str(home), "--as-of", AS_OF.isoformat(), "--fetch-rate", "60000"]  # fmt: skip
    yahoo.refuse_after(2 * CHUNK)

    code = main(args)

    err = capsys.readouterr().err
    assert code == 1
    ours = [line for line in err.splitlines() if line.startswith("closecast:")]
    assert ours == [
        "closecast: pipeline failed: yfinance rate limit (HTTP 429) outlasted 3 retries, so the "
        "fetch stopped asking: 2 of 6 tickers fetched and stored; run the same command again "
        "later (a lower --fetch-rate helps) to fetch only the 4 left"
    ]
    tracebacks = [r.getMessage() for r in caplog.records if r.exc_info or r.exc_text]
    assert tracebacks == []  # Prefect's task and flow loggers say it in one line too
    assert _files(home) == ["AAA.parquet", "BBB.parquet"]  # no temporary file either
    _assert_stored(home, yahoo, ["AAA", "BBB"])
    assert not {"EEE", "FFF"} & {symbol for symbol, *_ in yahoo.charts}

    yahoo.recover()
    yahoo.charts.clear()
    code = main(args)

    out = capsys.readouterr().out
    assert code == 0
    assert sorted(yahoo.asked("history")) == ["CCC", "DDD", "EEE", "FFF"]
    assert "AAA: store already up to date" in out and "CCC: 60 rows fetched" in out
    _assert_stored(home, yahoo, TICKERS)


_KILLED_FETCH = """
import sys
from tests.loopback_yahoo import route_yfinance_to
route_yfinance_to(sys.argv[1])
import closecast.flows.fetch as flow
real = flow.plan_fetches
flow.plan_fetches = lambda s, d, e: real(s, d.model_copy(update={"chunk_size": CHUNK}), e)
from closecast.cli.app import main
sys.argv = ["closecast", *sys.argv[2:]]
main()
""".replace("CHUNK", str(CHUNK))


@pytest.mark.slow  # a subprocess
def test_a_fetch_killed_midway_keeps_what_it_stored_and_the_next_asks_only_the_rest(
    tmp_path: Path, yahoo: LoopbackYahoo
) -> None:
    """`kill -9` while the third chunk waits on Yahoo: the first two chunks are stored,
    whole and readable, and the next fetch asks Yahoo only for the third's tickers."""
    home = tmp_path / "home"
    yahoo.hold["EEE"] = threading.Event()  # its request hangs until the test lets it go
    env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}  # the harness's API
    command = [sys.executable, "-c", _KILLED_FETCH, yahoo.url, "fetch", "--source", "yfinance",
               "--tickers", ",".join(TICKERS), "--home", str(home), "--as-of",
               AS_OF.isoformat(), "--fetch-rate", "60000"]  # fmt: skip
    log = (tmp_path / "fetch.log").open("w")
    process = subprocess.Popen(
        command, cwd=Path(__file__).resolve().parents[2], env=env, stdout=log, stderr=log
    )
    try:
        wait_for(lambda: "EEE" in yahoo.arrived, alive=lambda: process.poll() is None)
        assert "EEE" in yahoo.arrived, (tmp_path / "fetch.log").read_text()[-2000:]
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=60) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    assert _files(home) == [f"{t}.parquet" for t in TICKERS[:4]]
    _assert_stored(home, yahoo, TICKERS[:4])

    yahoo.hold.pop("EEE").set()
    yahoo.charts.clear()
    result = fetch(_data(TICKERS), home)

    assert sorted(yahoo.asked("history")) == ["EEE", "FFF"]
    assert result.failures == {} and sorted(result.frames) == ["EEE", "FFF"]
    _assert_stored(home, yahoo, TICKERS)
