"""Prediction: the rows a model predicts from, and tomorrow's closes from a model.

The one way to predict. The model is a forecaster held in memory (a
backfill between retrainings) or a registered version loaded as the pyfunc
MLflow serves (the nightly, `predict`); both run `Forecaster.predict_frame`.
"""

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, model_serializer

from closecast.core.statuses import INSUFFICIENT_HISTORY, STALE_DATA, Issues
from closecast.models.forecaster import Forecaster, prediction_table
from closecast.tasks.modeling.features import latest_rows

if TYPE_CHECKING:
    from mlflow.pyfunc import PyFuncModel


class ModelInUse(BaseModel):
    """The model a session predicts with, held in memory: the one it trained, or the one a
    backfill carries between retrainings.

    Passed from one session's flow run to the next; Prefect records only its
    label, never the weights.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    forecaster: Forecaster
    version: str  # registry version, or run:<mlflow run id> when nothing is registered
    metrics: dict[str, float]
    decision: str  # "tag: reason" of the gate, or "not registered"

    @model_serializer
    def _label(self) -> dict[str, Any]:
        return {"version": self.version, "decision": self.decision}


@dataclass
class LatestInputs:
    """The last `window` rows of every ticker that can be predicted, and why others cannot."""

    rows: pd.DataFrame
    issues: Issues


def latest_inputs(
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


def predict_next(model: "Forecaster | PyFuncModel", rows: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes from `rows` (`latest_inputs`), one row per ticker.

    Columns: ticker, predicted_close, the interval bounds, status, message (a
    version logged before statuses existed returns the first two only). A
    pyfunc gets only the columns its signature lists, so MLflow has no unused
    column to warn about.
    """
    if rows.empty:
        return prediction_table({}, {})
    if isinstance(model, Forecaster):
        return model.predict_frame(rows)
    listed = set(model.metadata.get_input_schema().input_names())
    return model.predict(rows.loc[:, [c for c in rows.columns if c in listed]])
