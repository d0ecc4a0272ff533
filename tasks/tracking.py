"""MLflow tracking: one run per pipeline run, its params, tags, metrics, data and plots."""

import hashlib
import re
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import mlflow
import numpy as np
import pandas as pd
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure
from mlflow import MlflowClient
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_HTTP_REQUEST_MAX_RETRIES
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT
from prefect import task
from prefect.cache_policies import NO_CACHE

from closecast.config import PipelineConfig
from closecast.errors import PipelineError
from models.forecaster import INTERVAL_COLUMNS
from tasks.evaluation import LEVELS, Evaluation
from tasks.store import LoadedPrices
from tasks.training import TrainedModel
from tasks.validate import ValidatedPrices
from tasks.windows import Dataset

MAX_PARAM_LENGTH = 6000
PLOTTED_TICKERS = 6  # predicted-vs-actual PNGs per run: all tickers up to this many
PLOTTED_SESSIONS = 60  # the last test sessions a plot shows (about three months)


def configure_mlflow(tracking_uri: str) -> MlflowClient:
    """Point MLflow's tracking and registry at `tracking_uri` and return a client."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def unreachable(tracking_uri: str, exc: Exception) -> PipelineError:
    """One line saying MLflow at `tracking_uri` cannot be reached, and why."""
    text = str(exc)
    cause = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if cause:
        why = cause.group(1).strip()
    elif "Max retries exceeded" in text or "timed out" in text.lower():
        why = "no answer"
    else:
        why = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    retries = ""
    if tracking_uri.startswith(("http:", "https:")):
        retries = f" after {MLFLOW_HTTP_REQUEST_MAX_RETRIES.get()} retries"
    return PipelineError(f"MLflow at {tracking_uri} cannot be reached{retries}: {why}")


def connect_mlflow(tracking_uri: str) -> MlflowClient:
    """A client for `tracking_uri` that has answered once.

    MLflow retries each HTTP request (MLFLOW_HTTP_REQUEST_MAX_RETRIES,
    MLFLOW_HTTP_REQUEST_TIMEOUT); when it still gets no answer this raises
    one PipelineError line instead of a page of urllib3 errors.
    """
    client = configure_mlflow(tracking_uri)
    try:
        client.search_experiments(max_results=1)
    except (MlflowException, OSError) as exc:
        raise unreachable(tracking_uri, exc) from None
    return client


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
    """Artifacts under `<home>/mlartifacts` for a local SQLite store; None otherwise.

    With a tracking server (`http://...`) or a shared database the server's
    own default artifact root applies (with `--serve-artifacts` that is
    `mlflow-artifacts:/`, proxied by the server): a path on this machine
    would mean nothing to another client.
    """
    if config.mlflow_uri.startswith("sqlite:"):
        return config.artifacts_dir.absolute().as_uri()
    return None


@contextmanager
def tracking_run(config: PipelineConfig, run_name: str, tags: dict[str, str]) -> Iterator[str]:
    """Open an MLflow run for the block; FINISHED when it ends, FAILED if it raises.

    The run carries the full configuration twice: as dotted params (to
    compare runs) and as the exact `config.json` artifact.

    Raises:
        PipelineError: when MLflow cannot be reached (before anything is trained).
    """
    client = connect_mlflow(config.mlflow_uri)
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    run = client.create_run(experiment_id, run_name=run_name, tags=tags)
    run_id = run.info.run_id
    exact = config.model_dump(mode="json")
    client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(exact).items()])
    client.log_dict(run_id, exact, "config.json")
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


def prices_table(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Per-ticker price frames (date index) as one long table: ticker, date, columns..."""
    parts = [
        frame.rename_axis("date").reset_index().assign(ticker=ticker)
        for ticker, frame in sorted(frames.items())
    ]
    if not parts:
        return pd.DataFrame(columns=["ticker", "date"])
    table = pd.concat(parts, ignore_index=True)
    return table[["ticker", *[c for c in table.columns if c != "ticker"]]]


def table_digest(table: pd.DataFrame) -> str:
    """sha256 of every row and the column names, cut to MLflow's 36-character digest field."""
    digest = hashlib.sha256(",".join(map(str, table.columns)).encode())
    digest.update(pd.util.hash_pandas_object(table, index=False).to_numpy().tobytes())
    return digest.hexdigest()[:32]


def log_training_data(
    client: MlflowClient, run_id: str, frames: dict[str, pd.DataFrame], source: str
) -> str:
    """Log the validated prices the run trained on as a `training` dataset input.

    MLflow's own pandas digest hashes only the first 10,000 rows; this one
    covers every row. Returns the digest.
    """
    table = prices_table(frames)
    last = pd.Timestamp(table["date"].max()).date().isoformat() if len(table) else "none"
    with warnings.catch_warnings():  # MLflow registers its local source twice and says so
        warnings.filterwarnings("ignore", message="The specified dataset source can be")
        dataset = from_pandas(
            table,
            source=source,
            name=f"prices {len(frames)} tickers to {last}",
            digest=table_digest(table),
        )
    entity = DatasetEntity(**dataset.to_dict())
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])
    return dataset.digest


