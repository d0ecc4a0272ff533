"""The Parquet price store: one file per ticker, unique ascending dates, atomic writes."""

import os
import tempfile
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
from filelock import FileLock

from closecast.core.calendar import next_session, session_on_or_before
from closecast.core.errors import PipelineError
from closecast.core.statuses import INSUFFICIENT_HISTORY, INVALID_DATA, Issues

PRICE_COLUMNS = ["open", "high", "low", "close", "adj_close", "volume"]
# Relative tolerance when re-checking overlapping rows against the source.
OVERLAP_RTOL = 1e-6
# Files read or written at once: Parquet's decoding, encoding and the file system calls run
# outside the GIL, so a few threads overlap them with the pandas work of the others.
IO_THREADS = 4
T = TypeVar("T")
R = TypeVar("R")


class CorruptStoreFile(RuntimeError):
    """A stored price file that cannot be read."""


@dataclass(frozen=True)
class MergeResult:
    """Stored rows extended by fetched ones, or a flag that the source re-based history."""

    frame: pd.DataFrame
    added: int
    rebased: bool


_DAY_NS = 86_400 * 10**9


def is_canonical(frame: pd.DataFrame) -> bool:
    """Whether `frame` already is what `normalize_prices` makes of it: a stored file read
    back, or frames merged from such, skip the conversions (most of a read's cost)."""
    index = frame.index
    return (
        isinstance(index, pd.DatetimeIndex)
        and index.dtype == np.dtype("datetime64[ns]")
        and index.name == "date"
        and list(frame.columns) == PRICE_COLUMNS
        and all(dtype == np.float64 for dtype in frame.dtypes)
        and index.is_monotonic_increasing
        and index.is_unique
        and not (index.asi8 % _DAY_NS).any()
    )


def normalize_prices(frame: pd.DataFrame) -> pd.DataFrame:
    """Canonical price frame: tz-naive date index named `date`, PRICE_COLUMNS as float64.

    Duplicate dates keep their last row; a missing adj_close copies close.
    Always a new frame, never a view of `frame`.
    """
    if is_canonical(frame):
        return frame.copy()
    out = frame.copy()
    index = pd.DatetimeIndex(pd.to_datetime(out.index))
    if index.tz is not None:
        index = index.tz_localize(None)
    out.index = index.normalize().astype("datetime64[ns]").rename("date")
    if "adj_close" not in out.columns:
        out["adj_close"] = out["close"]
    out = out[PRICE_COLUMNS].astype("float64")
    out = out[~out.index.duplicated(keep="last")].sort_index()
    return out


def column_values(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """The named columns of `frame` as one (n, len(names)) float64 array, read by position:
    on a ticker's rows a frame's lookups by name cost more than the arithmetic on them.

    Raises:
        KeyError: naming the columns `frame` lacks.
    """
    positions = frame.columns.get_indexer(names)
    if (positions < 0).any():
        absent = [n for n, i in zip(names, positions, strict=True) if i < 0]
        raise KeyError(f"price frame lacks column(s) {', '.join(absent)}")
    return frame.iloc[:, positions].to_numpy(np.float64)


def price_path(prices_dir: Path, ticker: str) -> Path:
    """`<prices_dir>/<TICKER>.parquet`, refusing anything that would leave the folder."""
    path = prices_dir / f"{ticker}.parquet"
    if path.resolve().parent != prices_dir.resolve() or ticker in {".", ".."}:
        raise ValueError(f"invalid ticker {ticker!r} for a store path")
    return path


def read_prices(prices_dir: Path, ticker: str) -> pd.DataFrame | None:
    """The stored frame of `ticker`, or None when nothing is stored.

    Raises:
        CorruptStoreFile: the file exists but cannot be read as a price frame.
    """
    path = price_path(prices_dir, ticker)
    if not path.exists():
        return None
    try:
        frame = pd.read_parquet(path)
        return normalize_prices(frame)
    except Exception as exc:
        raise CorruptStoreFile(f"cannot read {path}: {exc}") from exc


def write_prices(prices_dir: Path, ticker: str, frame: pd.DataFrame) -> Path:
    """Write `frame` atomically (temp file in the same folder, then rename)."""
    path = price_path(prices_dir, ticker)
    prices_dir.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: normalize_prices(frame).to_parquet(tmp))
    return path


def _current_umask() -> int:
    """The process umask, read from /proc where it can be: setting it to read it (the
    only portable way) would briefly change it for every thread of the process."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    for line in status.splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def write_atomic(path: Path, write) -> None:  # type: ignore[no-untyped-def]
    """Call `write(tmp_path)` then rename over `path`; nothing half-written survives.

    mkstemp makes its file 0600; the result gets the mode any new file gets
    (0666 less the umask), so reports and prices are as readable as the rest.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_current_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def store_lock(home: Path) -> FileLock:
    """One lock per home: two runs on the same home never interleave their writes."""
    home.mkdir(parents=True, exist_ok=True)
    return FileLock(str(home / ".store.lock"), timeout=600)


def overlap_start(stored: pd.DataFrame | None, overlap_rows: int) -> pd.Timestamp | None:
    """First date to ask the source for: `overlap_rows` rows before the end of the store."""
    if stored is None or stored.empty:
        return None
    return stored.index[max(len(stored) - overlap_rows, 0)]


