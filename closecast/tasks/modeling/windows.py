"""Windows: split by date first, then cut fixed-length windows, all vectorised."""

import hashlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from closecast.core.config import LOOKBACK, WindowConfig
from closecast.core.errors import PipelineError
from closecast.core.statuses import INSUFFICIENT_HISTORY, STALE_DATA, Issues
from closecast.models.derived import extra_rows
from closecast.models.encoding import fit_bounds
from closecast.models.forecaster import SCALE_COLUMNS
from closecast.models.scale import ewma_sigma


def window_columns(features: Sequence[str]) -> list[str]:
    """Each window's columns: close, the other features, then any scale column not among them.

    The interval scale reads each window's high-low ranges (models/intervals.py),
    whatever the network reads; `Forecaster.columns` is the same order.
    """
    order = ["close", *[f for f in features if f != "close"]]
    return order + [c for c in SCALE_COLUMNS if c not in order]


def make_windows(values: np.ndarray, window: int) -> np.ndarray:
    """Every run of `window` consecutive rows.

    Args:
        values: one series, shape (n, F).
        window: rows per window.

    Returns:
        Shape (n - window + 1, window, F); row i holds values[i : i + window].

    Raises:
        ValueError: when the series has fewer rows than the window.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    if len(values) < window:
        raise ValueError(
            f"series has {len(values)} rows, fewer than the window of {window}: "
            "fetch more history or use a shorter --window"
        )
    return np.ascontiguousarray(_window_view(values, window))


def _window_view(values: np.ndarray, window: int) -> np.ndarray:
    """make_windows without the copy: a read-only view of `values`, (n, F) -> (n - T + 1, T, F)."""
    view = sliding_window_view(values, window, axis=0)  # (n, F) -> (n - T + 1, F, T)
    return view.transpose(0, 2, 1)  # -> (n - T + 1, T, F)


class WindowArray:
    """Every window of a set, read from rows on demand: what a (N, T, C) array would hold.

    Window i is `rows[starts[i] + offset : starts[i] + offset + window]`, in the
    columns `columns` (all when None). The rows are shared by every split of a
    dataset, so a universe's windows cost its rows (R, C) plus one start per
    window, not N × T × C values; indexing copies only the windows asked for:

    - `array[first]` (an int, slice, mask or index array) and
      `array[first, steps, columns]` return NumPy arrays, as the dense array would;
    - `take(first)` keeps them lazy, `last(steps, columns)` projects lazily;
    - `np.asarray(array)` materialises every window.
    """

    ndim = 3

    def __init__(
        self,
        rows: np.ndarray,
        starts: np.ndarray,
        window: int,
        columns: np.ndarray | None = None,
        offset: int = 0,
    ) -> None:
        self.rows = rows  # (R, C_all)
        self.starts = np.asarray(starts, dtype=np.int64)  # (N,)
        self.window = window
        self.columns = np.arange(rows.shape[1]) if columns is None else np.asarray(columns)
        self.offset = offset

    @classmethod
    def from_dense(cls, windows: np.ndarray) -> "WindowArray":
        """A lazy array over dense windows (N, T, C), without a copy when they are contiguous."""
        n, steps, width = windows.shape
        rows = np.ascontiguousarray(windows).reshape(n * steps, width)
        return cls(rows, np.arange(n, dtype=np.int64) * steps, steps)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.starts), self.window, len(self.columns))

    @property
    def dtype(self) -> np.dtype:
        return self.rows.dtype

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, key: object) -> np.ndarray:
        parts = key if isinstance(key, tuple) else (key,)
        if len(parts) > 3 or any(p is Ellipsis or p is None for p in parts):
            raise IndexError(f"windows take at most (windows, steps, columns), got {key!r}")
        first, steps, columns = (*parts, slice(None), slice(None))[:3]
        step_index = (np.arange(self.window) + self.offset)[steps]  # () or (T',)
        starts = self.starts[first]  # () or (n,)
        row_index = (
            np.expand_dims(starts, -1) + step_index if np.ndim(step_index) else starts + step_index
        )
        column_index = self.columns[columns]  # () or (k,)
        if np.ndim(column_index):
            return self.rows[np.expand_dims(row_index, -1), column_index]
        return self.rows[row_index, column_index]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)

    def take(self, first: np.ndarray | slice) -> "WindowArray":
        """The windows `first` picks (a mask, index array or slice), still lazy."""
        return WindowArray(self.rows, self.starts[first], self.window, self.columns, self.offset)

    def last(self, steps: int, columns: Sequence[int]) -> "WindowArray":
        """Each window's last `steps` rows (all when fewer) in `columns`, still lazy."""
        steps = min(steps, self.window)
        return WindowArray(
            self.rows,
            self.starts,
            steps,
            self.columns[list(columns)],
            self.offset + self.window - steps,
        )


