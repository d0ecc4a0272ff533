"""The MLflow pyfunc wrapper: raw OHLCV rows in, next closes out.

Logged as models-from-code (`models/mlflow_model.py`), with the weights and
spec as artifacts, so loading it unpickles nothing.
"""

from pathlib import Path
from typing import Any

import pandas as pd
from mlflow.pyfunc import PythonModel, PythonModelContext

from models.forecaster import Forecaster


class CloseForecastModel(PythonModel):
    """`predict(df)`: ticker, date, open, high, low, close, volume -> ticker, predicted_close."""

    forecaster: Forecaster

    def load_context(self, context: PythonModelContext) -> None:
        self.forecaster = Forecaster.load(
            Path(context.artifacts["weights"]), Path(context.artifacts["spec"])
        )

    def predict(
        self,
        context: PythonModelContext,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        frame = pd.DataFrame(model_input).copy()
        frame["date"] = pd.to_datetime(frame["date"])
        return self.forecaster.predict_frame(frame)
