"""Prediction without training: the champion from the registry, or a model held in memory."""

from dataclasses import dataclass
from datetime import date

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from closecast.core.statuses import INSUFFICIENT_HISTORY, STALE_DATA, Issues
from closecast.models.forecaster import Forecaster, prediction_table
from closecast.tasks.modeling.features import latest_rows


@dataclass
class LatestInputs:
    """The last `window` rows of every ticker that can be predicted, and why others cannot."""

    rows: pd.DataFrame
    issues: Issues


def select_latest(
    frames: dict[str, pd.DataFrame], tickers: list[str], as_of: date, window: int
) -> LatestInputs:
    """Pyfunc input rows for tickers with `window` rows ending on `as_of`.

    A ticker whose last row is before as_of gets stale_data; one with fewer
    than `window` rows gets insufficient_history. Tickers absent from
    `frames` are left to the earlier steps' issues.
    """
    issues: Issues = {}
    ready = []
    for ticker in sorted(set(tickers) & set(frames)):
        frame = frames[ticker]
        if frame.index[-1] < pd.Timestamp(as_of):
            last = frame.index[-1].date().isoformat()
            issues[ticker] = (STALE_DATA, f"last price is {last}, before {as_of.isoformat()}")
        elif len(frame) < window:
            issues[ticker] = (
                INSUFFICIENT_HISTORY,
                f"{len(frame)} rows; the model's window needs {window}",
            )
        else:
            ready.append(ticker)
    return LatestInputs(rows=latest_rows(frames, ready, window), issues=issues)


def predict_frame(forecaster: Forecaster, rows: pd.DataFrame) -> pd.DataFrame:
    """Next closes from a forecaster held in memory (the same code the pyfunc runs).

    One row per ticker: ticker, predicted_close, status, message.
    """
    if rows.empty:
        return prediction_table({}, {})
    return forecaster.predict_frame(rows)


@task(name="latest-inputs", cache_policy=NO_CACHE, task_run_name="latest-inputs as_of={as_of}")
def latest_inputs(
    frames: dict[str, pd.DataFrame], tickers: list[str], as_of: date, window: int
) -> LatestInputs:
    """The rows the model predicts from, one window per ready ticker."""
    return select_latest(frames, tickers, as_of, window)


@task(name="predict-in-memory", cache_policy=NO_CACHE)
def predict_in_memory(forecaster: Forecaster, rows: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes from the model this run trained last (nothing registered)."""
    return predict_frame(forecaster, rows)
