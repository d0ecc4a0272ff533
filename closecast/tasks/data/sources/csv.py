"""The csv source: a folder of TICKER.csv files, or one long file with a ticker column.

Columns are matched case-insensitively, dates read whatever their offset, and
a cell or a file that cannot be parsed costs its own row or ticker, never more.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

import pandas as pd

from closecast.core.errors import InputError
from closecast.tasks.data.sources.base import FetchResult, select_local
from closecast.tasks.data.store import PRICE_COLUMNS, normalize_prices

logger = logging.getLogger(__name__)
T = TypeVar("T")


def _canonical_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """Match columns case-insensitively: `Adj Close`, `adj_close`, `AdjClose` -> adj_close."""
    renamed = {c: re.sub(r"[\s_]+", "", str(c)).lower() for c in frame.columns}
    frame = frame.rename(columns=renamed)
    return frame.rename(columns={"adjclose": "adj_close"})


def _date_column(frame: pd.DataFrame, path: Path) -> str:
    if "date" in frame.columns:
        return "date"
    first = frame.columns[0]
    # pandas' default to_csv writes the index as a leading unnamed column
    if str(first).startswith("unnamed") and not pd.api.types.is_numeric_dtype(frame[first]):
        return first
    raise InputError(f"no date column in {path}: columns are {', '.join(map(str, frame.columns))}")


_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")


def parse_dates(values: pd.Series) -> pd.DatetimeIndex:
    """Trading dates from a CSV column; NaT where a value is no date.

    ISO strings keep their own calendar date, so `2020-07-02 00:00:00-04:00`
    (yfinance's `to_csv`) is 2020-07-02 whatever its UTC offset.
    """
    plain = pd.to_datetime(values, format="%Y-%m-%d", errors="coerce")  # one pass in C
    if not (plain.isna() & values.notna()).any():  # every value a plain date (the usual file)
        return pd.DatetimeIndex(plain)
    text = values.astype("string").str.strip()
    iso = text.str.match(_ISO_DATE).fillna(False).astype(bool)
    if iso.any():
        days = text.where(iso).str.slice(0, 10)
        return pd.DatetimeIndex(pd.to_datetime(days, format="%Y-%m-%d", errors="coerce"))
    try:
        index = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce"))
    except ValueError:  # mixed UTC offsets: read them as New York times
        index = pd.DatetimeIndex(pd.to_datetime(text, errors="coerce", utc=True))
        index = index.tz_convert("America/New_York")
    return index.tz_localize(None) if index.tz is not None else index


def _numbers(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Price and volume columns as numbers; a cell that is none ('abc') becomes missing.

    Validation then drops the rows holding such cells and counts them, as it
    does for empty cells, so one bad cell costs its row and not its file.
    """
    junk: dict[str, int] = {}
    example = ""
    for column in [c for c in PRICE_COLUMNS if c in frame.columns]:
        raw = frame[column]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        bad = (values.isna() & raw.notna()).to_numpy()
        if bad.any():
            junk[column] = int(bad.sum())
            example = example or repr(raw.to_numpy()[bad][0])
        frame[column] = values
    if junk:
        where = ", ".join(f"{column} {n}" for column, n in junk.items())
        logger.warning(
            "%s: %d cells that are not numbers (%s; e.g. %s) read as missing; "
            "validation drops their rows",
            path,
            sum(junk.values()),
            where,
            example,
        )
    return frame


def read_price_csv(path: Path) -> pd.DataFrame:
    """One CSV (plain or .gz) with columns matched case-insensitively, indexed by date.

    Cells that are not numbers are read as missing (see `_numbers`); rows
    whose date cannot be parsed are skipped, with a logged count.

    Raises:
        InputError: naming the file, when it cannot be read or lacks a column.
    """
    try:
        frame = _canonical_columns(pd.read_csv(path))
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise InputError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    date_col = _date_column(frame, path)
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in frame.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}")
    frame.index = parse_dates(frame.pop(date_col))
    undated = int(frame.index.isna().sum())
    if undated:
        logger.warning("%s: skipped %d rows whose date cannot be parsed", path, undated)
    return _numbers(frame[frame.index.notna()], path)