@dataclass
class WindowSet:
    """Raw windows with what each one predicts."""

    # (N, T, C) raw values of the dataset's columns, close first; dense windows are wrapped
    windows: WindowArray
    next_close: np.ndarray  # (N,) the close after the window (NaN when not yet known)
    tickers: np.ndarray  # (N,) ticker of each window
    target_dates: np.ndarray  # (N,) date of the close being predicted
    # (N,) RiskMetrics EWMA σ of the next log return from the ticker's whole history up to the
    # window's last day: the interval baseline, which should not be limited to the window.
    baseline_sigma: np.ndarray

    def __post_init__(self) -> None:
        if isinstance(self.windows, np.ndarray):
            self.windows = WindowArray.from_dense(self.windows)

    def __len__(self) -> int:
        return len(self.windows)

    def select(self, mask: np.ndarray | slice) -> "WindowSet":
        """The windows a boolean mask, index array or slice picks (the rows stay shared)."""
        return WindowSet(
            self.windows.take(mask),
            self.next_close[mask],
            self.tickers[mask],
            self.target_dates[mask],
            self.baseline_sigma[mask],
        )

    def sample(self, budget: int | None, seed: int | Sequence[int]) -> "WindowSet":
        """At most `budget` windows drawn without replacement (seeded), in their order; all of
        them when there are no more than that, or `budget` is None."""
        if budget is None or len(self) <= budget:
            return self
        picked = np.random.default_rng(seed).choice(len(self), budget, replace=False)
        return self.select(np.sort(picked))

    def batches(self, size: int) -> Iterator["WindowSet"]:
        """Consecutive slices of at most `size` windows (none for an empty set)."""
        for start in range(0, len(self), size):
            yield self.select(slice(start, start + size))

    @property
    def last_close(self) -> np.ndarray:
        """Close on the last day of each window, (N, T, F) -> (N,); close is column 0."""
        return self.windows[:, -1, 0]


@dataclass
class Dataset:
    """Train | validation | test windows split by one set of dates, plus the latest windows."""

    features: tuple[str, ...]  # what the network reads, close first
    columns: tuple[str, ...]  # what each window holds: the features, then SCALE_COLUMNS
    window: int
    target: str
    train: WindowSet
    validation: WindowSet
    test: WindowSet
    latest: WindowSet
    val_start: pd.Timestamp
    test_start: pd.Timestamp
    data_sha256: str
    bounds: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    issues: Issues = field(default_factory=dict)

    @property
    def tickers(self) -> list[str]:
        """Tickers whose windows the model trains on."""
        return sorted(set(self.train.tickers.tolist()) | set(self.test.tickers.tolist()))

    def summary(self) -> dict[str, object]:
        return {
            "train_windows": len(self.train),
            "val_windows": len(self.validation),
            "test_windows": len(self.test),
            "val_start": self.val_start.date().isoformat(),
            "test_start": self.test_start.date().isoformat(),
        }


