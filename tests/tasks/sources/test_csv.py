from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closecast.core.errors import InputError
from closecast.tasks.data.sources import CsvSource
from closecast.tasks.data.sources import csv as csv_source
from closecast.tasks.data.sources.csv import parse_dates
from closecast.tasks.data.store import PRICE_COLUMNS
from closecast.tasks.data.validate import validate_prices
from tests.fakes import yahoo_frame


def test_csv_folder_accepts_the_ways_users_write_csvs(tmp_path: Path) -> None:
    """Any column case, Adj Close optional, pandas' unnamed index column, .csv.gz files."""
    frame = yahoo_frame(5).reset_index()
    frame["Date"] = frame["Date"].dt.strftime("%Y-%m-%d")
    folder = tmp_path / "csv"
    folder.mkdir()
    frame.to_csv(folder / "AAA.csv", index=False)
    frame.drop(columns=["Adj Close"]).rename(columns=str.upper).to_csv(
        folder / "bbb.csv", index=False
    )
    frame.set_index("Date").rename_axis(None).to_csv(folder / "CCC.csv")  # "Unnamed: 0"
    frame.rename(columns={"Adj Close": "adj_close"}).to_csv(folder / "DDD.csv.gz", index=False)

    source = CsvSource(folder)
    result = source.download(source.tickers(), None, None)

    assert source.tickers() == ["AAA", "BBB", "CCC", "DDD"]
    assert result.failures == {}
    for ticker, got in result.frames.items():
        assert list(got.columns) == PRICE_COLUMNS, ticker
        assert got.index[0] == pd.Timestamp("2020-01-02"), ticker
        np.testing.assert_allclose(got["close"], frame["Close"], err_msg=ticker)
    np.testing.assert_allclose(result.frames["BBB"]["adj_close"], frame["Close"])
    np.testing.assert_allclose(result.frames["AAA"]["adj_close"], frame["Adj Close"])


def test_csv_dates_with_utc_offsets_keep_their_calendar_day() -> None:
    """yfinance's to_csv writes `-05:00`/`-04:00` offsets; each row keeps its own date."""
    values = pd.Series(["2020-03-06 00:00:00-05:00", "2020-03-09 00:00:00-04:00", "junk"])
    parsed = parse_dates(values)
    assert list(parsed[:2]) == [pd.Timestamp("2020-03-06"), pd.Timestamp("2020-03-09")]
    assert parsed[2] is pd.NaT


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["2020-03-06", "2020-03-09"], ["2020-03-06", "2020-03-09"]),
        (["2020-03-06", " 2020-03-09 "], ["2020-03-06", "2020-03-09"]),
        (["2020-03-06", "03/09/2020"], ["2020-03-06", None]),  # one format per file
        (["2020-03-06", None, "junk"], ["2020-03-06", None, None]),
    ],
    ids=["plain", "padded", "mixed-formats", "missing-and-junk"],
)
def test_csv_dates_plain_or_not_read_the_same(values: list, expected: list) -> None:
    """Plain ISO dates take one parse; any other value sends the column the careful way,
    which strips padding and leaves NaT where there is no date (or another format than
    the ISO one the rest of the column has)."""
    parsed = parse_dates(pd.Series(values, dtype=object))
    assert list(parsed) == [pd.Timestamp(e) if e else pd.NaT for e in expected]


def test_csv_long_file_with_name_column(tmp_path: Path) -> None:
    """A long .csv.gz with the shared S&P file's `Name` ticker column splits per ticker."""
    parts = []
    for i, ticker in enumerate(["AAA", "BF.B"]):
        part = yahoo_frame(8, seed=i).drop(columns=["Adj Close"]).rename(columns=str.lower)
        part.index = part.index.strftime("%Y-%m-%d").rename("date")
        parts.append(part.reset_index().assign(Name=ticker))
    path = tmp_path / "long.csv.gz"
    pd.concat(parts).to_csv(path, index=False)

    source = CsvSource(path)
    result = source.download(["BF.B", "ZZZ"], date(2020, 1, 6), date(2020, 1, 8))

    assert source.tickers() == ["AAA", "BF.B"]
    assert list(result.frames["BF.B"].index.strftime("%Y-%m-%d")) == [
        "2020-01-06",
        "2020-01-07",
        "2020-01-08",
    ]
    assert result.failures == {"ZZZ": "ticker ZZZ is not in the source"}


