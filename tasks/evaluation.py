"""Evaluation on the held-out test span, against the naive forecast on the same windows."""

from dataclasses import dataclass

import numpy as np
import pandas as pd
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from models.forecaster import Forecaster
from tasks.windows import WindowSet


@dataclass
class Evaluation:
    """Run-level metrics (MLflow names) and per-ticker metrics in price units."""

    metrics: dict[str, float]
    per_ticker: pd.DataFrame
    predictions: pd.DataFrame  # one row per test window


def _rmse(errors: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(errors))))


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
    relative = (predicted - actual) / last_close
    naive_relative = (last_close - actual) / last_close
    rmse, naive_rmse = _rmse(relative), _rmse(naive_relative)
    return {
        "test_rmse": rmse,
        "test_mae": float(np.mean(np.abs(relative))),
        "test_mape": float(np.mean(np.abs(predicted - actual) / actual) * 100),
        "test_directional_accuracy": float(
            np.mean(np.sign(predicted - last_close) == np.sign(actual - last_close))
        ),
        "naive_rmse": naive_rmse,
        "naive_mae": float(np.mean(np.abs(naive_relative))),
        "skill": 1.0 - rmse / naive_rmse if naive_rmse > 0 else 0.0,
    }


def per_ticker_metrics(predictions: pd.DataFrame) -> pd.DataFrame:
    """RMSE, MAE and MAPE per ticker in price units, with the naive forecast's."""
    p = predictions.assign(
        error=predictions["predicted_close"] - predictions["actual_close"],
        naive_error=predictions["last_close"] - predictions["actual_close"],
    )
    grouped = p.groupby("ticker", sort=True)
    table = pd.DataFrame(
        {
            "windows": grouped.size(),
            "rmse": grouped["error"].apply(lambda e: _rmse(e.to_numpy())),
            "mae": grouped["error"].apply(lambda e: float(e.abs().mean())),
            "mape": grouped.apply(
                lambda g: float((g["error"].abs() / g["actual_close"]).mean() * 100),
                include_groups=False,
            ),
            "naive_rmse": grouped["naive_error"].apply(lambda e: _rmse(e.to_numpy())),
        }
    )
    table["skill"] = 1.0 - table["rmse"] / table["naive_rmse"]
    return table.reset_index()


def evaluate_forecaster(forecaster: Forecaster, test: WindowSet) -> Evaluation:
    """Predict every test window and score it."""
    predicted = forecaster.predict_windows(test.windows, test.tickers)
    predictions = pd.DataFrame(
        {
            "ticker": test.tickers.astype(str),
            "target_date": pd.to_datetime(test.target_dates),
            "last_close": test.last_close,
            "actual_close": test.next_close,
            "predicted_close": predicted,
        }
    )
    metrics = score_forecasts(predicted, test.next_close, test.last_close)
    return Evaluation(
        metrics=metrics, per_ticker=per_ticker_metrics(predictions), predictions=predictions
    )


@task(name="evaluate-model", cache_policy=NO_CACHE)
def evaluate_model(forecaster: Forecaster, test: WindowSet) -> Evaluation:
    """Score the model and the naive forecast on the test span."""
    evaluation = evaluate_forecaster(forecaster, test)
    m = evaluation.metrics
    get_run_logger().info(
        "test rmse %.5f vs naive %.5f (skill %+.4f), directional accuracy %.3f",
        m["test_rmse"],
        m["naive_rmse"],
        m["skill"],
        m["test_directional_accuracy"],
    )
    return evaluation
