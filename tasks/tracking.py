"""MLflow tracking: one run per pipeline run, its params, tags, metrics and tables."""

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from prefect import task
from prefect.cache_policies import NO_CACHE

from closecast.config import PipelineConfig
from tasks.evaluation import Evaluation
from tasks.store import LoadedPrices
from tasks.training import TrainedModel
from tasks.validate import ValidatedPrices
from tasks.windows import Dataset

MAX_PARAM_LENGTH = 6000


def configure_mlflow(tracking_uri: str) -> MlflowClient:
    """Point MLflow's tracking and registry at `tracking_uri` and return a client."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def ensure_experiment(client: MlflowClient, name: str, artifact_location: str | None) -> str:
    """The id of experiment `name`, created (with its artifact location) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name, artifact_location=artifact_location))


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted MLflow params (`train.epochs`), lists joined by commas."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = ",".join(map(str, value))[:MAX_PARAM_LENGTH]
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def artifact_location(config: PipelineConfig) -> str | None:
    """Artifacts under `<home>/mlartifacts` for a local store; the server decides otherwise."""
    if config.mlflow_uri.startswith("sqlite:"):
        return config.artifacts_dir.absolute().as_uri()
    return None


@contextmanager
def tracking_run(config: PipelineConfig, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    """Open an MLflow run for the block; FINISHED when it ends, FAILED if it raises."""
    client = configure_mlflow(config.mlflow_uri)
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    params = flatten_params(config.model_dump(mode="json"))
    client.log_batch(run_id, params=[Param(k, v) for k, v in params.items()])
    try:
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    """Log a flat dict of metrics in one call."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def log_table(client: MlflowClient, run_id: str, table: pd.DataFrame, name: str) -> None:
    """A DataFrame as an MLflow table artifact (shown in the UI's artifact view)."""
    client.log_table(run_id, data=table, artifact_file=f"{name}.json")


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


@task(name="log-run", cache_policy=NO_CACHE)
def log_run(
    tracking_uri: str,
    run_id: str,
    trained: TrainedModel,
    evaluation: Evaluation,
    validated: ValidatedPrices,
) -> None:
    """Log metrics, loss curves (one step per epoch) and review tables to the run."""
    client = configure_mlflow(tracking_uri)
    log_metrics(client, run_id, run_metrics(evaluation, trained, validated))
    now = int(time.time() * 1000)
    curves = [
        Metric(name, float(h[name]), now, int(h["epoch"]))
        for h in trained.fit.history
        for name in ("train_loss", "val_loss")
    ]
    for start in range(0, len(curves), 1000):
        client.log_batch(run_id, metrics=curves[start : start + 1000])
    for name, table in run_tables(evaluation, validated, trained).items():
        if len(table):
            log_table(client, run_id, table, name)


def run_tags(config: PipelineConfig, prices: LoadedPrices, dataset: Dataset) -> dict[str, str]:
    """The tags every pipeline run carries."""
    from prefect.runtime import flow_run

    return {
        "as_of": prices.as_of.isoformat(),
        "target_date": prices.target_date.isoformat(),
        "tickers": ",".join(config.data.tickers)[:MAX_PARAM_LENGTH],
        "source": config.data.source,
        "data_sha256": dataset.data_sha256,
        "flow_run_id": str(flow_run.id or ""),
    }


def run_metrics(
    evaluation: Evaluation, trained: TrainedModel, validated: ValidatedPrices
) -> dict[str, float]:
    """Every run-level metric: evaluation, training, validation."""
    return {
        **evaluation.metrics,
        "best_val_loss": trained.fit.best_val_loss,
        "epochs_trained": float(trained.fit.epochs_trained),
        "train_seconds": trained.fit.train_seconds,
        "rows_dropped": float(validated.rows_dropped),
    }


def run_tables(
    evaluation: Evaluation, validated: ValidatedPrices, trained: TrainedModel
) -> dict[str, pd.DataFrame]:
    """The tables a reviewer opens: per-ticker metrics, dropped rows, loss curves."""
    return {
        "per_ticker_metrics": evaluation.per_ticker,
        "rows_dropped": validated.dropped,
        "loss_curves": pd.DataFrame(trained.fit.history),
    }