def plot_tickers(per_ticker: pd.DataFrame, limit: int = PLOTTED_TICKERS) -> list[str]:
    """Tickers worth a plot: all up to `limit`, else the worst and best by skill."""
    ranked = per_ticker.sort_values(["skill", "ticker"])["ticker"].astype(str).tolist()
    if len(ranked) <= limit:
        return sorted(ranked)
    return sorted(ranked[: limit // 2] + ranked[len(ranked) - (limit - limit // 2) :])


def _plot_title(ticker: str, rows: pd.DataFrame) -> str:
    """Coverage and RMSE over a ticker's whole test span, in the units of the run's metrics."""
    last = rows["last_close"]
    rmse = np.sqrt(np.mean(((rows["predicted_close"] - rows["actual_close"]) / last) ** 2))
    naive = np.sqrt(np.mean(((last - rows["actual_close"]) / last) ** 2))
    parts: list[str] = []
    for level in LEVELS:
        lower, upper = rows[f"lower_{level}"], rows[f"upper_{level}"]
        if lower.notna().all() and upper.notna().all():
            hit = rows["actual_close"].between(lower, upper)
            parts.append(f"{'coverage ' if not parts else ''}{level}% {hit.mean():.0%}")
    parts.append(f"RMSE {rmse:.2%} of close vs naive {naive:.2%}")
    return f"{ticker}: " + " · ".join(parts)


def plot_predictions(
    predictions: pd.DataFrame, ticker: str, sessions: int = PLOTTED_SESSIONS
) -> Figure:
    """A fan chart of one ticker's last test sessions: closes, forecast, 80% and 95% bands.

    The title's coverage and RMSE (relative to the last close, like `test_rmse`)
    cover the ticker's whole test span; the chart shows its last `sessions`
    windows, with the naive forecast dashed. A model without intervals (NaN
    bounds) gets the lines alone.
    """
    rows = predictions[predictions["ticker"] == ticker].sort_values("target_date")
    rows = rows.assign(**{c: np.nan for c in INTERVAL_COLUMNS if c not in rows.columns})
    shown = rows.tail(sessions)
    when = pd.to_datetime(shown["target_date"])
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.subplots()
    for level, alpha in ((95, 0.15), (80, 0.35)):  # the wider band lighter and underneath
        lower, upper = shown[f"lower_{level}"], shown[f"upper_{level}"]
        if lower.notna().any() and upper.notna().any():
            axes.fill_between(
                when,
                lower,
                upper,
                color="tab:blue",
                alpha=alpha,
                linewidth=0,
                label=f"{level}% interval",
            )
    axes.plot(when, shown["actual_close"], label="actual", color="black", marker=".", markersize=4)
    axes.plot(
        when, shown["predicted_close"], label="predicted", color="midnightblue", linewidth=1.2
    )
    axes.plot(
        when, shown["last_close"], label="naive", color="tab:gray", linestyle="--", linewidth=0.8
    )
    outside = ~shown["actual_close"].between(shown["lower_95"], shown["upper_95"])
    outside &= shown["lower_95"].notna() & shown["upper_95"].notna()
    if outside.any():
        axes.scatter(
            when[outside],
            shown.loc[outside, "actual_close"],
            color="tab:red",
            zorder=3,
            s=18,
            label="outside 95%",
        )
    axes.set_title(_plot_title(ticker, rows))
    if len(shown) < len(rows):
        axes.set_xlabel(f"target date (last {len(shown)} of {len(rows)} test sessions)")
    else:
        axes.set_xlabel("target date")
    axes.set_ylabel("close")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if len(shown) <= 8:  # a short span: one tick per session, not hours between them
        axes.set_xticks(when)
    axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    figure.autofmt_xdate()
    return figure


def plot_name(ticker: str) -> str:
    """Artifact path of a ticker's plot; characters outside [A-Za-z0-9._-] become `_`."""
    return f"plots/predicted_vs_actual_{re.sub(r'[^A-Za-z0-9._-]', '_', ticker)}.png"


@task(name="log-run", cache_policy=NO_CACHE)
def log_run(
    config: PipelineConfig,
    run_id: str,
    trained: TrainedModel,
    evaluation: Evaluation,
    validated: ValidatedPrices,
) -> None:
    """Log metrics, loss curves, the training data, review tables and plots to the run."""
    client = configure_mlflow(config.mlflow_uri)
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
    log_training_data(client, run_id, validated.frames, str(config.prices_dir))
    for ticker in plot_tickers(evaluation.per_ticker):
        client.log_figure(
            run_id, plot_predictions(evaluation.predictions, ticker), plot_name(ticker)
        )


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
        # The shrink factor applied to predicted moves (1: none; 0: the model adds nothing).
        "output_scale": trained.fit.output_scale,
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
