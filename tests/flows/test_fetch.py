import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path

import mlflow
import pandas as pd
import pytest
from filelock import Timeout

from closecast.cli.app import main
from closecast.core.calendar import sessions_between
from closecast.core.config import DataConfig, WindowConfig
from closecast.core.errors import PipelineError
from closecast.core.statuses import FETCH_FAILED, INSUFFICIENT_HISTORY, STALE_DATA, merge_issues
from closecast.flows.fetch import fetch
from closecast.tasks.data.store import load_prices, read_prices, store_lock, write_prices
from closecast.tasks.data.validate import validate_prices
from closecast.tasks.modeling.features import build_features
from closecast.tasks.modeling.windows import build_windows, window_columns
from tests.fakes import FakeYahoo, yahoo_frame
from tests.fixtures import read_report, write_ticker_csvs

pytestmark = pytest.mark.usefixtures("prefect_harness")

START = date(2020, 1, 2)
SESSIONS = sessions_between(START, date(2021, 12, 31))
DAY_100, DAY_200 = SESSIONS[99], SESSIONS[199]


def _data(tickers: list[str], as_of: date | None, **options: object) -> DataConfig:
    """yfinance from START, retries without waiting, and a rate limit that never makes a test
    wait (tests/tasks/data/test_fetch_limits.py tests its waits)."""
    settings: dict[str, object] = {
        "start": START,
        "retry_backoff_seconds": 0,
        "fetch_rate": 60_000,
        **options,
    }
    return DataConfig(source="yfinance", tickers=tickers, as_of=as_of, **settings)


