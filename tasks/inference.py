"""Prediction without training: the champion from the registry, or a model held in memory."""

from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from core.config import MODEL_NAME
from core.errors import PipelineError
from core.statuses import INSUFFICIENT_HISTORY, OK, STALE_DATA, Issues
from models.forecaster import Forecaster, prediction_table
from tasks.features import latest_rows
from tasks.mlflow_auth import refused_request
from tasks.mlflow_connection import connect_mlflow
from tasks.registry import load_pyfunc

CHAMPION = "champion"
_VERSION_METRICS = ("test_rmse", "naive_rmse", "skill")


@dataclass(frozen=True)
class Champion:
    """The registry version behind alias `champion`, and the window it needs."""

    version: str
    window: int
    features: tuple[str, ...]
    run_id: str
    metrics: dict[str, float]  # the test metrics recorded on the version when it was registered


@dataclass
class LatestInputs:
    """The last `window` rows of every ticker that can be predicted, and why others cannot."""

    rows: pd.DataFrame
    issues: Issues


def require_champion(tracking_uri: str) -> ModelVersion:
    """The registry version behind alias `champion`.

    Raises:
        PipelineError: when MLflow cannot be reached or the registry has no `champion` alias.
    """
    client = connect_mlflow(tracking_uri)
    try:
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as exc:
        raise refused_request(tracking_uri, exc) or PipelineError(
            f"no {CHAMPION} version of {MODEL_NAME} in the registry at {tracking_uri}: "
            "run `closecast run` first (or `closecast promote VERSION`)"
        ) from None


def find_champion(tracking_uri: str) -> Champion:
    """The champion version and its input spec (see `require_champion`)."""
    version = require_champion(tracking_uri)
    model = load_pyfunc(f"models:/{MODEL_NAME}/{version.version}")
    forecaster: Forecaster = model.unwrap_python_model().forecaster
    return Champion(
        version=str(version.version),
        window=forecaster.window,
        features=forecaster.features,
        run_id=str(version.run_id or ""),
        metrics={k: float(v) for k, v in version.tags.items() if k in _VERSION_METRICS},
    )


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


@task(name="find-champion", cache_policy=NO_CACHE)
def load_champion(tracking_uri: str) -> Champion:
    """Look up the champion; a clear error when there is none."""
    champion = find_champion(tracking_uri)
    get_run_logger().info(
        "champion is %s v%s (window %d, features %s)",
        MODEL_NAME,
        champion.version,
        champion.window,
        ",".join(champion.features),
    )
    return champion


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


def trained_report_run(path: Path, tracking_uri: str) -> str:
    """The run behind the report at `path` when a predict must keep that report, else ''.

    A predict keeps a report that holds predictions from a run that trained (a
    nightly or a backfill): its model was trained and gated for that as_of. A
    report from a predict (its run tagged kind=predict, or written with no
    run at all), one with no prediction, or none at all may be replaced.
    """
    if not path.is_file():
        return ""
    try:
        report = pd.read_csv(path, usecols=["run_id", "status"], dtype=str, keep_default_na=False)
    except ValueError:  # parser and decoding errors too
        return ""  # not a report this pipeline wrote: nothing to keep
    runs = report.loc[(report["status"] == OK) & (report["run_id"] != ""), "run_id"].unique()
    if not len(runs):
        return ""
    run_id = str(runs[0])
    try:
        tags = connect_mlflow(tracking_uri).get_run(run_id).data.tags
    except MlflowException:
        return run_id  # a run that cannot be read: keep the report rather than guess
    return "" if tags.get("kind") == "predict" else run_id
