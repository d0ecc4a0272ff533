"""Prediction intervals for the next close: scales and calibration.

Everything here works on log returns as fractions (0.01 = 1%), not percent:

- a *scale* σ̂ forecasts the spread of the next log return from data up to
  today: `ewma_sigma` (RiskMetrics, nothing fitted) or `predict_scale`, a
  HAR-style regression (Corsi 2009) of the next absolute return on the mean
  absolute return and mean high-low log range over 1, 5 and 9 days (all a
  10-row window holds; Corsi's 22 days score the same), fitted by
  `fit_scale` on training rows only: six JSON-able floats;
- a *calibration* turns σ̂ into intervals: `fit_conformal` takes the
  standardized residuals z = (r − centre) / σ̂ of windows not in the test
  span and returns finite-sample corrected empirical quantiles of z for each
  central level (split conformal prediction): four JSON-able floats;
  `normal_calibration` gives the ±Φ⁻¹ quantiles of the EWMA baseline;
- `close_intervals` combines a centre, a scale and a calibration into
  `lower_80, upper_80, lower_95, upper_95` closes that never cross.

models/interval_scores.py scores the intervals (interval score, coverage tests).

benchmarks/intervals.py measures which scale and calibration to use. Its
recommended recipe, per run:

    spans = HAR_SPANS                                    # needs scale_history(spans) = 10 rows
    x = last_scale_features(close, high, low, spans)     # (N, T) windows -> (N, 6)
    model = fit_scale(x_train, r_train, spans)           # training windows, all tickers
    z = (r - centre) / predict_scale(model, x)           # training + validation windows
    calibration = fit_conformal(z)
    bounds = close_intervals(last_close, centre, predict_scale(model, x_latest), calibration)
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from statistics import NormalDist

import numpy as np
from scipy.optimize import nnls
from scipy.signal import lfilter

from closecast.models.encoding import VOL_FLOOR

LEVELS = (0.8, 0.95)
# Log-return units: the encoding's volatility floor (0.1%/day). A flat window
# would otherwise get σ̂ = 0 and a zero-width interval.
SIGMA_FLOOR = VOL_FLOOR / 100.0
# Days the HAR scale averages over: the 9 returns and 10 ranges of a 10-row window.
HAR_SPANS = (1, 5, 9)
# Standardized units. Calibrated quantiles are at least this far from the
# centre, so degenerate calibration data (every residual 0) cannot give a
# zero-width interval; real data's 80% quantiles are near ±1.3.
MIN_QUANTILE = 0.05
# The RiskMetrics decay for daily data.
EWMA_LAMBDA = 0.94


def _finite(name: str, values: np.ndarray) -> np.ndarray:
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
    returns = _finite("log_returns", log_returns)
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
    close, high, low = (_finite(n, v) for n, v in (("close", close), ("high", high), ("low", low)))
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
    returns = _finite("log_returns", log_returns)
    return np.maximum(returns.std(axis=-1), SIGMA_FLOOR)


@dataclass(frozen=True)
class Calibration:
    """Quantiles of standardized residuals z for central intervals, lowest level first.

    For each level: lower ≤ −MIN_QUANTILE < 0 < MIN_QUANTILE ≤ upper, and a
    wider level's quantiles lie outside a narrower one's, so intervals built
    from them never cross and never have zero width.
    """

    levels: tuple[float, ...]  # e.g. (0.8, 0.95)
    lower: tuple[float, ...]  # (L,) z quantile at (1 − level) / 2
    upper: tuple[float, ...]  # (L,) z quantile at (1 + level) / 2
    n: int = 0  # residuals calibrated on (0: not fitted, e.g. normal quantiles)

    def __post_init__(self) -> None:
        ok = (
            len(self.levels) == len(self.lower) == len(self.upper) > 0
            and self.levels[0] > 0
            and self.levels[-1] < 1
            and all(a < b for a, b in pairwise(self.levels))
            and all(lo < 0 < hi for lo, hi in zip(self.lower, self.upper, strict=True))
            and all(a >= b for a, b in pairwise(self.lower))
            and all(a <= b for a, b in pairwise(self.upper))
        )
        if not ok:
            raise ValueError(
                f"calibration quantiles must widen with the level around 0: levels "
                f"{self.levels}, lower {self.lower}, upper {self.upper}"
            )

    def quantiles(self, level: float) -> tuple[float, float]:
        """(lower, upper) z quantiles of one of `levels`."""
        if level not in self.levels:
            raise ValueError(f"level {level} is not calibrated; levels are {self.levels}")
        i = self.levels.index(level)
        return self.lower[i], self.upper[i]

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> "Calibration":
        return cls(
            levels=tuple(float(v) for v in data["levels"]),  # type: ignore[attr-defined]
            lower=tuple(float(v) for v in data["lower"]),  # type: ignore[attr-defined]
            upper=tuple(float(v) for v in data["upper"]),  # type: ignore[attr-defined]
            n=int(data.get("n", 0)),  # type: ignore[call-overload]
        )


def _check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    levels = tuple(sorted(float(v) for v in levels))
    if not levels or not all(0.0 < v < 1.0 for v in levels) or len(set(levels)) < len(levels):
        raise ValueError(f"levels must be distinct central coverages in (0, 1), got {levels}")
    return levels


def _nested(
    levels: tuple[float, ...], lower: list[float], upper: list[float], n: int
) -> Calibration:
    """Clamp quantiles so each level's interval contains the narrower ones and the centre."""
    lower = [min(q, -MIN_QUANTILE) for q in lower]
    upper = [max(q, MIN_QUANTILE) for q in upper]
    lower = np.minimum.accumulate(lower).tolist()
    upper = np.maximum.accumulate(upper).tolist()
    return Calibration(levels, tuple(lower), tuple(upper), n)