def _ticker_files(folder: Path) -> dict[str, list[Path]]:
    """A folder's TICKER.csv and TICKER.csv.gz files by upper-cased ticker, from names alone."""
    files: dict[str, list[Path]] = {}
    for suffix in (".csv", ".csv.gz"):
        for file in sorted(folder.glob(f"*{suffix}")):
            files.setdefault(file.name.removesuffix(suffix).upper(), []).append(file)
    if not files:
        raise InputError(f"no TICKER.csv files in {folder}")
    return files


def _read_cached(path: Path, load: Callable[[Path, int, int], T]) -> T:
    """`load(path, mtime, size)`: a cached load is reused until the file changes."""
    try:
        stat = path.stat()
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
    return load(path, stat.st_mtime_ns, stat.st_size)


# Keyed on each file's mtime and size; a backfill reads each file once, not once per session.
@lru_cache(maxsize=1024)
def _load_ticker_file(path: Path, mtime_ns: int, size: int) -> pd.DataFrame:
    """One ticker's frame from its own CSV file."""
    return normalize_prices(read_price_csv(path))


@lru_cache(maxsize=4)
def _load_long_file(path: Path, mtime_ns: int, size: int) -> dict[str, pd.DataFrame]:
    """Every ticker's frame in a long file with a ticker column."""
    frame = read_price_csv(path)
    ticker_col = next((c for c in ("ticker", "symbol", "name") if c in frame.columns), None)
    if ticker_col is None:
        raise InputError(f"{path} has no ticker column (ticker, symbol or Name)")
    frame = frame[frame[ticker_col].notna()]
    return {
        str(t).strip().upper(): normalize_prices(rows.drop(columns=[ticker_col]))
        for t, rows in frame.groupby(ticker_col, sort=True)
    }


@dataclass
class CsvSource:
    """A folder of `TICKER.csv` files, or one long file with a ticker column (.csv or .csv.gz).

    In a folder, each ticker is read from its own file only (its name matched
    case-insensitively), so a broken file fails its own ticker and no other.
    """

    path: Path
    name: str = "csv"
    live: bool = False

    def __post_init__(self) -> None:
        if not self.path.exists():
            raise InputError(f"CSV source path does not exist: {self.path}")

    def tickers(self) -> list[str]:
        """Every ticker the source holds: a folder's file names (nothing is parsed), or the
        long file's ticker column."""
        path = self.path.resolve()
        if path.is_dir():
            return sorted(_ticker_files(path))
        return sorted(_read_cached(path, _load_long_file))

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        """The frames of `tickers`; a file that cannot be parsed fails its tickers, one line each."""
        frames, unreadable = self._read(tickers)
        for reason in dict.fromkeys(unreadable.values()):
            logger.warning("%s", reason)
        result = select_local(frames, [t for t in tickers if t not in unreadable], start, end)
        result.failures.update(unreadable)
        return result

    def _read(self, tickers: list[str]) -> tuple[dict[str, pd.DataFrame], dict[str, str]]:
        """(frames of the tickers found, reason per ticker whose file cannot be parsed)."""
        path = self.path.resolve()
        frames: dict[str, pd.DataFrame] = {}
        unreadable: dict[str, str] = {}
        if not path.is_dir():
            try:
                held = _read_cached(path, _load_long_file)
            except InputError as exc:
                return {}, {t: f"{t}: {exc}" for t in tickers}
            return {t: held[t.upper()] for t in tickers if t.upper() in held}, {}
        files = _ticker_files(path)
        for ticker in tickers:
            matches = files.get(ticker.upper(), [])
            if len(matches) > 1:
                names = ", ".join(f.name for f in matches)
                unreadable[ticker] = f"{ticker}: several files in {path} match ({names})"
            elif matches:
                try:
                    frames[ticker] = _read_cached(matches[0], _load_ticker_file)
                except InputError as exc:
                    unreadable[ticker] = f"{ticker}: {exc}"
        return frames, unreadable