def _expected(history: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """The fake's rows up to as_of, as the store keeps them."""
    rows = history[history.index.tz_localize(None) <= pd.Timestamp(as_of)]
    return rows.rename(columns={"Adj Close": "adj_close"}).rename(columns=str.lower)


def _assert_stored(home: Path, ticker: str, expected: pd.DataFrame) -> None:
    stored = read_prices(home / "prices", ticker)
    assert stored is not None
    assert stored.index.is_unique and stored.index.is_monotonic_increasing
    assert list(stored.index) == list(expected.index.tz_localize(None))
    pd.testing.assert_series_equal(
        stored["adj_close"], expected["adj_close"].set_axis(stored.index), check_names=False
    )
    pd.testing.assert_series_equal(
        stored["close"], expected["close"].set_axis(stored.index), check_names=False
    )


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


@pytest.fixture
def yahoo(fake_yahoo: FakeYahoo) -> FakeYahoo:
    """Yahoo holds 300 sessions of AAA and BBB from 2020-01-02."""
    fake_yahoo.history = {"AAA": yahoo_frame(300), "BBB": yahoo_frame(300, seed=1)}
    return fake_yahoo


# --- incremental and idempotent -----------------------------------------------


def test_second_fetch_asks_only_from_the_overlap(tmp_path: Path, yahoo: FakeYahoo) -> None:
    """The first fetch asks from start; the next one only from overlap_days rows back."""
    fetch(_data(["AAA", "BBB"], DAY_100), tmp_path)
    assert yahoo.downloads == [(["AAA", "BBB"], START, DAY_100 + timedelta(days=1))]

    yahoo.downloads.clear()
    result = fetch(_data(["AAA", "BBB"], DAY_200, overlap_days=5), tmp_path)

    assert yahoo.downloads == [(["AAA", "BBB"], SESSIONS[95], DAY_200 + timedelta(days=1))]
    assert {c[1] for c in yahoo.calls[-2:]} == {SESSIONS[95]}
    assert result.failures == {}
    for ticker in ["AAA", "BBB"]:
        _assert_stored(tmp_path, ticker, _expected(yahoo.history[ticker], DAY_200))


def test_refetch_changes_nothing_and_a_longer_source_extends(tmp_path: Path) -> None:
    """Re-reading the same CSV leaves the store byte-identical; a longer CSV later extends
    it with only the new rows, dates unique and ascending."""
    history = yahoo_frame(300)
    history.index = history.index.tz_localize(None).rename("Date")
    folder = tmp_path / "csv"
    folder.mkdir()
    data = DataConfig(source=f"csv:{folder}", tickers=["AAA"])
    history.iloc[:200].to_csv(folder / "AAA.csv")
    fetch(data, tmp_path / "home")
    before = _snapshot(tmp_path / "home" / "prices")
    fetch(data, tmp_path / "home")
    assert _snapshot(tmp_path / "home" / "prices") == before

    history.to_csv(folder / "AAA.csv")
    result = fetch(data, tmp_path / "home")

    stored = read_prices(tmp_path / "home" / "prices", "AAA")
    assert len(stored) == 300 and stored.index.is_unique
    assert stored.index.is_monotonic_increasing
    assert (stored["close"].to_numpy() == history["Close"].to_numpy()).all()
    assert result.frames["AAA"].index[0] == stored.index[195]  # only the overlap was re-read


def test_rebased_history_is_fetched_again_whole(
    tmp_path: Path, yahoo: FakeYahoo, caplog: pytest.LogCaptureFixture
) -> None:
    """A dividend rewriting old rows' Adj Close triggers a full re-fetch of that ticker."""
    fetch(_data(["AAA", "BBB"], DAY_100), tmp_path)
    rebased = yahoo.history["AAA"].copy()
    rebased.loc[rebased.index < rebased.index[150], "Adj Close"] *= 0.99
    yahoo.history["AAA"] = rebased
    yahoo.downloads.clear()

    fetch(_data(["AAA", "BBB"], DAY_200), tmp_path)

    end = DAY_200 + timedelta(days=1)
    assert yahoo.downloads == [(["AAA", "BBB"], SESSIONS[95], end), (["AAA"], START, end)]
    _assert_stored(tmp_path, "AAA", _expected(rebased, DAY_200))
    _assert_stored(tmp_path, "BBB", _expected(yahoo.history["BBB"], DAY_200))
    assert "re-based history of AAA" in caplog.text


def test_unreadable_file_is_named_and_fetched_again(
    tmp_path: Path, yahoo: FakeYahoo, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt store file is reported by name and replaced by a full re-fetch."""
    fetch(_data(["AAA", "BBB"], DAY_100), tmp_path)
    (tmp_path / "prices" / "AAA.parquet").write_bytes(b"PAR1 torn write")
    yahoo.downloads.clear()

    fetch(_data(["AAA", "BBB"], DAY_100), tmp_path)

    assert "AAA.parquet" in caplog.text and "fetching its whole history again" in caplog.text
    assert yahoo.downloads == [(["AAA"], START, DAY_100 + timedelta(days=1))]
    _assert_stored(tmp_path, "AAA", _expected(yahoo.history["AAA"], DAY_100))


# --- concurrency --------------------------------------------------------------


def test_fetch_waits_while_another_run_holds_the_home(
    tmp_path: Path, yahoo: FakeYahoo, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fetch neither reads nor writes the store while another run holds its lock."""
    waiting = threading.Event()

    @contextmanager
    def lock_noting_the_wait(home: Path) -> Iterator[None]:
        lock = store_lock(home)
        try:
            lock.acquire(timeout=0)
        except Timeout:  # held by another: the fetch now waits for it
            waiting.set()
            lock.acquire()
        try:
            yield
        finally:
            lock.release()

    monkeypatch.setattr("closecast.flows.fetch.store_lock", lock_noting_the_wait)
    thread = threading.Thread(target=fetch, args=(_data(["AAA"], DAY_100), tmp_path))
    with store_lock(tmp_path):
        thread.start()
        assert waiting.wait(timeout=60), "the fetch never waited for the home's lock"
        assert yahoo.downloads == []
        assert not (tmp_path / "prices").exists()
    thread.join()
    _assert_stored(tmp_path, "AAA", _expected(yahoo.history["AAA"], DAY_100))
    assert [p.name for p in (tmp_path / "prices").iterdir()] == ["AAA.parquet"]  # no temp


# --- failures -----------------------------------------------------------------


def test_rate_limit_is_retried_by_the_task(tmp_path: Path, yahoo: FakeYahoo) -> None:
    """A rate limit that outlasts the first try (the batch and the second ask of AAA) is
    retried by the task; the retry succeeds and nothing fails."""
    yahoo.rate_limit("AAA", times=2)
    result = fetch(_data(["AAA", "BBB"], DAY_100, fetch_retries=2), tmp_path)
    assert result.failures == {}
    assert len(yahoo.downloads) == 2
    _assert_stored(tmp_path, "AAA", _expected(yahoo.history["AAA"], DAY_100))


def test_failures_stay_with_their_chunk_or_ticker(tmp_path: Path, yahoo: FakeYahoo) -> None:
    """Chunks of chunk_size map to one download each; a chunk whose network errors outlast
    its retries fails only its own tickers, an unknown ticker only itself; the rest is stored.
    (A rate limit that outlasts them stops the fetch: tests/flows/test_fetch_at_scale.py.)"""
    yahoo.history["CCC"] = yahoo_frame(300, seed=2)
    yahoo.fail("AAA", *[ConnectionError("connection reset by peer") for _ in range(4)])
    data = _data(["AAA", "BBB", "CCC", "NOPE"], DAY_100, chunk_size=2, fetch_retries=1)

    result = fetch(data, tmp_path)
    loaded = load_prices(tmp_path / "prices", data.tickers, DAY_100)
    issues = result.issues(loaded.frames)

    assert sorted(d[0] for d in yahoo.downloads) == [
        ["AAA", "BBB"],
        ["AAA", "BBB"],
        ["CCC", "NOPE"],
    ]
    assert set(issues) == {"AAA", "BBB", "NOPE"}
    assert {status for status, _ in issues.values()} == {FETCH_FAILED}
    assert "connection reset" in issues["AAA"][1] and "connection reset" in issues["BBB"][1]
    assert issues["NOPE"][1].startswith("NOPE: ") and "delisted" in issues["NOPE"][1]
    assert [p.name for p in (tmp_path / "prices").iterdir()] == ["CCC.parquet"]


def test_failed_fetch_falls_back_to_the_store_as_stale(tmp_path: Path, yahoo: FakeYahoo) -> None:
    """A ticker whose fetch fails keeps its stored rows: it trains, and is stale_data."""
    fetch(_data(["AAA", "BBB"], DAY_100), tmp_path)
    del yahoo.history["AAA"]  # Yahoo stops knowing AAA

    result = fetch(_data(["AAA", "BBB"], DAY_200), tmp_path)
    loaded = load_prices(tmp_path / "prices", ["AAA", "BBB"], DAY_200)
    validated = validate_prices(loaded.frames)
    config = WindowConfig()
    features = build_features(validated.frames, window_columns(config.features))
    dataset = build_windows(features, config, loaded.as_of)
    issues = merge_issues(result.issues(loaded.frames), loaded.issues, dataset.issues)

    assert set(result.failures) == {"AAA"}
    assert loaded.frames["AAA"].index[-1] == pd.Timestamp(DAY_100)
    assert list(issues) == ["AAA"] and issues["AAA"][0] == STALE_DATA
    assert issues["AAA"][1].startswith("fetch failed (AAA: ") and str(DAY_100) in issues["AAA"][1]
    assert dataset.issues["AAA"] == (
        STALE_DATA,
        f"the last valid price is from {DAY_100}, before as_of {DAY_200}",
    )
    assert "AAA" in dataset.train.tickers


def test_broken_csv_fails_its_ticker_and_the_others_are_stored(tmp_path: Path) -> None:
    """A CSV without a volume column fails only its ticker (fetch_failed, naming the file);
    when it is the only ticker asked for, the fetch is a one-line PipelineError."""
    folder = write_ticker_csvs(tmp_path / "csv", {"BBB": 300})
    (folder / "AAA.csv").write_text("Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n")
    home = tmp_path / "home"

    result = fetch(DataConfig(source=f"csv:{folder}", tickers=["AAA", "BBB"]), home)
    issues = result.issues(load_prices(home / "prices", ["AAA", "BBB"], None).frames)

    assert issues == {"AAA": (FETCH_FAILED, f"AAA: {folder / 'AAA.csv'} lacks column(s) volume")}
    assert [p.name for p in (home / "prices").iterdir()] == ["BBB.parquet"]
    with pytest.raises(PipelineError, match=r"every fetch failed \(1 tickers\).*AAA\.csv lacks"):
        fetch(DataConfig(source=f"csv:{folder}", tickers=["AAA"]), home)


# --- command line -------------------------------------------------------------


def test_cli_run_with_every_fetch_failing_exits_1_and_touches_nothing(
    tmp_path: Path, yahoo: FakeYahoo, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1; the store, the earlier report and the registry are untouched."""
    home = tmp_path / "home"
    write_prices(home / "prices", "AAA", _expected(yahoo.history["AAA"], DAY_100))
    (home / "reports").mkdir()
    (home / "reports" / "predictions_2020-05-22.csv").write_text("earlier report\n")
    before = {d: _snapshot(home / d) for d in ("prices", "reports")}
    yahoo.history = {}

    code = main(
        ["run", "--source", "yfinance", "--tickers", "AAA", "--home", str(home),
         "--as-of", DAY_200.isoformat(), "--epochs", "1", "--hidden", "8"]
    )  # fmt: skip

    assert code == 1
    assert "every fetch failed" in capsys.readouterr().err
    assert {d: _snapshot(home / d) for d in ("prices", "reports")} == before
    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists()


def test_cli_run_on_a_folder_with_a_broken_file_predicts_the_ticker_asked_for(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --tickers GOOD` on a folder whose TXT.csv has 'abc' in a price exits 0 with an ok
    report row for GOOD; GOOD's own row with 'abc' is dropped and counted in rows_dropped."""
    folder = write_ticker_csvs(tmp_path / "csv", {"GOOD": 300, "TXT": 300})
    for name, row in [("TXT.csv", 3), ("GOOD.csv", 150)]:
        lines = (folder / name).read_text().splitlines()
        cells = lines[row].split(",")
        cells[4] = "abc"  # Date,Open,High,Low,Close,...: the close
        lines[row] = ",".join(cells)
        (folder / name).write_text("\n".join(lines) + "\n")
    home = tmp_path / "home"

    code = main(
        ["run", "--source", f"csv:{folder}", "--tickers", "GOOD", "--home", str(home),
         "--epochs", "2", "--hidden", "8"]
    )  # fmt: skip

    assert code == 0, capsys.readouterr().err
    (path,) = (home / "reports").glob("predictions_*.csv")
    report = read_report(path)
    assert list(report["ticker"]) == ["GOOD"] and list(report["status"]) == ["ok"]
    assert report.loc[0, "predicted_close"] > 0
    run = mlflow.MlflowClient(f"sqlite:///{home / 'mlflow.db'}").get_run(report.loc[0, "run_id"])
    assert run.data.metrics["rows_dropped"] == 1


@pytest.mark.parametrize("how", ["--tickers", "--tickers-file"])
def test_cli_fetch_refuses_a_path_ticker_before_touching_disk(
    tmp_path: Path, how: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`../../x` is exit 2 naming it, and no file appears anywhere."""
    listing = tmp_path / "list.txt"
    listing.write_text("# universe\nAAA\n../../x  # escape\n")
    value = "AAA,../../x" if how == "--tickers" else str(listing)
    home = tmp_path / "a" / "b" / "home"
    before = sorted(tmp_path.rglob("*"))

    code = main(["fetch", how, value, "--source", "sample", "--home", str(home)])

    assert code == 2
    err = capsys.readouterr().err.strip()
    assert "'../../x'" in err and len(err.splitlines()) == 1
    assert sorted(tmp_path.rglob("*")) == before


@pytest.mark.parametrize("target", ["nowhere", "nowhere.csv.gz"])
def test_cli_fetch_missing_csv_path_exits_2_naming_it(
    tmp_path: Path, target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing CSV folder or file is exit 2 with its path in the message."""
    home = tmp_path / "home"
    code = main(["fetch", "--source", f"csv:{tmp_path / target}", "--home", str(home)])
    assert code == 2
    assert str(tmp_path / target) in capsys.readouterr().err
    assert not home.exists()


def test_cli_fetch_reports_each_ticker(
    tmp_path: Path, csv_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`closecast fetch` stores prices and prints one line per ticker."""
    home = tmp_path / "home"
    code = main(
        ["fetch", "--source", f"csv:{csv_folder}", "--tickers", "AAA,NOPE", "--home", str(home)]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "AAA: 300 rows fetched" in out
    assert "NOPE: ticker NOPE is not in the source" in out
    assert (home / "prices" / "AAA.parquet").exists()


# --- the shared S&P 500 file --------------------------------------------------


def test_sp500_slice_says_why_each_ticker_is_unusable(
    tmp_path: Path, sp500_frames: dict[str, pd.DataFrame]
) -> None:
    """A slice of the real file: NaN opens dropped and counted, a 44-row ticker is short."""
    picked = {t: sp500_frames[t] for t in ["APTV", "DHR", "ABT", "LNT"]}
    long = pd.concat([f.drop(columns="adj_close").assign(Name=t) for t, f in picked.items()])
    slice_path = tmp_path / "slice.csv.gz"
    long.to_csv(slice_path)  # date,open,high,low,close,volume,Name as in the shared file
    data = DataConfig(source=f"csv:{slice_path}", tickers=["ABT", "APTV", "DHR", "LNT"])

    result = fetch(data, tmp_path / "home")
    loaded = load_prices(tmp_path / "home" / "prices", data.tickers, None)
    validated = validate_prices(loaded.frames)
    # Inputs without a lookback, so a ticker's rows are the file's valid rows: the default
    # features drop 65 warm-up rows first (models/derived.py) and APTV would have none.
    config = WindowConfig(features=["close", "volume", "open"])
    features = build_features(validated.frames, window_columns(config.features))
    dataset = build_windows(features, config, loaded.as_of)
    issues = merge_issues(result.issues(loaded.frames), loaded.issues, dataset.issues)

    assert loaded.as_of == date(2018, 2, 7)
    assert issues["APTV"][0] == INSUFFICIENT_HISTORY and "44 rows" in issues["APTV"][1]
    assert set(issues) == {"APTV"}
    table = validated.dropped.set_index(["ticker", "reason"])["rows"].to_dict()
    assert table[("DHR", "non_finite_price")] == 2
    assert table[("ABT", "repeated_bar")] == 2
    assert table[("LNT", "inconsistent_ohlc")] == 1
    assert dataset.tickers == ["ABT", "DHR", "LNT"]