def split_boundaries(
    target_dates: np.ndarray, val_fraction: float, test_fraction: float
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """First validation date and first test date, from the sorted unique target dates.

    Raises:
        PipelineError: when there are too few dates for three non-empty spans.
    """
    dates = np.unique(target_dates)
    n = len(dates)
    n_test = math.ceil(test_fraction * n)
    n_val = math.ceil(val_fraction * n)
    if n - n_test - n_val < 1:
        raise PipelineError(
            f"only {n} dates with a known next close: too few for train, validation and test"
        )
    return pd.Timestamp(dates[n - n_test - n_val]), pd.Timestamp(dates[n - n_test])


def hash_frames(frames: dict[str, pd.DataFrame]) -> str:
    """sha256 over every ticker's rows, in ticker order: the data a model trained on."""
    digest = hashlib.sha256()
    for ticker in sorted(frames):
        digest.update(ticker.encode())
        digest.update(pd.util.hash_pandas_object(frames[ticker], index=True).to_numpy().tobytes())
    return digest.hexdigest()


def next_day_ewma_sigma(close: np.ndarray) -> np.ndarray:
    """RiskMetrics σ of the log return after each row, from the rows up to it, (n,) -> (n,).

    Row 0 has no return yet and gets NaN.
    """
    sigma = np.full(len(close), np.nan)
    if len(close) > 1:
        sigma[1:] = ewma_sigma(np.diff(np.log(close)))  # (n - 1,): forecasts after rows 1..
    return sigma


def universe_windows(
    frames: list[tuple[str, pd.DataFrame]], window: int, latest: list[bool]
) -> tuple[WindowSet, WindowSet]:
    """Every window with a next row, and each `latest` ticker's last window, over one set
    of rows: the tickers' values stacked (R, C), which every window and split shares.

    Args:
        frames: (ticker, rows in window column order), in the order the windows take.
        window: rows per window.
        latest: per frame, whether it gets a latest window (not when stale).
    """
    width = frames[0][1].shape[1] if frames else 0
    rows = (
        np.concatenate([f.to_numpy(dtype=np.float64) for _, f in frames])
        if frames
        else np.empty((0, width))
    )  # (R, C)
    dates = (
        np.concatenate([f.index.to_numpy(dtype="datetime64[ns]") for _, f in frames])
        if frames
        else np.empty(0, dtype="datetime64[ns]")
    )  # (R,)
    lengths = np.array([len(f) for _, f in frames], dtype=np.int64)
    offsets = np.cumsum(lengths) - lengths  # each ticker's first row
    counts = lengths - window  # windows with a next row
    first_window = np.cumsum(counts) - counts
    starts = np.repeat(offsets, counts) + np.arange(counts.sum()) - np.repeat(first_window, counts)
    names = np.array([t for t, _ in frames], dtype=object)
    sigma = [next_day_ewma_sigma(f["close"].to_numpy(dtype=np.float64)) for _, f in frames]
    every = WindowSet(
        WindowArray(rows, starts, window),
        rows[starts + window, 0] if len(rows) else np.empty(0),
        np.repeat(names, counts),
        dates[starts + window],
        np.concatenate([s[window - 1 : -1] for s in sigma]) if sigma else np.empty(0),
    )
    last = np.flatnonzero(latest)
    newest = WindowSet(
        WindowArray(rows, offsets[last] + lengths[last] - window, window),
        np.full(len(last), np.nan),
        names[last] if len(last) else np.empty(0, dtype=object),
        np.full(len(last), np.datetime64("NaT", "ns")),
        np.array([sigma[i][-1] for i in last]),
    )
    return every, newest


def lookback_note(features: Sequence[str]) -> str:
    """What a history count leaves out when features read rows before their own: e.g.
    ", after the 65 rows that range66 reads first" ("" when none do)."""
    extra = extra_rows(features)
    if not extra:
        return ""
    longest = max((f for f in features if f in LOOKBACK), key=lambda f: LOOKBACK[f])  # type: ignore[index]
    return f", after the {extra} rows that {longest} reads first"


def build_windows(features: dict[str, pd.DataFrame], config: WindowConfig, as_of: date) -> Dataset:
    """Cut every ticker's windows and split them by target date.

    Every ticker shares the same boundary dates. A ticker with fewer rows
    than window + test span gets insufficient_history; one whose last row is
    before `as_of` still trains but gets stale_data and no latest window.

    Args:
        features: per ticker, feature columns in `config.features` order with
            close first, rows dated <= as_of.
        config: window length, features, split fractions, target.
        as_of: the session being predicted from.
    """
    order = ["close", *[f for f in config.features if f != "close"]]
    columns = window_columns(config.features)
    absent = sorted({c for f in features.values() for c in columns if c not in f.columns})
    if absent:
        raise ValueError(f"feature frames lack column(s) {', '.join(absent)}: see window_columns")
    frames = {t: f[columns] for t, f in features.items() if len(f) > config.window}
    before = lookback_note(config.features)
    issues: Issues = {
        t: (
            INSUFFICIENT_HISTORY,
            f"only {len(f)} rows of valid history; one window and its next close need "
            f"{config.window + 1}{before}",
        )
        for t, f in features.items()
        if len(f) <= config.window
    }
    if not frames:
        longest = max((len(f) for f in features.values()), default=0)
        raise PipelineError(
            f"no ticker can be trained: the longest valid history is {longest} rows; "
            f"a window of {config.window} days and its next close need {config.window + 1}"
            f"{before}"
        )
    every_target = np.concatenate([f.index.to_numpy()[config.window :] for f in frames.values()])
    val_start, test_start = split_boundaries(
        every_target, config.val_fraction, config.test_fraction
    )
    n_test = int((np.unique(every_target) >= np.datetime64(test_start)).sum())
    kept: list[tuple[str, pd.DataFrame]] = []
    latest: list[bool] = []
    bounds = {}
    as_of_ts = pd.Timestamp(as_of)
    for ticker, frame in sorted(frames.items()):
        train_rows = frame[frame.index < val_start]
        if len(frame) < config.window + n_test:
            issues[ticker] = (
                INSUFFICIENT_HISTORY,
                f"only {len(frame)} rows of valid history; the model needs "
                f"{config.window + n_test} (window {config.window} + test span {n_test})"
                f"{before}",
            )
            continue
        if len(train_rows) == 0:  # long enough, but it begins after the training dates
            issues[ticker] = (
                INSUFFICIENT_HISTORY,
                f"its {len(frame)} rows of valid history start on "
                f"{frame.index[0].date().isoformat()}, after training ends: the model needs "
                f"rows before {val_start.date().isoformat()}, where validation starts",
            )
            continue
        kept.append((ticker, frame))
        if config.target == "minmax_close":
            bounds[ticker] = fit_bounds(train_rows[order].to_numpy(dtype=np.float64))
        if frame.index[-1] < as_of_ts:
            last = frame.index[-1].date().isoformat()
            issues[ticker] = (
                STALE_DATA,
                f"the last valid price is from {last}, before as_of {as_of.isoformat()}",
            )
        latest.append(frame.index[-1] >= as_of_ts)
    # Each ticker's windows are in date order, so each split keeps the ticker-then-date order.
    every, newest = universe_windows(kept, config.window, latest)
    when = every.target_dates
    splits = [
        every.select(np.flatnonzero(mask))
        for mask in (
            when < np.datetime64(val_start),
            (when >= np.datetime64(val_start)) & (when < np.datetime64(test_start)),
            when >= np.datetime64(test_start),
        )
    ]
    trained_on = sorted(t for t, _ in kept)
    return Dataset(
        features=tuple(order),
        columns=tuple(columns),
        window=config.window,
        target=config.target,
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        latest=newest,
        val_start=val_start,
        test_start=test_start,
        data_sha256=hash_frames({t: frames[t] for t in trained_on}),
        bounds=bounds,
        issues=issues,
    )
