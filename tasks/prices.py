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
from functools import cached_property
from pathlib import Path
from typing import Protocol

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from closecast.config import SAMPLE_TICKERS, DataConfig
from closecast.errors import InputError, PipelineError
from closecast.statuses import FETCH_FAILED, Issues
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

    def issues(self, loaded: dict[str, pd.DataFrame]) -> Issues:
        """fetch_failed for every failed ticker that has no stored rows to fall back on."""
        return {t: (FETCH_FAILED, m) for t, m in self.failures.items() if t not in loaded}

    def require_any(self, tickers: list[str]) -> None:
        """Raise PipelineError when the fetch failed for every requested ticker."""
        if tickers and set(tickers) <= set(self.failures):
            first = self.failures[tickers[0]]
            raise PipelineError(f"every fetch failed ({len(tickers)} tickers), e.g. {first}")

    def update(self, other: "FetchResult") -> None:
        self.frames.update(other.frames)
        self.failures.update(other.failures)
        for ticker in other.frames:
            self.failures.pop(ticker, None)


class PriceSource(Protocol):
    name: str

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
    if str(first).startswith("unnamed"):  # pandas' default to_csv writes the index unnamed
        return first
    raise InputError(f"no date column in {path}: columns are {', '.join(map(str, frame.columns))}")


def _read_price_csv(path: Path) -> pd.DataFrame:
    frame = _canonical_columns(pd.read_csv(path))
    date_col = _date_column(frame, path)
    missing = [c for c in ("open", "high", "low", "close", "volume") if c not in frame.columns]
    if missing:
        raise InputError(f"{path} lacks column(s) {', '.join(missing)}")
    frame.index = pd.to_datetime(frame.pop(date_col), errors="coerce")
    return frame[frame.index.notna()]


@dataclass
class CsvSource:
    """A folder of `TICKER.csv` files, or one long file with a ticker column."""

    path: Path
    name: str = "csv"

    def __post_init__(self) -> None:
        if not self.path.exists():
            raise InputError(f"CSV source path does not exist: {self.path}")

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        if self.path.is_dir():
            files = sorted(self.path.glob("*.csv")) + sorted(self.path.glob("*.csv.gz"))
            return {
                f.name.split(".csv")[0].upper(): normalize_prices(_read_price_csv(f)) for f in files
            }
        frame = _read_price_csv(self.path)
        ticker_col = next((c for c in ("ticker", "symbol", "name") if c in frame.columns), None)
        if ticker_col is None:
            raise InputError(f"{self.path} has no ticker column (ticker, symbol or Name)")
        return {
            str(t).upper(): normalize_prices(rows.drop(columns=[ticker_col]))
            for t, rows in frame.groupby(ticker_col, sort=True)
        }

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

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        import yfinance as yf

        # yfinance's `end` is exclusive.
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
            )
        transient = {t: e for t, e in log.errors.items() if _TRANSIENT.search(e)}
        if transient:
            raise TransientFetchError(
                f"yfinance failed for {', '.join(sorted(transient))}: {next(iter(transient.values()))}"
            )
        return split_download(raw, tickers, log.errors)


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
    for ticker, frame in stored.items():
        if frame is not None and end is not None and frame.index[-1] >= pd.Timestamp(end):
            continue  # the store already covers every date this run may see
        first = overlap_start(frame, config.overlap_days)
        start = first.date() if first is not None else fresh_start
        by_start.setdefault(start, []).append(ticker)
    plans = []
    for start, tickers in sorted(by_start.items(), key=lambda kv: (kv[0] is not None, kv[0])):
        for i in range(0, len(tickers), config.chunk_size):
            plans.append(FetchPlan(tickers[i : i + config.chunk_size], start, end))
    return plans


def _download_run_name() -> str:
    from prefect.runtime import task_run

    plan: FetchPlan = task_run.parameters["plan"]
    more = f" +{len(plan.tickers) - 1}" if len(plan.tickers) > 1 else ""
    return f"download {plan.tickers[0]}{more} from {plan.start or 'start'}"


@task(
    name="download-prices",
    retries=3,
    retry_delay_seconds=[2, 8, 30],
    timeout_seconds=300,  # a hung connection fails the try (and is retried), not the night
    cache_policy=NO_CACHE,
    task_run_name=lambda: _download_run_name(),
)
def download_prices(source: PriceSource, plan: FetchPlan) -> FetchResult:
    """Ask the source for one chunk; rate limits and network errors are retried."""
    return source.download(plan.tickers, plan.start, plan.end)


def download_all(source: PriceSource, plans: list[FetchPlan]) -> FetchResult:
    """Run every planned download (mapped, so a task runner can fan them out).

    A chunk that still fails after its retries marks its tickers fetch_failed;
    the other chunks go on.
    """
    result = FetchResult()
    if not plans:
        return result
    futures = download_prices.map(source, plans)
    for plan, future in zip(plans, futures, strict=True):
        try:
            result.update(future.result())
        except Exception as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            result.failures.update({t: f"{t}: {reason}" for t in plan.tickers})
    return result
