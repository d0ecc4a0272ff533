"""MLflow tracking: one run per pipeline run, its params, tags, metrics, data and plots."""

import hashlib
import logging
import os
import re
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

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
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE
from prefect import task
from prefect.cache_policies import NO_CACHE
from requests.utils import get_environ_proxies

from core.config import PipelineConfig
from core.errors import PipelineError
from models.forecaster import INTERVAL_COLUMNS
from tasks.evaluation import LEVELS, Evaluation
from tasks.store import LoadedPrices
from tasks.training import TrainedModel
from tasks.validate import ValidatedPrices
from tasks.windows import Dataset

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000
PLOTTED_TICKERS = 6  # predicted-vs-actual PNGs per run: all tickers up to this many
PLOTTED_SESSIONS = 60  # the last test sessions a plot shows (about three months)
# A refused connection to the tracking server is tried again after each wait, then reported.
REFUSED_WAITS_S = (1.0, 2.0, 4.0)
CONNECT_TIMEOUT_S = 10.0
# Who runs a run: a RUNNING run whose process is gone was killed (see mark_killed_runs).
PID_TAG = "closecast.pid"
HOST_TAG = "closecast.host"
KILLED_TAG = "closecast.killed_reason"
_OPEN_RUNS: set[str] = set()  # runs open in this process


def configure_mlflow(tracking_uri: str) -> MlflowClient:
    """Point MLflow's tracking and registry at `tracking_uri` and return a client."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def unreachable(tracking_uri: str, exc: Exception, retries: int | None = None) -> PipelineError:
    """One line saying MLflow at `tracking_uri` cannot be reached, and why.

    `retries` defaults to MLflow's own MLFLOW_HTTP_REQUEST_MAX_RETRIES.
    """
    text = str(exc)
    cause = re.search(r"\[Errno -?\d+\] ([^'\"()]+)", text)
    if cause:
        why = cause.group(1).strip()
    elif "Max retries exceeded" in text or "timed out" in text.lower():
        why = "no answer"
    else:
        why = text.strip().splitlines()[0][:200] if text.strip() else type(exc).__name__
    after = ""
    if tracking_uri.startswith(("http:", "https:")):
        count = MLFLOW_HTTP_REQUEST_MAX_RETRIES.get() if retries is None else retries
        after = f" after {count} retries"
    return PipelineError(f"MLflow at {tracking_uri} cannot be reached{after}: {why}")


def refuse_fast(tracking_uri: str, waits_s: tuple[float, ...] = REFUSED_WAITS_S) -> None:
    """Fail within seconds when the port of the tracking server refuses connections.

    MLflow retries a refused connection like any other failure: 7 retries
    with exponential backoff, over four minutes. A refusal is the host's
    definite answer, so its port is tried directly, again after each of
    `waits_s` (a server restarting has those seconds), and then reported.
    A port that accepts, a connect that times out, a proxy in the way or a
    user's own MLFLOW_HTTP_REQUEST_MAX_RETRIES leave it to MLflow's retries.

    Raises:
        PipelineError: the port refused every try.
    """
    parts = urlsplit(tracking_uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    if MLFLOW_HTTP_REQUEST_MAX_RETRIES.is_set() or get_environ_proxies(tracking_uri):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    for wait_s in (*waits_s, None):
        try:
            with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
                return
        except ConnectionRefusedError as exc:
            refused = exc
        except OSError:  # no route, DNS, timeout: maybe transient, MLflow's retries decide
            return
        if wait_s is not None:
            time.sleep(wait_s)
    raise unreachable(tracking_uri, refused, retries=len(waits_s))


def connect_mlflow(tracking_uri: str) -> MlflowClient:
    """A client for `tracking_uri` that has answered once.

    A refused connection is reported within seconds (`refuse_fast`); a
    server that accepts but does not answer gets MLflow's own retries
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_TIMEOUT). Either
    way the failure is one PipelineError line, not a page of urllib3 errors.
    """
    refuse_fast(tracking_uri)
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
    compare runs) and as the exact `config.json` artifact, and the pid and
    host of its process, so a later run can tell it was killed.

    Raises:
        PipelineError: when MLflow cannot be reached (before anything is trained).
    """
    client = connect_mlflow(config.mlflow_uri)
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    owner = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    run = client.create_run(experiment_id, run_name=run_name, tags={**tags, **owner})
    run_id = run.info.run_id
    _OPEN_RUNS.add(run_id)
    try:
        mark_killed_runs(client, experiment_id, run_id)
        exact = config.model_dump(mode="json")
        client.log_batch(run_id, params=[Param(k, v) for k, v in flatten_params(exact).items()])
        client.log_dict(run_id, exact, "config.json")
        yield run_id
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    else:
        client.set_terminated(run_id, "FINISHED")
    finally:
        _OPEN_RUNS.discard(run_id)


def process_gone(pid: int) -> bool:
    """Whether no process `pid` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def mark_killed_runs(client: MlflowClient, experiment_id: str, by_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment whose process is gone; their ids.

    A run killed with `kill -9` (or a lost machine) never ends itself. A run
    is judged only by its own `closecast.pid`/`closecast.host` tags and only
    on the host that started it: a run whose process still exists (another
    run going on right now) or that runs elsewhere is left alone. The
    process's own pid counts as gone unless the run is open in this process:
    in a container every run may get the same pid.
    """
    host = socket.gethostname()
    killed = []
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        run_id, tags = run.info.run_id, run.data.tags
        pid = tags.get(PID_TAG, "")
        if run_id in _OPEN_RUNS or tags.get(HOST_TAG) != host or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not process_gone(int(pid)):
            continue
        reason = f"found RUNNING by run {by_run_id}: its process {pid} on {host} no longer exists"
        note = {} if MLFLOW_RUN_NOTE in tags else {MLFLOW_RUN_NOTE: reason}
        set_tags(client, run_id, {KILLED_TAG: reason, **note})
        client.set_terminated(run_id, "KILLED")
        logger.warning("marked MLflow run %s KILLED: %s", run_id, reason)
        killed.append(run_id)
    return killed


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
