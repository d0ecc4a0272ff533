"""Evaluation on the held-out test span, against the naive forecast on the same windows.

The point forecast is scored against naive persistence (RMSE, MAE, a
Diebold–Mariano p-value); the 80% and 95% intervals by coverage and the
Gneiting–Raftery interval score, against RiskMetrics EWMA intervals (λ = 0.94,
normal, around the naive forecast), which need no fitting. Every error and
score is relative to the last close, so no ticker dominates by its price level.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from pandas.core.groupby import DataFrameGroupBy
from scipy.stats import binomtest, norm
from scipy.stats import t as student_t
from sklearn.metrics import (
    mean_absolute_error,
    mean_absolute_percentage_error,
    root_mean_squared_error,
)

from closecast.models.calibration import LEVEL_PERCENTS, close_intervals, normal_calibration
from closecast.models.forecaster import INTERVAL_COLUMNS, Forecaster
from closecast.models.interval_scores import coverage, interval_score
from closecast.tasks.modeling.windows import WindowSet

# (80, 95): the interval levels (closecast.models.calibration.LEVELS) in percent, as the
# column and metric names write them.
LEVELS = LEVEL_PERCENTS


@dataclass
class Evaluation:
    """Run-level metrics (MLflow names) and per-ticker metrics in price units."""

    metrics: dict[str, float]
    per_ticker: pd.DataFrame
    predictions: pd.DataFrame  # one row per test window


def score_forecasts(
    predicted: np.ndarray, actual: np.ndarray, last_close: np.ndarray
) -> dict[str, float]:
    """Metrics of predicted closes against actual ones and against naive persistence.

    RMSE and MAE use errors relative to the last close, so no ticker
    dominates by its price level; MAPE is in percent of the actual close;
    directional accuracy is the share of windows whose predicted move from
    the last close has the sign of the actual move.
    """
    if len(predicted) == 0:
        raise ValueError("no test windows to evaluate on")
    if not np.all(np.isfinite(predicted)):
        raise ValueError(f"{int((~np.isfinite(predicted)).sum())} predictions are not finite")
    # Closes as multiples of the last close: their errors are the errors relative to it.
    truth, forecast, naive = actual / last_close, predicted / last_close, np.ones(len(actual))
    rmse = root_mean_squared_error(truth, forecast)
    naive_rmse = root_mean_squared_error(truth, naive)
    return {
        "test_rmse": float(rmse),
        "test_mae": float(mean_absolute_error(truth, forecast)),
        "test_mape": float(mean_absolute_percentage_error(actual, predicted) * 100),
        "test_directional_accuracy": float(
            np.mean(np.sign(predicted - last_close) == np.sign(actual - last_close))
        ),
        "naive_rmse": float(naive_rmse),
        "naive_mae": float(mean_absolute_error(truth, naive)),
        "skill": float(1.0 - rmse / naive_rmse) if naive_rmse > 0 else 0.0,
    }


def diebold_mariano_pvalue(
    model_error: np.ndarray, naive_error: np.ndarray, dates: np.ndarray
) -> float:
    """One-sided p-value that the model's squared errors are no lower than naive's.

    The loss differential d = e_model² − e_naive² is averaged over the tickers
    of each date first, so tickers that move together are not counted as
    independent evidence, then tested as a daily series (one-step forecasts:
    no autocorrelation correction). Small values mean the model is more
    accurate than naive beyond chance; 0.5 when the two are identical.
    """
    d = pd.Series(np.square(model_error) - np.square(naive_error)).groupby(dates).mean()
    n, mean, sd = len(d), float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0
    if n < 2 or sd == 0.0:
        return 0.5 if mean == 0.0 else float(mean > 0)
    return float(norm.cdf(mean / (sd / np.sqrt(n))))


@dataclass(frozen=True)
class PairedDifference:
    """The mean of a daily loss differential a − b, its 95% interval and one-sided p-value."""

    mean: float  # mean over sessions of (a − b), in the losses' unit
    low: float
    high: float
    pvalue: float  # one-sided: that a is no lower than b; small values favour a
    sessions: int
    lags: int  # Newey–West lags of the variance


def newey_west_lags(n: int) -> int:
    """Newey and West's (1994) automatic lag, ⌊4 (n / 100)^(2/9)⌋, capped at n − 1."""
    return max(0, min(n - 1, math.floor(4 * (n / 100) ** (2 / 9)))) if n > 1 else 0


