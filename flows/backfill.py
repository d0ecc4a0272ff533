"""The backfill flow: the nightly steps once per XNYS session in [start, end], point-in-time.

Each session is its own flow run and MLflow run (experiment
`closecast-backfill`) and writes its own report. The model is retrained every
`retrain_every` sessions and predicts from memory in between; nothing is
registered unless `register_versions` is set. Sessions that already have a complete
report are skipped, so a backfill stopped halfway and started again does
only the rest.
"""

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated

import pandas as pd
from prefect import flow
from pydantic import Field

from core.config import BACKFILL_EXPERIMENT, MODEL_NAME, PipelineConfig
from core.statuses import merge_issues, ticker_label
from flows.fetch import fetch
from tasks.aliases import rollback_registration
from tasks.backfill import ModelInUse, plan_backfill
from tasks.evaluation import evaluate_model
from tasks.fanout import features_each, validate_each
from tasks.features import latest_rows
from tasks.inference import predict_in_memory
from tasks.mlflow_connection import tracking_run
from tasks.registry import promote_model, register_model
from tasks.report import ReportContext, build_report, publish_report
from tasks.scorecard import update_scorecard
from tasks.sources import FetchResult
from tasks.store import load_prices
from tasks.tracking import log_run, run_tags
from tasks.training import train_model
from tasks.validate import ValidatedPrices
from tasks.windows import Dataset, build_windows, window_columns


@dataclass(frozen=True)
class BackfillResult:
    """Reports written by this backfill, and sessions skipped as already reported."""

    reports: list[Path]
    skipped: list[date]


def _session_name() -> str:
    from prefect.runtime import flow_run

    return f"backfill-session as_of={flow_run.parameters['as_of']}"


def _backfill_name() -> str:
    from prefect.runtime import flow_run

    p = flow_run.parameters
    return f"backfill {ticker_label(p['config'].data.tickers)} {p['start']}..{p['end']}"


@flow(name="backfill", flow_run_name=_backfill_name)
def backfill(
    config: PipelineConfig,
    start: date,
    end: date,
    retrain_every: Annotated[int, Field(ge=1)] = 1,
    register_versions: bool = False,
) -> BackfillResult:
    """Run the nightly steps for every XNYS session in [start, end] not yet reported."""
    config = config.model_copy(
        update={
            "experiment": BACKFILL_EXPERIMENT,
            "data": config.data.model_copy(update={"as_of": end}),
        }
    )
    fetched = fetch(config.data, config.home)
    plan = plan_backfill(config.reports_dir, config.data.tickers, start, end, retrain_every)
    model, reports = None, []
    for session in plan.sessions:
        path, model = backfill_session(
            config,
            session.as_of,
            fetched.failures,
            None if session.retrain else model,
            register_versions,
        )
        reports.append(path)
    return BackfillResult(reports, plan.done)


@flow(name="backfill-session", flow_run_name=_session_name)
def backfill_session(
    config: PipelineConfig,
    as_of: date,
    fetch_failures: dict[str, str],
    model: ModelInUse | None,
    register_versions: bool,
) -> tuple[Path, ModelInUse]:
    """One point-in-time session: train when given no model, predict, report, score."""
    prices = load_prices(config.prices_dir, config.data.tickers, as_of)
    validated = validate_each(prices.frames)
    features = features_each(validated.frames, window_columns(config.windows.features))
    dataset = build_windows(features, config.windows, prices.as_of)
    issues = merge_issues(
        FetchResult(failures=fetch_failures).issues(prices.frames),
        prices.issues,
        validated.issues,
        dataset.issues,
    )
    latest = latest_rows(validated.frames, dataset.latest.tickers.tolist(), dataset.window)
    tags = {**run_tags(config, prices, dataset), "retrained": str(model is None).lower()}
    with (
        tracking_run(config, f"backfill {prices.as_of}", tags) as run_id,
        rollback_registration(config.mlflow_uri, run_id),
    ):
        if model is None:
            model = train_session(config, run_id, dataset, validated, latest, register_versions)
        predictions = predict_in_memory(model.forecaster, latest)
        context = ReportContext(prices.as_of, prices.target_date, MODEL_NAME, model.version, run_id)
        report = build_report(
            config.data.tickers, context, validated.last_closes(), predictions, issues
        )
        live = update_scorecard(
            config.reports_dir, validated.frames, prices.as_of, config.mlflow_uri, run_id
        )
        path = publish_report(report, config.reports_dir, model.metrics, model.decision, live=live)
    return path, model


def train_session(
    config: PipelineConfig,
    run_id: str,
    dataset: Dataset,
    validated: ValidatedPrices,
    latest: pd.DataFrame,
    register_versions: bool,
) -> ModelInUse:
    """Train, evaluate and log to `run_id`; register (through the gate) only when asked."""
    trained = train_model(dataset, config.lstm, config.train)
    evaluation = evaluate_model(trained.forecaster, dataset.test)
    log_run(config, run_id, trained, evaluation, validated)
    if not register_versions:
        return ModelInUse(
            forecaster=trained.forecaster,
            version=f"run:{run_id}",
            metrics=evaluation.metrics,
            decision="not registered",
        )
    registered = register_model(config, run_id, trained.forecaster, evaluation, dataset, latest)
    promote_model(config.mlflow_uri, registered)
    return ModelInUse(
        forecaster=trained.forecaster,
        version=registered.version,
        metrics=evaluation.metrics,
        decision=registered.decision.tag,
    )
