"""The model registry: log the pyfunc, register a version, run the promotion gate."""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import models
from closecast.config import MODEL_NAME, PipelineConfig
from models.forecaster import INPUT_COLUMNS, Forecaster
from models.pyfunc import CloseForecastModel
from tasks.evaluation import Evaluation, score_forecasts
from tasks.tracking import configure_mlflow
from tasks.windows import Dataset, WindowSet

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = Path(models.__file__).parent / "mlflow_model.py"

SIGNATURE = ModelSignature(
    inputs=Schema(
        [
            ColSpec("string", "ticker"),
            ColSpec("datetime", "date"),
            *[ColSpec("double", c) for c in ("open", "high", "low", "close", "volume")],
        ]
    ),
    outputs=Schema([ColSpec("string", "ticker"), ColSpec("double", "predicted_close")]),
)


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided for a new version, and why."""

    promote: bool
    tag: str  # champion | rejected | manual
    reason: str


@dataclass(frozen=True)
class RegisteredVersion:
    """The version a run registered, the gate's decision, and the version that predicts."""

    version: str
    decision: Decision
    predicting_version: str


def decide_promotion(
    challenger_rmse: float, champion: tuple[str, float] | None, mode: str
) -> Decision:
    """The gate: the first version becomes champion; later ones only if they beat it.

    Args:
        challenger_rmse: the new version's test RMSE.
        champion: (version, RMSE re-scored on the same test windows), or None.
        mode: `auto`, or `manual` to leave the champion to people.
    """
    if mode == "manual":
        return Decision(False, "manual", "promotion is manual: review and run `closecast promote`")
    if champion is None:
        return Decision(True, "champion", f"first version (test_rmse {challenger_rmse:.6f})")
    version, champion_rmse = champion
    if not np.isfinite(champion_rmse):
        return Decision(True, "champion", f"champion v{version} could not be re-scored")
    if challenger_rmse < champion_rmse:
        return Decision(
            True,
            "champion",
            f"test_rmse {challenger_rmse:.6f} beats champion v{version}'s {champion_rmse:.6f} "
            "on the same test windows",
        )
    return Decision(
        False,
        "rejected",
        f"test_rmse {challenger_rmse:.6f} does not beat champion v{version}'s "
        f"{champion_rmse:.6f} on the same test windows",
    )


def example_input(frame: pd.DataFrame) -> pd.DataFrame:
    """An input example in the pyfunc's own format."""
    return frame.loc[:, list(INPUT_COLUMNS)].reset_index(drop=True)


def log_forecaster(forecaster: Forecaster, run_id: str, example: pd.DataFrame) -> str:
    """Log the forecaster to `run_id` as a models-from-code pyfunc; returns its model URI."""
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        weights, spec = forecaster.save(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"weights": str(weights), "spec": str(spec)},
            code_paths=[str(Path(models.__file__).parent)],
            signature=SIGNATURE,
            input_example=example_input(example) if len(example) else None,
            pip_requirements=requirements,
        )
    return info.model_uri


def load_forecaster(model_uri: str) -> Forecaster:
    """Load a registered pyfunc and return the forecaster inside it."""
    model = mlflow.pyfunc.load_model(model_uri)
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, CloseForecastModel):
        raise TypeError(f"{model_uri} is not a closecast model")
    return python_model.forecaster


def alias_version(client: MlflowClient, alias: str) -> str | None:
    """The version `alias` points at, or None."""
    try:
        return str(client.get_model_version_by_alias(MODEL_NAME, alias).version)
    except MlflowException:
        return None


def rescore_champion(version: str, test: WindowSet) -> float:
    """The champion's RMSE on the challenger's test windows (NaN if it cannot run on them)."""
    try:
        champion = load_forecaster(f"models:/{MODEL_NAME}/{version}")
        predicted = champion.predict_windows(test.windows, test.tickers)
    except (ValueError, RuntimeError, MlflowException) as exc:
        get_run_logger().warning("champion v%s cannot be re-scored: %s", version, exc)
        return float("nan")
    return score_forecasts(predicted, test.next_close, test.last_close)["test_rmse"]


def describe_version(metrics: dict[str, float], decision: Decision, summary: dict[str, str]) -> str:
    """The markdown description a reviewer reads in the registry."""
    lines = [
        f"**Promotion:** {decision.tag} — {decision.reason}",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in metrics.items()],
        "",
        *[f"- {k}: {v}" for k, v in summary.items()],
    ]
    return "\n".join(lines)


def register_forecaster(
    config: PipelineConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Log, register as `challenger`, run the gate and move `champion` if it says so."""
    client = configure_mlflow(config.mlflow_uri)
    metrics = evaluation.metrics
    model_uri = log_forecaster(forecaster, run_id, example)
    version = str(mlflow.register_model(model_uri, MODEL_NAME).version)
    client.set_registered_model_alias(MODEL_NAME, CHALLENGER, version)
    current = alias_version(client, CHAMPION)
    champion = None if current is None else (current, rescore_champion(current, dataset.test))
    decision = decide_promotion(metrics["test_rmse"], champion, config.promotion)
    tags = {
        "promotion": decision.tag,
        "promotion_reason": decision.reason,
        "run_id": run_id,
        **{k: f"{metrics[k]:.6g}" for k in ("test_rmse", "naive_rmse", "skill")},
    }
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAME, version, key, value)
    summary = {**dataset.summary(), "tickers": ", ".join(dataset.tickers)}
    client.update_model_version(
        MODEL_NAME, version, description=describe_version(metrics, decision, summary)
    )
    if decision.promote:
        client.set_registered_model_alias(MODEL_NAME, CHAMPION, version)
    predicting = version if decision.promote or current is None else current
    return RegisteredVersion(version=version, decision=decision, predicting_version=predicting)


@task(name="register-model", cache_policy=NO_CACHE)
def register_model(
    config: PipelineConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Register the new version and apply the promotion gate."""
    registered = register_forecaster(config, run_id, forecaster, evaluation, dataset, example)
    get_run_logger().info(
        "registered %s v%s: %s (%s)",
        MODEL_NAME,
        registered.version,
        registered.decision.tag,
        registered.decision.reason,
    )
    return registered


def predict_with_version(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Load registry version `version` as a pyfunc and predict from raw OHLCV rows."""
    configure_mlflow(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    return model.predict(example_input(frame))


@task(name="predict-next", cache_policy=NO_CACHE)
def predict_next(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes from the registered version that predicts."""
    if frame.empty:
        return pd.DataFrame({"ticker": [], "predicted_close": []})
    return predict_with_version(tracking_uri, version, frame)
