"""The scale σ̂ of the next log return: how wide tomorrow's move is likely to be.

Everything here works on log returns as fractions (0.01 = 1%), not percent:

- `ewma_sigma`: the RiskMetrics forecast, nothing fitted (the baseline the
  intervals are scored against);
- `predict_scale`: a HAR-style regression (Corsi 2009) of the next absolute
  return on the mean absolute return and mean high-low log range over 1, 5
  and 9 days (all a 10-row window holds; Corsi's 22 days score the same),
  fitted by `fit_scale` on training rows only: six JSON-able floats;
- `window_sigma`: each window's own volatility, as the encoding computes it.

models/intervals.py is the interval method that uses the scale.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls
from scipy.signal import lfilter

from closecast.models.encoding import VOL_FLOOR

# Log-return units: the encoding's volatility floor (0.1%/day). A flat window
# would otherwise get σ̂ = 0 and a zero-width interval.
SIGMA_FLOOR = VOL_FLOOR / 100.0
# Days the HAR scale averages over: the 9 returns and 10 ranges of a 10-row window.
HAR_SPANS = (1, 5, 9)
# The RiskMetrics decay for daily data.
EWMA_LAMBDA = 0.94


def finite_values(name: str, values: np.ndarray) -> np.ndarray:
    """`values` as float64, refusing an empty last axis or a non-finite value, naming it."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 0 or values.shape[-1] == 0:
        raise ValueError(f"{name} needs at least 1 value along its last axis, got {values.shape}")
    bad = ~np.isfinite(values)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), values.shape)
        raise ValueError(f"{name} has a non-finite value {values[i]} at index {tuple(map(int, i))}")
    return values


def ewma_sigma(log_returns: np.ndarray, lam: float = EWMA_LAMBDA) -> np.ndarray:
    """RiskMetrics volatility forecast for the day after each return, point-in-time.

    σ̂²[t] = Σ_{i≤t} λ^(t−i) r_i² / Σ_{i≤t} λ^(t−i): the recursion
    s_t = λ s_{t−1} + (1 − λ) r_t² from s_{−1} = 0, divided by 1 − λ^(t+1) so
    the weights of the returns seen so far sum to 1. That is the usual
    RiskMetrics estimate once a few dozen returns are in (the seed's weight
    decays as λ^t) and a sensible one on a 10-day window, where seeding with
    the first squared return would rest on a single day. Zero mean, as
    RiskMetrics. At least SIGMA_FLOOR, so a flat series never gives 0.

    Args:
        log_returns: daily log returns (fractions), (n,) for one series or
            (N, n) for N windows, oldest first along the last axis.
        lam: decay λ in (0, 1).

    Returns:
        Same shape; [..., t] forecasts the return after [..., t], so [..., -1]
        is tomorrow's σ̂.
    """
    if not 0.0 < lam < 1.0:
        raise ValueError(f"lam must be in (0, 1), got {lam}")
    returns = finite_values("log_returns", log_returns)
    # s_t = λ s_{t−1} + x_t as one linear filter along the last axis (a Python loop over
    # a 20-year history costs seconds per universe).
    weighted = lfilter([1.0], [1.0, -lam], returns**2, axis=-1)  # (..., n) Σ λ^(t−i) r_i²
    weights = lfilter([1.0], [1.0, -lam], np.ones(returns.shape[-1]))  # (n,) Σ λ^(t−i)
    return np.maximum(np.sqrt(weighted / weights), SIGMA_FLOOR)


def _trailing_mean(values: np.ndarray, span: int) -> np.ndarray:
    """Mean of the last `span` values up to each position, NaN before there are enough."""
    # (..., n) -> (..., n); the cumulative sum makes every span one subtraction
    padded = np.concatenate([np.zeros((*values.shape[:-1], 1)), values], axis=-1)
    total = np.cumsum(padded, axis=-1)  # (..., n + 1)
    out = np.full(values.shape, np.nan)
    if span <= values.shape[-1]:
        out[..., span - 1 :] = (total[..., span:] - total[..., :-span]) / span
    return out


def spans_for_window(window: int) -> tuple[int, ...]:
    """HAR_SPANS cut to what a `window`-row window holds: (1, 5, 9) for 10 rows, (1, 4) for 5.

    Raises:
        ValueError: for a window under 2 rows (no return to average).
    """
    if window < 2:
        raise ValueError(f"a scale needs a window of at least 2 rows, got {window}")
    return tuple(sorted({min(s, window - 1) for s in HAR_SPANS}))


def scale_history(spans: Sequence[int] = HAR_SPANS) -> int:
    """Rows of prices `scale_features` needs for a full row: max(spans) returns + 1."""
    return max(spans) + 1


