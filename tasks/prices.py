"""Price sources (yfinance, sample, csv) and the fetch step's logic.

Every source returns canonical frames (see `tasks.store.normalize_prices`)
for the tickers it has, and a one-line reason for those it has not.
"""

import ast
import logging
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol, TypeVar

import pandas as pd
from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from core.calendar import session_on_or_before
from core.config import SAMPLE_TICKERS, DataConfig
from core.errors import InputError, PipelineError
from core.statuses import FETCH_FAILED, STALE_DATA, Issues, ticker_label
from tasks.store import PRICE_COLUMNS, normalize_prices, overlap_start

logger = logging.getLogger(__name__)
T = TypeVar("T")

_YAHOO_COLUMNS = {
    "Open": "open",
    "High": "high",
    "Low": "low",
    "Close": "close",
    "Adj Close": "adj_close",
    "Volume": "volume",
}
# yfinance logs these (it does not raise them); they are worth a retry.
_TRANSIENT = re.compile(
    r"RateLimit|Too Many Requests|timed? ?out|Timeout|Connection|curl|resolve host|"
    r"Temporary failure|HTTP Error 5\d\d",
    re.IGNORECASE,
)


class TransientFetchError(RuntimeError):
    """A rate limit or network failure: the fetch task retries it with backoff."""


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


def _from_local(
    available: dict[str, pd.DataFrame], tickers: list[str], start: date | None, end: date | None
) -> FetchResult:
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


@dataclass
class SampleSource:
    """Real daily index OHLCV shipped in the `arch` package: ^GSPC and ^IXIC, 1999-2018."""

    name: str = "sample"
    live: bool = False

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        from arch.data import nasdaq, sp500

        loaders = {"^GSPC": sp500.load, "^IXIC": nasdaq.load}
        assert set(loaders) == set(SAMPLE_TICKERS)
        return {
            t: normalize_prices(load().rename(columns=_YAHOO_COLUMNS))
            for t, load in loaders.items()
        }

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        return _from_local(self._frames, tickers, start, end)


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
        result = _from_local(frames, [t for t in tickers if t not in unreadable], start, end)
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


class _ErrorLog(logging.Handler):
    """Collects the per-ticker errors yfinance logs instead of raising."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.errors: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        match = re.match(r"^(\[.*?\]): (.*)$", record.getMessage().strip(), re.DOTALL)
        if not match:
            return
        try:
            symbols = ast.literal_eval(match.group(1))
        except (ValueError, SyntaxError):
            return
        for symbol in symbols:
            self.errors[str(symbol)] = match.group(2).splitlines()[0]


@contextmanager
def _yfinance_errors() -> Iterator[_ErrorLog]:
    handler = _ErrorLog()
    yf_logger = logging.getLogger("yfinance")
    yf_logger.addHandler(handler)
    try:
        yield handler
    finally:
        yf_logger.removeHandler(handler)


def split_download(
    raw: pd.DataFrame | None, tickers: list[str], errors: dict[str, str]
) -> FetchResult:
    """Split yf.download's (Price, Ticker) MultiIndex frame into one frame per ticker."""
    result = FetchResult()
    present = set()
    if raw is not None and not raw.empty and isinstance(raw.columns, pd.MultiIndex):
        present = set(raw.columns.get_level_values("Ticker"))
    for ticker in tickers:
        reason = errors.get(ticker, "yfinance returned no rows")
        if ticker not in present:
            result.failures[ticker] = f"{ticker}: {reason}"
            continue
        assert raw is not None
        frame = raw.xs(ticker, axis=1, level="Ticker").rename(columns=_YAHOO_COLUMNS)
        frame = frame.dropna(how="all")
        if frame.empty:
            result.failures[ticker] = f"{ticker}: {reason}"
        else:
            result.frames[ticker] = normalize_prices(frame)
    return result


@dataclass
class YFinanceSource:
    """Yahoo Finance through `yf.download`, one batched call per chunk, unadjusted."""

    name: str = "yfinance"
    live: bool = True

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        """One `yf.download` for all `tickers`.

        Raises:
            TransientFetchError: yfinance logged a rate limit or network error
                for one of `tickers`; the fetch task retries the chunk.
        """
        import yfinance as yf

        # yfinance's `end` is exclusive: ask for the day after the last one wanted.
        end_exclusive = (end or date.today()) + timedelta(days=1)
        with _yfinance_errors() as log:
            raw = yf.download(
                tickers,
                start=start,
                end=end_exclusive,
                auto_adjust=False,
                actions=False,
                group_by="column",
                multi_level_index=True,
                progress=False,
                threads=True,
                # Per request: a hung connection fails this try (the task retries), not the night.
                timeout=30,
            )
        # The yfinance logger is global: chunks downloading at the same time see
        # each other's errors, so keep only this chunk's.
        errors = {t: log.errors[t] for t in tickers if t in log.errors}
        transient = {t: e for t, e in errors.items() if _TRANSIENT.search(e)}
        if transient:
            first = transient[min(transient)]
            raise TransientFetchError(
                f"yfinance failed for {', '.join(sorted(transient))}: {first}"
            )
        return split_download(raw, tickers, errors)


