"""The interval method: how the point forecast of the next close becomes 80% and 95% intervals.

The one module to open to change the method. It picks the pieces and fits them:

- the scale σ̂ of tomorrow's log return (models/scale.py): a HAR-style
  regression on each window's absolute returns and high-low ranges over
  `spans_for_window(window)` days, fitted on the training windows;
- the calibration (models/calibration.py, which also holds the levels):
  split-conformal quantiles of z = (r − centre) / σ̂, centred on the model's
  own point forecast, fitted on the training and validation windows (ten
  times the residuals of the validation span alone, which steadies the 95%
  quantiles: benchmarks/README.md). Nothing is fitted on the test span; too
  few windows to calibrate on fall back on normal quantiles;
- `Intervals.around` draws the bounds of new windows from the fitted pair.

models/interval_scores.py scores intervals. benchmarks/intervals.py measures
which scale and calibration to use; its recommended recipe, which
`fit_intervals` runs:

    spans = spans_for_window(window)                     # HAR_SPANS for 10 rows
    x = last_scale_features(close, high, low, spans)     # (N, T) windows -> (N, 6)
    model = fit_scale(x_train, r_train, spans)           # training windows, all tickers
    z = (r - centre) / predict_scale(model, x)           # training + validation windows
    calibration = fit_conformal(z)
    bounds = close_intervals(last_close, centre, predict_scale(model, x_latest), calibration)
"""

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from closecast.models.calibration import (
    Calibration,
    close_intervals,
    fit_conformal,
    min_calibration_size,
    normal_calibration,
)
from closecast.models.scale import (
    ScaleModel,
    fit_scale,
    last_scale_features,
    predict_scale,
    spans_for_window,
)

# Columns a window must hold for the interval scale, beyond the network's features.
SCALE_COLUMNS = ("high", "low")


class LazyWindows(Protocol):
    """Windows (N, T, C) read on demand (tasks' `WindowArray`): indexing gives an array."""

    @property
    def shape(self) -> tuple[int, int, int]: ...

    def __len__(self) -> int: ...

    def __getitem__(self, key: Any) -> np.ndarray: ...

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray: ...


# Raw windows (N, T, C): an array, or windows read on demand.
RawWindows = np.ndarray | LazyWindows


class Windows(Protocol):
    """Raw windows and the close after each (tasks' `WindowSet` is one)."""

    @property
    def windows(self) -> RawWindows: ...  # (N, T, C)

    @property
    def tickers(self) -> np.ndarray: ...  # (N,)

    @property
    def next_close(self) -> np.ndarray: ...  # (N,)

    @property
    def last_close(self) -> np.ndarray: ...  # (N,)


class PointForecaster(Protocol):
    """What the fit reads of a trained model (`Forecaster` is one)."""

    @property
    def features(self) -> tuple[str, ...]: ...

    @property
    def window(self) -> int: ...

    def predict_windows(self, windows: RawWindows, tickers: np.ndarray) -> np.ndarray: ...


def window_scale_inputs(
    windows: RawWindows, columns: tuple[str, ...], spans: tuple[int, ...]
) -> np.ndarray:
    """HAR regressors at each window's last day, (N, T, C) -> (N, 2·len(spans))."""
    close, high, low = (windows[:, :, columns.index(c)] for c in ("close", "high", "low"))
    return last_scale_features(close, high, low, spans)  # (N, T) each -> (N, 2S)


@dataclass(frozen=True)
class Intervals:
    """A fitted interval method: a HAR-style scale σ̂ of the next log return and
    conformal quantiles of (r − centre) / σ̂."""

    scale: ScaleModel
    calibration: Calibration

    def to_dict(self) -> dict[str, Any]:
        return {"scale": self.scale.to_dict(), "calibration": self.calibration.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Intervals":
        return cls(ScaleModel.from_dict(data["scale"]), Calibration.from_dict(data["calibration"]))

    def base_scale(self, windows: RawWindows, columns: tuple[str, ...]) -> np.ndarray:
        """The HAR scale σ̂ of each raw window's next log return, (N, T, C) -> (N,)."""
        return predict_scale(self.scale, window_scale_inputs(windows, columns, self.scale.spans))

    def around(
        self, point: np.ndarray, windows: np.ndarray, columns: tuple[str, ...]
    ) -> dict[str, np.ndarray]:
        """Interval closes around the point forecasts (N,) of raw windows (N, T, C).

        Returns:
            {column: closes (N,)} for each calibrated level (`close_intervals`).
        """
        last_close = windows[:, -1, columns.index("close")]  # (N, T, C) -> (N,)
        center = np.log(point / last_close)  # the point forecast as a log return
        return close_intervals(
            last_close, center, self.base_scale(windows, columns), self.calibration
        )


def log_returns(windows: Windows) -> np.ndarray:
    """The next log return after each window, (N,)."""
    return np.log(windows.next_close / windows.last_close)


def fit_base_scale(window: int, columns: tuple[str, ...], train: Windows) -> ScaleModel:
    """The HAR scale, fitted on the training windows (all tickers): the first piece of
    the interval method, and what a distributional head's multiplier multiplies."""
    spans = spans_for_window(window)
    return fit_scale(window_scale_inputs(train.windows, columns, spans), log_returns(train), spans)


def calibrate(z: np.ndarray) -> Calibration:
    """Conformal quantiles of standardised residuals (N,) (non-finite ones dropped), or
    normal quantiles when there are too few to calibrate on."""
    z = z[np.isfinite(z)]
    if len(z) < min_calibration_size():
        return normal_calibration()
    return fit_conformal(z)


def fit_intervals(
    forecaster: PointForecaster, columns: tuple[str, ...], train: Windows, validation: Windows
) -> Intervals:
    """The scale and calibration that turn a trained point forecast into intervals.

    Args:
        forecaster: the trained model, whose point forecast the intervals centre on.
        columns: what each raw window holds: the forecaster's features, then SCALE_COLUMNS.
        train: the training windows (the scale's fit and part of the calibration).
        validation: the validation windows (the rest of the calibration).
    """
    check_columns(forecaster.features, columns)
    scale = fit_base_scale(forecaster.window, columns, train)
    uncalibrated = Intervals(scale, normal_calibration())

    def residuals(windows: Windows) -> np.ndarray:  # (N,)
        """z = (r − centre) / σ̂."""
        point = forecaster.predict_windows(windows.windows, windows.tickers)
        centre = np.log(point / windows.last_close)
        return (log_returns(windows) - centre) / uncalibrated.base_scale(windows.windows, columns)

    # Split by split rather than one concatenated copy: windows are the run's largest arrays.
    return Intervals(scale, calibrate(np.concatenate([residuals(train), residuals(validation)])))


def check_columns(features: tuple[str, ...], columns: tuple[str, ...]) -> None:
    """Raise unless raw windows' `columns` are the features, then SCALE_COLUMNS."""
    expected = (*features, *[c for c in columns if c not in features])
    if columns != expected:
        raise ValueError(f"windows hold {columns}, expected the features first: {expected}")