def _write_csv(
    path: Path, n: int = 20, seed: int = 0, bad: dict[tuple[int, str], str] | None = None
) -> pd.DataFrame:
    """A Yahoo-style CSV of n sessions, with `bad` cells ((row, column) -> text) written in."""
    frame = yahoo_frame(n, seed=seed)
    frame.index = frame.index.tz_localize(None).rename("Date")
    text = frame.astype(object)
    for (row, column), value in (bad or {}).items():
        text.iloc[row, text.columns.get_loc(column)] = value
    text.to_csv(path)
    return frame


def test_csv_folder_reads_only_the_requested_tickers_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Listing a folder reads no file; fetching GOOD reads GOOD.csv alone, never TXT.csv."""
    _write_csv(tmp_path / "GOOD.csv")
    _write_csv(tmp_path / "TXT.csv", bad={(3, "Close"): "abc"})
    read: list[str] = []
    real_read = csv_source.read_price_csv

    def counting_read(path: Path) -> pd.DataFrame:
        read.append(path.name)
        return real_read(path)

    monkeypatch.setattr(csv_source, "read_price_csv", counting_read)
    source = CsvSource(tmp_path)

    assert source.tickers() == ["GOOD", "TXT"]
    assert read == []
    result = source.download(["GOOD"], None, None)

    assert read == ["GOOD.csv"]
    assert result.failures == {} and len(result.frames["GOOD"]) == 20


@pytest.mark.parametrize("layout", ["folder", "long file"])
def test_csv_cells_that_are_not_numbers_cost_only_their_rows(
    tmp_path: Path, layout: str, caplog: pytest.LogCaptureFixture
) -> None:
    """'abc' in a price, 'x' in a volume and an empty cell become missing values: validation
    drops and counts those rows of that ticker; its other rows and other tickers are kept."""
    bad = {(2, "Close"): "abc", (5, "Volume"): "x", (7, "Open"): ""}
    if layout == "folder":
        _write_csv(tmp_path / "AAA.csv", bad=bad)
        _write_csv(tmp_path / "BBB.csv", seed=1)
        path = tmp_path
    else:
        for ticker, seed, cells in [("AAA", 0, bad), ("BBB", 1, {})]:
            _write_csv(tmp_path / f"{ticker}.part", seed=seed, bad=cells)
        parts = [
            pd.read_csv(tmp_path / f"{t}.part", dtype=str).assign(Name=t) for t in ["AAA", "BBB"]
        ]
        path = tmp_path / "long.csv"
        pd.concat(parts).to_csv(path, index=False)

    result = CsvSource(path).download(["AAA", "BBB"], None, None)
    validated = validate_prices(result.frames)

    assert result.failures == {}
    assert result.frames["AAA"]["close"].isna().sum() == 1
    assert validated.dropped.set_index(["ticker", "reason"])["rows"].to_dict() == {
        ("AAA", "non_finite_price"): 2,
        ("AAA", "bad_volume"): 1,
    }
    assert len(validated.frames["AAA"]) == 17 and len(validated.frames["BBB"]) == 20
    assert "2 cells that are not numbers" in caplog.text and "'abc'" in caplog.text


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("AAA.csv", "Date,Open,High,Low,Close\n2020-01-02,1,1,1,1\n", "lacks column(s) volume"),
        ("AAA.csv", ",Open,High,Low,Close,Volume\n0,1,1,1,1,5\n", "no date column"),
        ("AAA.csv", "Open,High,Low,Close,Volume\n1,1,1,1,5\n", "no date column"),
        ("AAA.csv", "a picture, not prices\n", "no date column"),
        ("AAA.csv", "", "cannot read"),
        ("aaa.csv.gz", "not gzip at all", "cannot read"),
    ],
)
def test_csv_file_that_cannot_be_parsed_fails_only_its_ticker(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    """An unparseable file is a one-line failure of its own ticker, naming the file."""
    (tmp_path / name).write_text(content)
    _write_csv(tmp_path / "GOOD.csv")

    result = CsvSource(tmp_path).download(["AAA", "GOOD"], None, None)

    assert set(result.frames) == {"GOOD"}
    assert set(result.failures) == {"AAA"}
    reason = result.failures["AAA"]
    assert reason.startswith("AAA: ") and name in reason and message in reason
    assert "\n" not in reason


def test_csv_long_file_that_cannot_be_parsed_fails_every_ticker(tmp_path: Path) -> None:
    """A long file without a ticker column fails each requested ticker with that reason."""
    path = tmp_path / "long.csv"
    _write_csv(path)

    result = CsvSource(path).download(["AAA", "BBB"], None, None)

    assert result.frames == {}
    assert set(result.failures) == {"AAA", "BBB"}
    assert all("has no ticker column" in r for r in result.failures.values())
    with pytest.raises(InputError, match="has no ticker column"):
        CsvSource(path).tickers()


def test_csv_folder_with_two_files_for_a_ticker_fails_it(tmp_path: Path) -> None:
    """GOOD.csv beside good.csv.gz is ambiguous: GOOD fails naming both, nothing is guessed."""
    _write_csv(tmp_path / "GOOD.csv")
    _write_csv(tmp_path / "good.csv.gz", seed=1)
    _write_csv(tmp_path / "BBB.csv")

    result = CsvSource(tmp_path).download(["GOOD", "BBB"], None, None)

    assert set(result.frames) == {"BBB"}
    assert "GOOD.csv" in result.failures["GOOD"] and "good.csv.gz" in result.failures["GOOD"]


def test_csv_folder_without_csvs_is_an_error(tmp_path: Path) -> None:
    """An empty folder is an InputError naming it, not an empty universe."""
    with pytest.raises(InputError, match=str(tmp_path)):
        CsvSource(tmp_path).tickers()


def test_csv_reads_the_shared_sp500_file(sp500_frames: dict[str, pd.DataFrame]) -> None:
    """The real S&P 500 long file (.csv.gz, `Name` column) gives 505 tickers, rows kept as-is."""
    assert len(sp500_frames) == 505 and {"BF.B", "BRK.B", "APTV"} <= set(sp500_frames)
    assert len(sp500_frames["APTV"]) == 44
    dhr = sp500_frames["DHR"]
    assert dhr["open"].isna().sum() == 2  # the README's NaN opens, kept for validation
    assert dhr.index.is_unique and dhr.index.is_monotonic_increasing
    assert (dhr.index[0], dhr.index[-1]) == (pd.Timestamp("2013-02-08"), pd.Timestamp("2018-02-07"))
    np.testing.assert_allclose(dhr["adj_close"], dhr["close"])  # no Adj Close column


@pytest.mark.parametrize(
    ("start", "end", "said"),
    [
        (None, None, "the source has no rows for AAA"),
        (None, date(2021, 1, 8), "the source has no rows for AAA up to 2021-01-08"),
        (date(2021, 1, 4), date(2021, 1, 8), "the source has no rows for AAA from 2021-01-04 to"),
    ],
)
def test_header_only_csv_fails_its_ticker_in_a_sentence(
    tmp_path: Path, start: date | None, end: date | None, said: str
) -> None:
    """A CSV with a header and no rows fails its ticker with a sentence, never 'None'."""
    (tmp_path / "AAA.csv").write_text("Date,Open,High,Low,Close,Adj Close,Volume\n")
    result = CsvSource(tmp_path).download(["AAA"], start, end)
    assert result.frames == {}
    assert result.failures["AAA"].startswith(said)
    assert "None" not in result.failures["AAA"]
