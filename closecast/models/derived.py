"""Opt-in scale features that reach further back than the window, each point in time.

Each row's value reads that row and the rows before it, never a row after it
(`LOOKBACK` in core/config.py says how many):

- ``range22``, ``range66``: Parkinson's daily volatility over the last 22 / 66
  rows, ``sqrt(mean(log(high / low)² / (4·log 2)))``, a fraction like a daily
  close-to-close σ (0.01 is 1%). A row whose high equals its low adds 0.
- ``volume60``: the row's volume over the mean volume of the last 60 rows
  (1 is a usual day); 1 where that mean is 0 (a series that reports no volume).

The first ``LOOKBACK - 1`` rows of a series have no value (NaN): the features
step drops them, and a model that reads these features needs
`extra_rows(features)` rows before its window (`Forecaster.input_rows`), which
the pyfunc's input must carry. Means are taken window by window, not as a
running sum, so a value is the same whichever row the series starts at.
"""

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from closecast.core.config import LOOKBACK

RANGE_FEATURES = frozenset({"range22", "range66"})
VOLUME_RATIO_FEATURES = frozenset({"volume60"})
# The raw columns each derived feature is computed from.
SOURCES: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(RANGE_FEATURES, ("high", "low")),
    **dict.fromkeys(VOLUME_RATIO_FEATURES, ("volume",)),
}
PARKINSON = 1.0 / (4.0 * np.log(2.0))


def extra_rows(features: Sequence[str]) -> int:
    """Rows before a window's first that its derived features read; 0 with none."""
    return max((LOOKBACK[f] - 1 for f in features if f in LOOKBACK), default=0)  # type: ignore[index]


def source_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """The raw columns `columns` are read or derived from, in order, each once."""
    raw = [s for c in columns for s in SOURCES.get(c, (c,))]
    return tuple(dict.fromkeys(raw))


def trailing_mean(values: np.ndarray, rows: int) -> np.ndarray:
    """Mean of each value and the `rows - 1` before it, (n,) -> (n,); NaN for the first rows."""
    out = np.full(len(values), np.nan)
    if len(values) >= rows:
        out[rows - 1 :] = sliding_window_view(values, rows).mean(axis=1)  # (n - rows + 1,)
    return out


def derive(frame: "pd.DataFrame | Mapping[str, np.ndarray]", name: str) -> np.ndarray:
    """One derived feature of raw rows in date order (a frame, or its columns as arrays), (n,)."""
    if name not in LOOKBACK:
        raise ValueError(f"{name!r} is not a derived feature; expected one of {sorted(LOOKBACK)}")
    rows = LOOKBACK[name]  # type: ignore[index]
    if name in RANGE_FEATURES:
        high = np.asarray(frame["high"], dtype=np.float64)
        low = np.asarray(frame["low"], dtype=np.float64)
        return np.sqrt(trailing_mean(PARKINSON * np.log(high / low) ** 2, rows))
    if name in VOLUME_RATIO_FEATURES:
        volume = np.asarray(frame["volume"], dtype=np.float64)
        mean = trailing_mean(volume, rows)
        ratio = np.divide(volume, mean, out=np.ones(len(volume)), where=mean > 0)
        return np.where(np.isnan(mean), np.nan, ratio)
    raise AssertionError(f"no rule derives {name!r}")  # LOOKBACK names a feature without one


def feature_columns(raw: Mapping[str, np.ndarray], columns: Sequence[str]) -> dict[str, np.ndarray]:
    """`columns` of raw rows in date order given as arrays: each raw one as it is, each derived
    one computed (the arrays `with_derived` puts in a frame, without building one)."""
    return {c: derive(raw, c) if c in LOOKBACK else raw[c] for c in columns}


def with_derived(frame: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """`frame` (raw rows in date order) with a column for each derived feature in `features`."""
    derived = {f: derive(frame, f) for f in features if f in LOOKBACK}
    return frame.assign(**derived) if derived else frame