def hac_variance_of_mean(d: np.ndarray, lags: int) -> float:
    """Newey–West (Bartlett kernel) variance of the mean of the series `d`, (n,) -> float.

    γ₀ + 2 Σₗ (1 − l / (lags + 1)) γₗ, over n, with autocovariances γₗ
    divided by n; a negative sum (possible with few sessions) falls back to γ₀ / n.
    """
    n = len(d)
    centred = d - d.mean()
    gamma = [float(centred[lag:] @ centred[: n - lag]) / n for lag in range(lags + 1)]
    total = gamma[0] + 2 * sum((1 - lag / (lags + 1)) * gamma[lag] for lag in range(1, lags + 1))
    return (total if total > 0 else gamma[0]) / n


def paired_difference(
    loss_a: np.ndarray, loss_b: np.ndarray, dates: np.ndarray, lags: int | None = None
) -> PairedDifference:
    """Diebold–Mariano test of two forecasts' losses on the same windows, HAC variance.

    The differential a − b is averaged over the tickers of each date first (tickers
    that move together are not independent evidence), then its mean over the
    sessions is tested with a Newey–West variance and Student's t with n − 1
    degrees of freedom (Harvey, Leybourne and Newbold's small-sample form).
    With fewer than 2 sessions, or a constant differential, there is no
    variance: the interval is NaN and the p-value 0.5 at a tie, else NaN.

    Args:
        loss_a, loss_b: (N,) each window's loss of forecast a and of forecast b.
        dates: (N,) each window's target date.
        lags: Newey–West lags; None: `newey_west_lags` of the number of sessions.
    """
    d = pd.Series(np.asarray(loss_a) - np.asarray(loss_b)).groupby(np.asarray(dates)).mean()
    values = d.to_numpy(dtype=np.float64)  # (sessions,), in date order
    n = len(values)
    if n == 0:
        return PairedDifference(np.nan, np.nan, np.nan, np.nan, 0, 0)
    mean = float(values.mean())
    lags = newey_west_lags(n) if lags is None else min(lags, n - 1)
    variance = hac_variance_of_mean(values, lags) if n > 1 else 0.0
    if variance <= 0.0:
        p = 0.5 if mean == 0.0 else np.nan
        return PairedDifference(mean, np.nan, np.nan, p, n, lags)
    se, df = math.sqrt(variance), n - 1
    half = float(student_t.ppf(0.975, df)) * se
    p = float(student_t.cdf(mean / se, df))
    return PairedDifference(mean, mean - half, mean + half, p, n, lags)


def window_interval_scores(
    bounds: dict[str, np.ndarray], actual: np.ndarray, last_close: np.ndarray
) -> np.ndarray:
    """Each window's `test_interval_score`: the mean of its 80% and 95% interval scores,
    relative to the last close, (N,) -> (N,); NaN for a model without intervals."""
    y = actual / last_close  # (N,)
    scores = [
        interval_score(
            bounds[f"lower_{level}"] / last_close,
            bounds[f"upper_{level}"] / last_close,
            y,
            alpha=1.0 - level / 100.0,
        )  # NaN bounds give NaN scores
        for level in LEVELS
    ]
    return (scores[0] + scores[1]) / 2.0


def direction_interval(hits: np.ndarray) -> tuple[float, float]:
    """95% Wilson interval of the directional accuracy (share of hits)."""
    result = binomtest(int(hits.sum()), len(hits)).proportion_ci(0.95, method="wilson")
    return float(result.low), float(result.high)


def interval_metrics(
    bounds: dict[str, np.ndarray], actual: np.ndarray, last_close: np.ndarray, prefix: str = ""
) -> dict[str, float]:
    """Coverage and mean interval score at 80% and 95%, relative to the last close.

    NaN bounds (a model without intervals) give NaN metrics.
    """
    y = actual / last_close  # (N,)
    out = {}
    for level in LEVELS:
        lower, upper = bounds[f"lower_{level}"] / last_close, bounds[f"upper_{level}"] / last_close
        if np.isnan(lower).any() or np.isnan(upper).any():
            out[f"{prefix}coverage_{level}"] = out[f"{prefix}interval_score_{level}"] = np.nan
            continue
        out[f"{prefix}coverage_{level}"] = coverage(lower, upper, y)
        score = interval_score(lower, upper, y, alpha=1.0 - level / 100.0)
        out[f"{prefix}interval_score_{level}"] = float(np.mean(score))
    return out