def min_calibration_size(levels: Sequence[float] = LEVELS) -> int:
    """Residuals `fit_conformal` needs: (n + 1)·(1 − level)/2 ≥ 1 for the widest level."""
    alpha = 1.0 - max(_check_levels(levels))
    return math.ceil(round(2.0 / alpha, 9)) - 1


def fit_conformal(z: np.ndarray, levels: Sequence[float] = LEVELS) -> Calibration:
    """Split-conformal quantiles of standardized residuals, one pair per central level.

    For a level 1 − α the upper quantile is the ⌈(n + 1)(1 − α/2)⌉-th smallest
    z and the lower the ⌊(n + 1)·α/2⌋-th: with residuals exchangeable with
    tomorrow's, each tail is missed with probability at most α/2, so the
    interval covers at least 1 − α (and at most about 1 − α + 2/(n + 1)).
    Tails are fitted separately, so a skewed z gives an asymmetric interval.

    Args:
        z: (n,) standardized residuals (r − centre) / σ̂, e.g. of the
            validation windows (split conformal proper) or of training +
            validation: a six-coefficient scale hardly overfits, and ten
            times the residuals steady the 95% quantiles (the benchmark's
            default; never the test windows).
        levels: central coverages, e.g. (0.8, 0.95).

    Returns:
        Calibration with lower ≤ 0 ≤ upper quantiles, nested across levels.
    """
    levels = _check_levels(levels)
    values = np.sort(_finite("z", np.asarray(z, dtype=np.float64).ravel()))  # (n,)
    n, need = len(values), min_calibration_size(levels)
    if n < need:
        raise ValueError(
            f"only {n} calibration residuals; a {max(levels):.0%} interval needs at least {need}"
        )
    lower, upper = [], []
    for level in levels:
        tail = (1.0 - level) / 2.0
        k_lo = math.floor(round((n + 1) * tail, 9))  # 1-based ranks
        k_hi = math.ceil(round((n + 1) * (1.0 - tail), 9))
        lower.append(float(values[k_lo - 1]))
        upper.append(float(values[k_hi - 1]))
    return _nested(levels, lower, upper, n)


def normal_calibration(levels: Sequence[float] = LEVELS) -> Calibration:
    """±Φ⁻¹((1 + level) / 2) for each level: normal intervals, as RiskMetrics draws them."""
    levels = _check_levels(levels)
    upper = [NormalDist().inv_cdf((1.0 + level) / 2.0) for level in levels]
    return _nested(levels, [-q for q in upper], upper, 0)


def close_intervals(
    last_close: np.ndarray,
    center: np.ndarray,
    sigma: np.ndarray,
    calibration: Calibration,
) -> dict[str, np.ndarray]:
    """Interval closes lower_80, upper_80, lower_95, upper_95 (one pair per calibrated level).

    bound = last_close · exp(center + q · σ̂): the point forecast
    last_close · exp(center) lies inside every interval and a wider level's
    interval contains a narrower one's.

    Args:
        last_close: (N,) today's closes.
        center: (N,) the point forecast as a log return (0 for the naive one).
        sigma: (N,) scale σ̂ > 0 of tomorrow's log return.
        calibration: quantiles of z = (r − center) / σ̂.

    Returns:
        {f"lower_{pct}": (N,), f"upper_{pct}": (N,)} for each level, e.g. pct 80.
    """
    last_close, center, sigma = (
        np.asarray(a, dtype=np.float64) for a in (last_close, center, sigma)
    )
    if np.any(sigma <= 0):
        raise ValueError(f"sigma must be > 0, got {float(np.min(sigma))}")
    out = {}
    for level, lo, hi in zip(calibration.levels, calibration.lower, calibration.upper, strict=True):
        pct = f"{round(100 * level):d}"
        out[f"lower_{pct}"] = last_close * np.exp(center + lo * sigma)
        out[f"upper_{pct}"] = last_close * np.exp(center + hi * sigma)
    return out
