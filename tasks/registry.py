"""The model registry: log the pyfunc, register a version, move the aliases, predict.

A nightly run registers in two steps so that a failure leaves the registry as
it found it: `register_forecaster` re-scores the champion, decides (the gate,
`tasks.gate`), and creates the version with its tags (no alias moves);
`apply_promotion` moves `challenger` (and `champion` when the gate said so) as
the run's last registry write. `tasks.aliases.rollback_registration` wraps
both: if anything in between fails, the run's version is deleted and the
aliases are put back.
"""

import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import core
import models
from core.config import MODEL_NAME, PipelineConfig
from models.forecaster import OUTPUT_COLUMNS, Forecaster, prediction_table
from models.pyfunc import CloseForecastModel, accepted_names
from tasks.aliases import CHALLENGER, CHAMPION, AliasMove, alias_version, move_alias
from tasks.evaluation import Evaluation
from tasks.gate import GATED_METRICS, Decision, check_metrics, decide_promotion, rescore_champion
from tasks.mlflow_connection import configure_mlflow
from tasks.windows import Dataset

MODEL_CODE = Path(models.__file__).parent / "mlflow_model.py"


@dataclass(frozen=True)
class RegisteredVersion:
    """A version a run registered (no alias moved yet) and what the gate decided for it."""

    version: str
    decision: Decision
    predicting_version: str
    previous_champion: str | None
    run_id: str


def signature(forecaster: Forecaster) -> ModelSignature:
    """The pyfunc's signature: the columns this model reads, and what it returns.

    MLflow checks the input against it before `predict` runs, matching names
    exactly and refusing int64 for double and strings for datetime, with an
    error that prints the whole input. So each column the model reads is
    listed under every name the pyfunc accepts (`close`, `Close`), optional and
    of any type, and `predict` itself refuses a missing column or a column of
    the wrong kind in one line. Columns the model does not read are not listed.
    """
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(AnyType(), name, required=False)
        for column in forecaster.input_columns
        for name in accepted_names(column)
    ]
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS.items()
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def example_input(frame: pd.DataFrame, forecaster: Forecaster) -> pd.DataFrame:
    """An input example in the pyfunc's own format: the first ticker's rows, the model's columns."""
    first = frame["ticker"] == frame["ticker"].min()
    return frame.loc[first, list(forecaster.input_columns)].reset_index(drop=True)


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
            # models/ and the foundation it imports (core/), as code: no pickle
            code_paths=[str(Path(models.__file__).parent), str(Path(core.__file__).parent)],
            signature=signature(forecaster),
            input_example=example_input(example, forecaster) if len(example) else None,
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


def list_tickers(tickers: list[str], limit: int = 40) -> str:
    """Tickers for a description, cut after `limit` (MySQL/Postgres stores cap it at 5000 chars)."""
    shown = ", ".join(tickers[:limit])
    return shown if len(tickers) <= limit else f"{shown}, … ({len(tickers)} in all)"


def describe_version(
    metrics: dict[str, float], decision: Decision, summary: dict[str, object]
) -> str:
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
    """Gate the new model against the champion, then log and register it (aliases untouched).

    The champion is re-scored on this run's test windows before anything is
    written, so a failing re-score registers nothing.
    """
    metrics = evaluation.metrics
    check_metrics(metrics, intervals=forecaster.intervals is not None)
    client = configure_mlflow(config.mlflow_uri)
    current = alias_version(client, CHAMPION)
    champion = None
    if current is not None:  # a champion that cannot be loaded fails the run, not the gate
        loaded = load_forecaster(f"models:/{MODEL_NAME}/{current}")
        champion = (current, rescore_champion(current, loaded, dataset.test, dataset.columns))
    decision = decide_promotion(metrics, champion, config.promotion)
    model_uri = log_forecaster(forecaster, run_id, example)
    tags = {
        "promotion": decision.tag,
        "promotion_reason": decision.reason,
        "run_id": run_id,
        **{k: f"{metrics[k]:.6g}" for k in GATED_METRICS},
    }
    version = str(mlflow.register_model(model_uri, MODEL_NAME, tags=tags).version)
    summary = {**dataset.summary(), "tickers": list_tickers(dataset.tickers)}
    client.update_model_version(
        MODEL_NAME, version, description=describe_version(metrics, decision, summary)
    )
    predicting = version if decision.promote or current is None else current
    return RegisteredVersion(version, decision, predicting, current, run_id)


def apply_promotion(tracking_uri: str, registered: RegisteredVersion) -> list[AliasMove]:
    """Move `challenger` to the new version, and `champion` when the gate promoted it."""
    client = configure_mlflow(tracking_uri)
    by = f"nightly run {registered.run_id}"
    moves = [move_alias(client, CHALLENGER, registered.version, by, "newly trained version")]
    if registered.decision.promote:
        moves.append(
            move_alias(client, CHAMPION, registered.version, by, registered.decision.reason)
        )
    return moves


@task(name="register-model", cache_policy=NO_CACHE)
def register_model(
    config: PipelineConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Register the new version and decide its promotion (aliases move at the end of the run)."""
    registered = register_forecaster(config, run_id, forecaster, evaluation, dataset, example)
    get_run_logger().info(
        "registered %s v%s: %s (%s)",
        MODEL_NAME,
        registered.version,
        registered.decision.tag,
        registered.decision.reason,
    )
    return registered


@task(name="promote-model", cache_policy=NO_CACHE)
def promote_model(tracking_uri: str, registered: RegisteredVersion) -> None:
    """Move the aliases as the gate decided, recording each move."""
    for move in apply_promotion(tracking_uri, registered):
        get_run_logger().info(
            "%s: v%s -> v%s", move.alias, move.previous or "-", move.version or "-"
        )


def predict_with_version(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Load registry version `version` as a pyfunc and predict from raw OHLCV rows.

    Only the columns its signature lists are passed, so MLflow has no unused
    column to warn about. Returns one row per ticker: ticker, predicted_close,
    status, message (a version logged before statuses existed returns the
    first two only).
    """
    configure_mlflow(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    listed = set(model.metadata.get_input_schema().input_names())
    return model.predict(frame.loc[:, [c for c in frame.columns if c in listed]])


@task(name="predict-next", cache_policy=NO_CACHE)
def predict_next(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes from the registered version that predicts, with a status per ticker."""
    if frame.empty:
        return prediction_table({}, {})
    return predict_with_version(tracking_uri, version, frame)