def baseline_bounds(last_close: np.ndarray, sigma: np.ndarray) -> dict[str, np.ndarray]:
    """RiskMetrics EWMA intervals: normal quantiles of σ̂ around the naive forecast."""
    return close_intervals(last_close, np.zeros(len(last_close)), sigma, normal_calibration())


def score_distribution(forecast: dict[str, np.ndarray], test: WindowSet) -> dict[str, float]:
    """Every run-level metric of a point forecast and its intervals on `test`.

    `test_interval_score` (the mean of the 80% and 95% interval scores) is
    what the promotion gate compares: a proper score of the whole forecast,
    so a better centre and an honest width both lower it.
    """
    predicted, actual, last = forecast["predicted_close"], test.next_close, test.last_close
    metrics = score_forecasts(predicted, actual, last)
    metrics["skill_pvalue"] = diebold_mariano_pvalue(
        (predicted - actual) / last, (last - actual) / last, test.target_dates
    )
    hits = np.sign(predicted - last) == np.sign(actual - last)
    low, high = direction_interval(hits)
    metrics["test_directional_accuracy_low"] = low
    metrics["test_directional_accuracy_high"] = high
    metrics |= interval_metrics(forecast, actual, last)
    metrics |= interval_metrics(
        baseline_bounds(last, test.baseline_sigma), actual, last, prefix="baseline_"
    )
    del metrics["baseline_coverage_80"], metrics["baseline_coverage_95"]
    metrics["interval_skill_95"] = 1.0 - (
        metrics["interval_score_95"] / metrics["baseline_interval_score_95"]
    )
    metrics["test_interval_score"] = (
        metrics["interval_score_80"] + metrics["interval_score_95"]
    ) / 2.0
    return metrics


def _by_ticker(
    grouped: DataFrameGroupBy,
    metric: Callable[[np.ndarray, np.ndarray], float],
    forecast: str = "predicted_close",
) -> pd.Series:
    """`metric(actual_close, forecast)` of each ticker's windows (arrays: sklearn checks
    them faster than Series, which counts over a 500-ticker universe)."""
    return grouped.apply(
        lambda g: float(metric(g["actual_close"].to_numpy(), g[forecast].to_numpy())),
        include_groups=False,
    )


def per_ticker_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """RMSE, MAE and MAPE per ticker in price units, with the naive forecast's."""
    grouped = predictions.groupby("ticker", sort=True)
    table = pd.DataFrame(
        {
            "windows": grouped.size(),
            "rmse": _by_ticker(grouped, root_mean_squared_error),
            "mae": _by_ticker(grouped, mean_absolute_error),
            "mape": _by_ticker(grouped, mean_absolute_percentage_error) * 100,
            "naive_rmse": _by_ticker(grouped, root_mean_squared_error, "last_close"),
        }
    )
    table["skill"] = 1.0 - table["rmse"] / table["naive_rmse"]
    if set(INTERVAL_COLUMNS) <= set(predictions.columns):
        for level in LEVELS:
            hit = predictions["actual_close"].between(
                predictions[f"lower_{level}"], predictions[f"upper_{level}"]
            )
            table[f"coverage_{level}"] = hit.groupby(predictions["ticker"]).mean()
    return table.reset_index()


def head_metrics(forecaster: Forecaster) -> dict[str, float]:
    """A distributional model's validation interval score of each head
    (`val_interval_score_lstm`, `val_interval_score_har`): why it uses the head it uses."""
    return {f"val_interval_score_{head}": score for head, score in forecaster.head_scores.items()}


def evaluate_model(forecaster: Forecaster, test: WindowSet) -> Evaluation:
    """Predict every test window and score the point forecast and its intervals."""
    forecast = forecaster.predict_distribution(test.windows, test.tickers)
    predictions = pd.DataFrame(
        {
            "ticker": test.tickers.astype(str),
            "target_date": pd.to_datetime(test.target_dates),
            "last_close": test.last_close,
            "actual_close": test.next_close,
            **forecast,
        }
    )
    metrics = score_distribution(forecast, test) | head_metrics(forecaster)
    return Evaluation(
        metrics=metrics, per_ticker=per_ticker_metrics(predictions), predictions=predictions
    )
