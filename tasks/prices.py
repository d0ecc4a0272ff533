"""Price sources (yfinance, sample, csv) and the fetch step's logic.

Every source returns canonical frames (see `tasks.store.normalize_prices`)
for the tickers it has, and a one-line reason for those it has not.
"""

import ast
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Protocol

import pandas as pd
from prefect import task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.states import State

from closecast.calendar import session_on_or_before
from closecast.config import SAMPLE_TICKERS, DataConfig
from closecast.errors import InputError, PipelineError
from closecast.statuses import FETCH_FAILED, STALE_DATA, Issues, ticker_label
from tasks.store import normalize_prices, overlap_start

logger = logging.getLogger(__name__)

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
            result.failures[ticker] = f"no rows for {ticker} between {start} and {end}"
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


def read_price_csv(path: Path) -> pd.DataFrame:
    """One CSV (plain or .gz) with columns matched case-insensitively, indexed by date.

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
    return frame[frame.index.notna()]


def _csv_files(path: Path) -> list[Path]:
    """The CSV files a source path names: itself, or the folder's *.csv and *.csv.gz."""
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("*.csv")) + sorted(path.glob("*.csv.gz"))
    if not files:
        raise InputError(f"no TICKER.csv files in {path}")
    return files


def _fingerprint(files: list[Path]) -> tuple[tuple[str, int, int], ...]:
    """Name, mtime and size of each file: a changed file is read again."""
    return tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in files)


@lru_cache(maxsize=4)
def _load_csv(path: Path, fingerprint: tuple[tuple[str, int, int], ...]) -> dict[str, pd.DataFrame]:
    """Every ticker's frame in a CSV folder or long file (cached while no file changes)."""
    if path.is_dir():
        files = [Path(name) for name, _, _ in fingerprint]
        return {f.name.split(".csv")[0].upper(): normalize_prices(read_price_csv(f)) for f in files}
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
    """A folder of `TICKER.csv` files, or one long file with a ticker column (.csv or .csv.gz)."""

    path: Path
    name: str = "csv"
    live: bool = False

    def __post_init__(self) -> None:
        if not self.path.exists():
            raise InputError(f"CSV source path does not exist: {self.path}")

    @property
    def _frames(self) -> dict[str, pd.DataFrame]:
        path = self.path.resolve()
        return _load_csv(path, _fingerprint(_csv_files(path)))

    def tickers(self) -> list[str]:
        """Every ticker the source holds."""
        return sorted(self._frames)

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        return _from_local(self._frames, tickers, start, end)


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
    """Retry rate limits and network errors, not bad input (a broken CSV stays broken)."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, InputError)


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

    Each chunk retries `config.fetch_retries` times with exponential backoff.
    A chunk that still fails marks only its own tickers fetch_failed; the
    other chunks go on. Bad input (InputError) is raised, not retried.
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