def _checked_prices(
    close: np.ndarray, high: np.ndarray, low: np.ndarray, spans: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not spans or min(spans) < 1:
        raise ValueError(f"spans must be positive day counts, got {tuple(spans)}")
    close, high, low = (
        finite_values(n, v) for n, v in (("close", close), ("high", high), ("low", low))
    )
    if np.any(close <= 0) or np.any(low <= 0) or np.any(high < low):
        raise ValueError("prices must be positive with high >= low")
    return close, high, low


def scale_features(
    close: np.ndarray, high: np.ndarray, low: np.ndarray, spans: Sequence[int] = HAR_SPANS
) -> np.ndarray:
    """HAR regressors at each row: mean |log return| and mean log(high / low) over spans.

    Args:
        close, high, low: prices, (n,) for one series or (N, n) for N windows,
            oldest first along the last axis.
        spans: days to average over, e.g. (1, 5, 22).

    Returns:
        (..., n, 2·len(spans)): for row t, [mean |r| over the spans, then mean
        range over the spans], from rows ≤ t only; NaN where a span reaches
        before the first row (returns need the previous close, so the
        longest span is full from row max(spans) on; see `scale_history`).
    """
    close, high, low = _checked_prices(close, high, low, spans)
    moves = np.abs(np.diff(np.log(close), axis=-1))  # (..., n) -> (..., n - 1), ends on row 1..
    first = np.full((*close.shape[:-1], 1), np.nan)  # row 0 has no return
    ranges = np.log(high / low)  # (..., n)
    columns = [np.concatenate([first, _trailing_mean(moves, s)], axis=-1) for s in spans]
    columns += [_trailing_mean(ranges, s) for s in spans]
    return np.stack(columns, axis=-1)  # 2·S × (..., n) -> (..., n, 2·S)


def last_scale_features(
    close: np.ndarray, high: np.ndarray, low: np.ndarray, spans: Sequence[int] = HAR_SPANS
) -> np.ndarray:
    """`scale_features`' last row only, (..., n) -> (..., 2·S), to the same bits.

    What a window's forecast needs: on ~500k windows this costs a fraction of
    computing every row and keeping one.
    """
    close, high, low = _checked_prices(close, high, low, spans)
    moves = np.abs(np.diff(np.log(close), axis=-1))  # (..., n - 1)
    ranges = np.log(high / low)  # (..., n)
    columns = []
    for values in (moves, ranges):
        # The same prefix sums as _trailing_mean, so the same rounding.
        padded = np.concatenate([np.zeros((*values.shape[:-1], 1)), values], axis=-1)
        total = np.cumsum(padded, axis=-1)  # (..., m + 1)
        m = values.shape[-1]
        for span in spans:
            if span <= m:
                columns.append((total[..., m] - total[..., m - span]) / span)  # (...,)
            else:
                columns.append(np.full(values.shape[:-1], np.nan))
    return np.stack(columns, axis=-1)  # 2·S × (...,) -> (..., 2·S)


@dataclass(frozen=True)
class ScaleModel:
    """σ̂ = features · coefficients (no intercept, coefficients ≥ 0), at least SIGMA_FLOOR.

    With no intercept the scale is proportional to the recent moves, so one
    model pooled over tickers fits calm and volatile ones alike.
    """

    spans: tuple[int, ...]
    coefficients: tuple[float, ...]  # (2·len(spans),) in scale_features' column order

    def to_dict(self) -> dict[str, list[float] | list[int]]:
        return {"spans": list(self.spans), "coefficients": list(self.coefficients)}

    @classmethod
    def from_dict(cls, data: dict[str, list[float] | list[int]]) -> "ScaleModel":
        spans = tuple(int(s) for s in data["spans"])
        coefficients = tuple(float(c) for c in data["coefficients"])
        if len(coefficients) != 2 * len(spans) or min(coefficients, default=-1.0) < 0:
            raise ValueError(
                f"a scale model needs {2 * len(spans)} coefficients >= 0 for spans {spans}, "
                f"got {coefficients}"
            )
        return cls(spans, coefficients)


def fit_scale(
    features: np.ndarray, next_log_return: np.ndarray, spans: Sequence[int] = HAR_SPANS
) -> ScaleModel:
    """Non-negative least squares of |next log return| on `scale_features` rows.

    Fit it on training rows only (pooled over tickers); rows with a NaN are
    skipped (the first rows of each series lack the longest span).

    Args:
        features: (N, 2·len(spans)) rows of `scale_features`.
        next_log_return: (N,) the log return of the day after each row.
        spans: the spans the features were built with.
    """
    x = np.asarray(features, dtype=np.float64)
    y = np.abs(np.asarray(next_log_return, dtype=np.float64))
    if x.ndim != 2 or x.shape[1] != 2 * len(spans) or len(y) != len(x):
        raise ValueError(
            f"features must be (N, {2 * len(spans)}) with N next returns, got {x.shape} "
            f"and {y.shape}"
        )
    usable = np.isfinite(x).all(axis=1) & np.isfinite(y)
    if usable.sum() < x.shape[1] + 1:
        raise ValueError(f"only {int(usable.sum())} complete rows to fit a scale on")
    coefficients, _ = nnls(x[usable], y[usable])
    return ScaleModel(tuple(int(s) for s in spans), tuple(float(c) for c in coefficients))


def predict_scale(model: ScaleModel, features: np.ndarray) -> np.ndarray:
    """σ̂ for the day after each row, (..., 2·len(spans)) -> (...); NaN where a feature is NaN."""
    x = np.asarray(features, dtype=np.float64)
    if x.shape[-1] != len(model.coefficients):
        raise ValueError(
            f"features have {x.shape[-1]} columns, the scale model expects "
            f"{len(model.coefficients)}"
        )
    return np.maximum(x @ np.asarray(model.coefficients), SIGMA_FLOOR)  # NaN stays NaN


def window_sigma(log_returns: np.ndarray) -> np.ndarray:
    """Each window's own volatility (as `closecast.models.encoding`), (..., n) -> (...), ≥ SIGMA_FLOOR."""
    returns = finite_values("log_returns", log_returns)
    return np.maximum(returns.std(axis=-1), SIGMA_FLOOR)