def merge_prices(stored: pd.DataFrame | None, fetched: pd.DataFrame) -> MergeResult:
    """Append fetched rows after the stored ones, re-checking the rows both hold.

    When the overlapping closes disagree (a split or dividend re-based the
    source's history), nothing is merged and `rebased` is set: the caller
    re-fetches the whole history.
    """
    fetched = normalize_prices(fetched)
    if stored is None or stored.empty:
        return MergeResult(frame=fetched, added=len(fetched), rebased=False)
    common = stored.index.intersection(fetched.index)
    if len(common):
        cols = ["close", "adj_close"]
        a = stored.loc[common, cols].to_numpy()
        b = fetched.loc[common, cols].to_numpy()
        if not np.allclose(a, b, rtol=OVERLAP_RTOL, atol=0.0, equal_nan=True):
            return MergeResult(frame=stored, added=0, rebased=True)
    newer = fetched[fetched.index > stored.index[-1]]
    merged = pd.concat([stored, newer]) if len(newer) else stored
    return MergeResult(frame=merged, added=len(newer), rebased=False)


@dataclass
class StoreUpdate:
    """What one fetch changed in the store."""

    added: dict[str, int]
    rebased: list[str]


@dataclass
class LoadedPrices:
    """Stored rows dated <= as_of for each ticker, and the session they lead up to."""

    frames: dict[str, pd.DataFrame]
    as_of: date
    target_date: date
    missing: list[str]
    unreadable: dict[str, str] = field(default_factory=dict)

    @property
    def issues(self) -> Issues:
        """invalid_data for unreadable store files; insufficient_history for tickers with
        no stored row on or before as_of."""
        reason = f"no stored price on or before {self.as_of.isoformat()}"
        issues: Issues = {t: (INVALID_DATA, m) for t, m in self.unreadable.items()}
        for ticker in self.missing:
            issues.setdefault(ticker, (INSUFFICIENT_HISTORY, reason))
        return issues


def read_store(
    prices_dir: Path, tickers: list[str]
) -> tuple[dict[str, pd.DataFrame | None], dict[str, str]]:
    """Each ticker's stored frame (None: nothing usable), and why each unreadable file is so.

    Returns:
        (frames, unreadable): unreadable maps a ticker to a message naming its file.
    """
    stored: dict[str, pd.DataFrame | None] = {}
    unreadable: dict[str, str] = {}

    def read(ticker: str) -> pd.DataFrame | CorruptStoreFile | None:
        try:
            return read_prices(prices_dir, ticker)
        except CorruptStoreFile as exc:
            return exc

    for ticker, frame in zip(tickers, _each_in_threads(read, tickers), strict=True):
        if isinstance(frame, CorruptStoreFile):
            stored[ticker] = None
            unreadable[ticker] = str(frame).splitlines()[0]
        else:
            stored[ticker] = frame
    return stored, unreadable


def _each_in_threads(work: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[work(item) for item in items]`, IO_THREADS at a time; the first error is raised
    once every call has ended (so no write is left running)."""
    items = list(items)
    if len(items) < 2:
        return [work(item) for item in items]
    with ThreadPoolExecutor(IO_THREADS, thread_name_prefix="closecast-store") as pool:
        futures = [pool.submit(work, item) for item in items]
    return [future.result() for future in futures]


def save_prices(
    prices_dir: Path,
    stored: dict[str, pd.DataFrame | None],
    fetched: dict[str, pd.DataFrame],
    replace: bool = False,
) -> StoreUpdate:
    """Merge fetched frames into the store (or replace them whole) and write what changed.

    Tickers whose overlap disagrees with the store are not written; they come
    back in `rebased` for a full re-fetch.
    """
    update = StoreUpdate(added={}, rebased=[])
    writes: list[tuple[str, pd.DataFrame]] = []
    for ticker, frame in sorted(fetched.items()):
        if replace:
            writes.append((ticker, frame))
            update.added[ticker] = len(frame)
            continue
        merged = merge_prices(stored.get(ticker), frame)
        if merged.rebased:
            update.rebased.append(ticker)
        elif merged.added or stored.get(ticker) is None:
            writes.append((ticker, merged.frame))
            update.added[ticker] = merged.added
    _each_in_threads(lambda write: write_prices(prices_dir, *write), writes)
    return update


def last_stored_date(prices_dir: Path, tickers: list[str]) -> date | None:
    """The last date any of `tickers` has a stored price for; None when none has one."""
    stored, _ = read_store(prices_dir, tickers)
    ends = [f.index[-1].date() for f in stored.values() if f is not None and len(f)]
    return max(ends, default=None)


def load_prices(prices_dir: Path, tickers: list[str], as_of: date | None) -> LoadedPrices:
    """Stored rows dated <= the as_of session, whatever the store holds beyond it.

    With no as_of, the last date with data among the tickers is used. A date
    that is not an XNYS session means the last session before it.
    """
    stored, unreadable = read_store(prices_dir, tickers)
    frames = {t: f for t, f in stored.items() if f is not None}
    missing = sorted(set(tickers) - set(frames))
    if not frames:
        raise PipelineError(f"no stored prices for {', '.join(tickers)}")
    wanted = as_of or max(f.index[-1] for f in frames.values()).date()
    session = session_on_or_before(wanted)
    cutoff = pd.Timestamp(session)
    clipped = {t: f[f.index <= cutoff] for t, f in frames.items()}
    missing += sorted(t for t, f in clipped.items() if f.empty)
    return LoadedPrices(
        frames={t: f for t, f in clipped.items() if not f.empty},
        as_of=session,
        target_date=next_session(session),
        missing=sorted(missing),
        unreadable=unreadable,
    )
