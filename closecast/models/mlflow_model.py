"""Entry point MLflow executes when it loads the model (models-from-code)."""

import mlflow

from closecast.models.pyfunc import CloseForecastModel

mlflow.models.set_model(CloseForecastModel())
