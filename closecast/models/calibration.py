"""The calibration that turns a scale σ̂ into intervals, and the interval levels.

Standardized residuals z = (r − centre) / σ̂ of the next log return (as
fractions) become one pair of quantiles per central level:

- `fit_conformal`: finite-sample corrected empirical quantiles of z (split
  conformal prediction), four JSON-able floats;
- `normal_calibration`: the ±Φ⁻¹ quantiles the EWMA baseline draws;
- `close_intervals`: a centre, a scale and a calibration make the
  `lower_80, upper_80, lower_95, upper_95` closes, which never cross.

`LEVELS` is the one definition of the levels: the interval columns
(`INTERVAL_COLUMNS`), evaluation's percent levels and metric names derive
from it. models/intervals.py is the interval method that uses all this.
"""

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from statistics import NormalDist

import numpy as np

from closecast.models.scale import finite_values

# Central coverages of every interval the product draws, as fractions.
LEVELS = (0.8, 0.95)
# Standardized units. Calibrated quantiles are at least this far from the
# centre, so degenerate calibration data (every residual 0) cannot give a
# zero-width interval; real data's 80% quantiles are near ±1.3.
MIN_QUANTILE = 0.05


def level_percent(level: float) -> int:
    """A level as columns and metrics name it: 80 for 0.8."""
    return round(100 * level)


def bound_columns(level: float) -> tuple[str, str]:
    """The (lower, upper) column names of one level: ("lower_80", "upper_80") for 0.8."""
    pct = level_percent(level)
    return f"lower_{pct}", f"upper_{pct}"


# (80, 95): the levels in percent, as evaluation's metrics name them.
LEVEL_PERCENTS = tuple(level_percent(level) for level in LEVELS)
# ("lower_80", "upper_80", "lower_95", "upper_95"): what `close_intervals` returns for LEVELS.
INTERVAL_COLUMNS = tuple(c for level in LEVELS for c in bound_columns(level))


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
    values = np.sort(finite_values("z", np.asarray(z, dtype=np.float64).ravel()))  # (n,)
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
        {column: (N,)} for the `bound_columns` of each level: INTERVAL_COLUMNS for LEVELS.
    """
    last_close, center, sigma = (
        np.asarray(a, dtype=np.float64) for a in (last_close, center, sigma)
    )
    if np.any(sigma <= 0):
        raise ValueError(f"sigma must be > 0, got {float(np.min(sigma))}")
    out = {}
    for level, lo, hi in zip(calibration.levels, calibration.lower, calibration.upper, strict=True):
        lower, upper = bound_columns(level)
        out[lower] = last_close * np.exp(center + lo * sigma)
        out[upper] = last_close * np.exp(center + hi * sigma)
    return out