def open_source(spec: str) -> PriceSource:
    """The source a `--source` spec names; InputError for a missing CSV path."""
    if spec == "yfinance":
        return YFinanceSource()
    if spec == "sample":
        return SampleSource()
    if spec.startswith("csv:"):
        return CsvSource(Path(spec.removeprefix("csv:")).expanduser())
    raise InputError(f"invalid source {spec!r}: expected yfinance, sample or csv:PATH")


@dataclass(frozen=True)
class FetchPlan:
    """One source request: these tickers, from `start` (None: all the source has) to `end`."""

    tickers: list[str]
    start: date | None
    end: date | None


def plan_fetches(
    stored: dict[str, pd.DataFrame | None], config: DataConfig, end: date | None
) -> list[FetchPlan]:
    """Group tickers by first date to ask for, in chunks of `config.chunk_size`.

    A ticker already stored asks from `overlap_days` rows before its last
    row (re-checked on merge); a new one from `config.start`, else
    `history_years` before `end`.
    """
    fresh_start = config.start
    if fresh_start is None and end is not None:
        fresh_start = end.replace(year=end.year - config.history_years, day=min(end.day, 28))
    by_start: dict[date | None, list[str]] = {}
    last_session = pd.Timestamp(session_on_or_before(end)) if end is not None else None
    for ticker, frame in stored.items():
        if frame is not None and last_session is not None and frame.index[-1] >= last_session:
            continue  # the store already covers every session this run may see
        first = overlap_start(frame, config.overlap_days)
        start = first.date() if first is not None else fresh_start
        by_start.setdefault(start, []).append(ticker)
    plans = []
    for start, tickers in sorted(by_start.items(), key=lambda kv: (kv[0] is not None, kv[0])):
        for i in range(0, len(tickers), config.chunk_size):
            plans.append(FetchPlan(tickers[i : i + config.chunk_size], start, end))
    return plans


def fetch_end(source: PriceSource, as_of: date | None) -> date | None:
    """Last date to ask for: as_of, else today for a live source, else all it has."""
    if as_of is not None:
        return as_of
    return date.today() if source.live else None


def _download_run_name() -> str:
    from prefect.runtime import task_run

    plan: FetchPlan = task_run.parameters["plan"]
    return f"download {ticker_label(plan.tickers)} from {plan.start or 'start'}"


def _worth_retrying(task: object, task_run: object, state: State) -> bool:
    """Retry rate limits and network errors only: a parse error or a bug fails again the same way.

    OSError covers ConnectionError, TimeoutError and the request errors of
    curl_cffi and requests, which yfinance's HTTP layer raises.
    """
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, TransientFetchError | OSError)


def retry_delays(retries: int, backoff_seconds: float) -> list[float]:
    """Exponential backoff: backoff, 4x backoff, 16x backoff, ..."""
    return [backoff_seconds * 4**i for i in range(retries)]


@task(
    name="download-prices",
    retries=3,
    retry_delay_seconds=retry_delays(3, 2.0),
    retry_condition_fn=_worth_retrying,
    cache_policy=NO_CACHE,
    task_run_name=lambda: _download_run_name(),
)
def download_prices(source: PriceSource, plan: FetchPlan) -> FetchResult:
    """Ask the source for one chunk; rate limits and network errors are retried."""
    return source.download(plan.tickers, plan.start, plan.end)


def download_all(source: PriceSource, plans: list[FetchPlan], config: DataConfig) -> FetchResult:
    """Run every planned download (mapped, so a task runner can fan them out).

    A chunk that hits a rate limit or network error retries
    `config.fetch_retries` times with exponential backoff; any other error
    fails it at once. A chunk that fails marks only its own tickers
    fetch_failed; the other chunks go on. Bad input (InputError) is raised.
    """
    result = FetchResult()
    if not plans:
        return result
    download = download_prices.with_options(
        retries=config.fetch_retries,
        retry_delay_seconds=retry_delays(config.fetch_retries, config.retry_backoff_seconds),
    )
    futures = download.map(unmapped(source), plans)
    for plan, future in zip(plans, futures, strict=True):
        try:
            result.update(future.result())
        except InputError:
            raise
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.failures.update({t: f"{t}: {reason}" for t in plan.tickers})
    return result
