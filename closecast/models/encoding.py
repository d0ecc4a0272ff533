"""How raw OHLCV windows become model inputs and targets, and back to closes.

Three representations:

- ``vol_return`` (default): ``log_return`` divided by the window's own
  volatility σ (the standard deviation of its daily close-to-close log
  returns, in percent, at least ``VOL_FLOOR``): price features become
  ``100·log(x / last close) / σ`` and the target the next-day log return in
  units of σ. A calm window and a crash window look alike to the network and
  weigh alike in the loss, and a prediction is scaled back by the current
  window's σ, so a model trained through a crisis does not predict crisis-size
  moves in a calm market (benchmarks/README.md measures the difference).
- ``log_return``: every price feature becomes ``100·log(x / last close of
  the window)``; the target is the next-day log return in percent.
- ``minmax_close``: the reference design. Each feature is MinMax-scaled with
  bounds fitted on the ticker's training span only; the target is the scaled
  next close.

For both return targets volume becomes ``log1p(v)`` minus its window mean;
each window is normalised by its own values only: nothing is fitted, nothing
can leak, and a ticker never seen in training can be predicted. The opt-in
features that reach further back (models/derived.py) keep their level, which
is what they add to the window: a Parkinson σ (range22, range66) becomes
``log(100·σ_P / unit)``, σ_P in percent at least ``VOL_FLOOR``, per unit of the
window's σ for ``vol_return`` (0: the longer span was as volatile as the
window), in log-percent for ``log_return``; a volume ratio (volume60) becomes
``log1p(r) - log 2`` (0: a usual day's volume; defined at r = 0). An encoded
prediction of 0 is the naive forecast (tomorrow's close = today's).

Predictions always come back as closes.
"""

from dataclasses import dataclass

import numpy as np

from closecast.core.config import DEFAULT_TARGET, PRICE_FEATURES, TARGETS, TargetName
from closecast.models.derived import RANGE_FEATURES, VOLUME_RATIO_FEATURES

# The targets whose encoded 0 is "no move"; the names are closecast.core.config's.
RETURN_TARGETS: frozenset[TargetName] = frozenset({"vol_return", "log_return"})
# Percent. A window with (almost) no movement, e.g. a halted or flat series,
# would otherwise divide by zero; real daily volatility is rarely below 0.2%.
VOL_FLOOR = 0.1


@dataclass(frozen=True)
class Bounds:
    """Per-window MinMax bounds, one row per window: lo, hi of shape (N, F)."""

    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class Encoding:
    """A target representation over an ordered tuple of feature names."""

    features: tuple[str, ...]
    target: str = DEFAULT_TARGET  # one of TARGETS

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}; expected one of {TARGETS}")
        if "close" not in self.features:
            raise ValueError(f"features must include 'close', got {self.features}")

    @property
    def close_index(self) -> int:
        return self.features.index("close")

    @property
    def needs_bounds(self) -> bool:
        return self.target == "minmax_close"

    @property
    def predicts_return(self) -> bool:
        """Whether an encoded 0 means "no move": the naive forecast."""
        return self.target in RETURN_TARGETS

    def volatility(self, windows: np.ndarray) -> np.ndarray:
        """Each window's daily log-return volatility in percent, (N, T, F) -> (N,), ≥ VOL_FLOOR."""
        log_close = np.log(windows[:, :, self.close_index])  # (N, T, F) -> (N, T)
        returns = 100.0 * np.diff(log_close, axis=1)  # (N, T) -> (N, T - 1)
        return np.maximum(returns.std(axis=1), VOL_FLOOR)

    def _unit(self, windows: np.ndarray) -> np.ndarray:
        """Percent per encoded unit of each window, (N, T, F) -> (N,)."""
        if self.target == "vol_return":
            return self.volatility(windows)
        return np.ones(len(windows))

    def inputs(self, windows: np.ndarray, bounds: Bounds | None = None) -> np.ndarray:
        """Encode raw windows.

        Args:
            windows: raw values, shape (N, T, C), the first F columns in `features` order
                (columns after them, e.g. the interval scale's high and low, are not read).
            bounds: per-window MinMax bounds (minmax_close only).

        Returns:
            Model inputs, shape (N, T, F), float32.
        """
        windows = windows[:, :, : len(self.features)]  # (N, T, C) -> (N, T, F)
        if self.needs_bounds:
            lo, hi = self._bounds(bounds)
            scaled = (windows - lo[:, None, :]) / (hi - lo)[:, None, :]  # (N, T, F)
            return scaled.astype(np.float32)
        last_close = windows[:, -1:, self.close_index]  # (N, T, F) -> (N, 1)
        unit = self._unit(windows)[:, None]  # (N,) -> (N, 1)
        columns = []
        for j, name in enumerate(self.features):
            values = windows[:, :, j]  # (N, T, F) -> (N, T)
            if name in PRICE_FEATURES:
                columns.append(100.0 * np.log(values / last_close) / unit)
            elif name in RANGE_FEATURES:
                columns.append(np.log(np.maximum(100.0 * values, VOL_FLOOR) / unit))
            elif name in VOLUME_RATIO_FEATURES:
                columns.append(np.log1p(values) - np.log(2.0))
            else:
                logged = np.log1p(values)
                columns.append(logged - logged.mean(axis=1, keepdims=True))
        return np.stack(columns, axis=-1).astype(np.float32)  # F × (N, T) -> (N, T, F)

    def targets(
        self, next_close: np.ndarray, windows: np.ndarray, bounds: Bounds | None = None
    ) -> np.ndarray:
        """Encode the close after each window, (N,) with windows (N, T, F) -> (N,)."""
        if self.needs_bounds:
            lo, hi = self._close_bounds(bounds)
            return ((next_close - lo) / (hi - lo)).astype(np.float32)
        last_close = windows[:, -1, self.close_index]  # (N, T, F) -> (N,)
        return (100.0 * np.log(next_close / last_close) / self._unit(windows)).astype(np.float32)

    def decode(
        self, encoded: np.ndarray, windows: np.ndarray, bounds: Bounds | None = None
    ) -> np.ndarray:
        """Turn model outputs (N,) for raw windows (N, T, F) back into predicted closes (N,)."""
        encoded = encoded.astype(np.float64)
        if self.needs_bounds:
            lo, hi = self._close_bounds(bounds)
            return lo + encoded * (hi - lo)
        last_close = windows[:, -1, self.close_index]  # (N, T, F) -> (N,)
        return last_close * np.exp(encoded * self._unit(windows) / 100.0)

    def _bounds(self, bounds: Bounds | None) -> tuple[np.ndarray, np.ndarray]:
        if bounds is None:
            raise ValueError("the minmax_close target needs per-ticker bounds")
        # A flat feature over the training span would divide by zero.
        hi = np.where(bounds.hi > bounds.lo, bounds.hi, bounds.lo + 1.0)
        return bounds.lo, hi

    def _close_bounds(self, bounds: Bounds | None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._bounds(bounds)
        return lo[:, self.close_index], hi[:, self.close_index]  # (N, F) -> (N,)


def fit_bounds(train_values: np.ndarray) -> tuple[list[float], list[float]]:
    """MinMax bounds of one ticker's training rows, shape (n, F) -> two lists of F."""
    if len(train_values) == 0:
        raise ValueError("cannot fit MinMax bounds on an empty training span")
    return train_values.min(axis=0).tolist(), train_values.max(axis=0).tolist()
