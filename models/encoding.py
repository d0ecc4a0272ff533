"""How raw OHLCV windows become model inputs and targets, and back to closes.

Two representations:

- ``log_return`` (default): every price feature becomes ``100·log(x / last
  close of the window)`` and volume ``log1p(v)`` minus its window mean, so
  each window is normalised by its own values only; the target is the
  next-day log return in percent. Nothing is fitted, nothing can leak, and a
  ticker never seen in training can be predicted.
- ``minmax_close``: the reference design. Each feature is MinMax-scaled with
  bounds fitted on the ticker's training span only; the target is the scaled
  next close.

Predictions always come back as closes.
"""

from dataclasses import dataclass

import numpy as np

PRICE_FEATURES = frozenset({"close", "open", "high", "low"})
TARGETS = ("log_return", "minmax_close")


@dataclass(frozen=True)
class Bounds:
    """Per-window MinMax bounds, one row per window: lo, hi of shape (N, F)."""

    lo: np.ndarray
    hi: np.ndarray


@dataclass(frozen=True)
class Encoding:
    """A target representation over an ordered tuple of feature names."""

    features: tuple[str, ...]
    target: str = "log_return"

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

    def inputs(self, windows: np.ndarray, bounds: Bounds | None = None) -> np.ndarray:
        """Encode raw windows.

        Args:
            windows: raw feature values, shape (N, T, F), columns in `features` order.
            bounds: per-window MinMax bounds (minmax_close only).

        Returns:
            Model inputs, shape (N, T, F), float32.
        """
        if self.needs_bounds:
            lo, hi = self._bounds(bounds)
            scaled = (windows - lo[:, None, :]) / (hi - lo)[:, None, :]  # (N, T, F)
            return scaled.astype(np.float32)
        last_close = windows[:, -1:, self.close_index]  # (N, T, F) -> (N, 1)
        columns = []
        for j, name in enumerate(self.features):
            values = windows[:, :, j]  # (N, T, F) -> (N, T)
            if name in PRICE_FEATURES:
                columns.append(100.0 * np.log(values / last_close))
            else:
                logged = np.log1p(values)
                columns.append(logged - logged.mean(axis=1, keepdims=True))
        return np.stack(columns, axis=-1).astype(np.float32)  # F × (N, T) -> (N, T, F)

    def targets(
        self, next_close: np.ndarray, last_close: np.ndarray, bounds: Bounds | None = None
    ) -> np.ndarray:
        """Encode the next close of each window, shape (N,) -> (N,)."""
        if self.needs_bounds:
            lo, hi = self._close_bounds(bounds)
            return ((next_close - lo) / (hi - lo)).astype(np.float32)
        return (100.0 * np.log(next_close / last_close)).astype(np.float32)

    def decode(
        self, encoded: np.ndarray, last_close: np.ndarray, bounds: Bounds | None = None
    ) -> np.ndarray:
        """Turn model outputs, shape (N,), back into predicted closes, shape (N,)."""
        encoded = encoded.astype(np.float64)
        if self.needs_bounds:
            lo, hi = self._close_bounds(bounds)
            return lo + encoded * (hi - lo)
        return last_close * np.exp(encoded / 100.0)

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
