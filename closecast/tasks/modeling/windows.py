"""Windows: split by date first, then cut fixed-length windows, all vectorised."""

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date

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


@dataclass
class WindowSet:
    """Raw windows with what each one predicts."""

    windows: np.ndarray  # (N, T, C) raw values of the dataset's columns, close first
    next_close: np.ndarray  # (N,) the close after the window (NaN when not yet known)
    tickers: np.ndarray  # (N,) ticker of each window
    target_dates: np.ndarray  # (N,) date of the close being predicted
    # (N,) RiskMetrics EWMA σ of the next log return from the ticker's whole history up to the
    # window's last day: the interval baseline, which should not be limited to the window.
    baseline_sigma: np.ndarray

    def __len__(self) -> int:
        return len(self.windows)

    def select(self, mask: np.ndarray | slice) -> "WindowSet":
        """The windows a boolean mask picks (copies) or a slice (views)."""
        return WindowSet(
            self.windows[mask],
            self.next_close[mask],
            self.tickers[mask],
            self.target_dates[mask],
            self.baseline_sigma[mask],
        )

    @property
    def last_close(self) -> np.ndarray:
        """Close on the last day of each window, (N, T, F) -> (N,); close is column 0."""
        return self.windows[:, -1, 0]

    @classmethod
    def concat(cls, parts: list["WindowSet"], window: int, n_features: int) -> "WindowSet":
        if not parts:
            return cls(
                np.empty((0, window, n_features)),
                np.empty(0),
                np.empty(0, dtype=object),
                np.empty(0, dtype="datetime64[ns]"),
                np.empty(0),
            )
        return cls(
            np.concatenate([p.windows for p in parts]),
            np.concatenate([p.next_close for p in parts]),
            np.concatenate([p.tickers for p in parts]),
            np.concatenate([p.target_dates for p in parts]),
            np.concatenate([p.baseline_sigma for p in parts]),
        )


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


def _ticker_windows(ticker: str, frame: pd.DataFrame, window: int) -> WindowSet:
    """Every window of one ticker that has a next row; the windows are a view of its values
    (the splits copy them once, into their own arrays)."""
    values = frame.to_numpy(dtype=np.float64)  # (n, C)
    dates = frame.index.to_numpy(dtype="datetime64[ns]")
    windows = _window_view(values[:-1], window)  # (n - T, T, C): each has a next row
    return WindowSet(
        windows=windows,
        next_close=values[window:, 0],
        tickers=np.full(len(windows), ticker, dtype=object),
        target_dates=dates[window:],
        baseline_sigma=next_day_ewma_sigma(values[:, 0])[window - 1 : -1],  # at each last row
    )


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
    parts, latest, bounds = [], [], {}
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
        parts.append(_ticker_windows(ticker, frame, config.window))
        if config.target == "minmax_close":
            bounds[ticker] = fit_bounds(train_rows[order].to_numpy(dtype=np.float64))
        if frame.index[-1] < as_of_ts:
            last = frame.index[-1].date().isoformat()
            issues[ticker] = (
                STALE_DATA,
                f"the last valid price is from {last}, before as_of {as_of.isoformat()}",
            )
            continue
        latest.append(
            WindowSet(
                frame.to_numpy(dtype=np.float64)[-config.window :][None],  # (T, C) -> (1, T, C)
                np.array([np.nan]),
                np.array([ticker], dtype=object),
                np.array([np.datetime64("NaT", "ns")]),
                next_day_ewma_sigma(frame["close"].to_numpy(dtype=np.float64))[-1:],
            )
        )
    # Each ticker's windows are in date order: a split is a slice of each, and each split is
    # copied once, straight from the tickers' values (windows are the run's largest arrays).
    bounds_at = [np.datetime64(val_start), np.datetime64(test_start)]
    cuts = [np.searchsorted(p.target_dates, bounds_at) for p in parts]  # (2,) per ticker
    splits = [
        WindowSet.concat(
            [p.select(slice(*ends)) for p, ends in zip(parts, ends_of, strict=True)],
            config.window,
            len(columns),
        )
        for ends_of in (
            [(0, a) for a, _ in cuts],
            [(a, b) for a, b in cuts],
            [(b, len(p)) for p, (_, b) in zip(parts, cuts, strict=True)],
        )
    ]
    trained_on = sorted(str(p.tickers[0]) for p in parts if len(p))
    return Dataset(
        features=tuple(order),
        columns=tuple(columns),
        window=config.window,
        target=config.target,
        train=splits[0],
        validation=splits[1],
        test=splits[2],
        latest=WindowSet.concat(latest, config.window, len(columns)),
        val_start=val_start,
        test_start=test_start,
        data_sha256=hash_frames({t: frames[t] for t in trained_on}),
        bounds=bounds,
        issues=issues,
    )
