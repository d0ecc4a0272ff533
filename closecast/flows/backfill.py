"""The backfill flow: the nightly steps once per XNYS session in [start, end], point-in-time.

Each session is its own flow run and MLflow run (experiment
`closecast-backfill`) and writes its own report. The model is retrained every
`retrain_every` sessions and predicts from memory in between; nothing is
registered unless `register_versions` is set. Sessions that already have a complete
report are skipped, so a backfill stopped halfway and started again does
only the rest. Sessions after the last stored date are not run (a rerun once
the data has arrived fills them); a range with none before it fails.
"""

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated

from prefect import flow
from pydantic import Field

from closecast.core.config import BACKFILL_EXPERIMENT, DateText, PipelineConfig
from closecast.core.statuses import ticker_label
from closecast.flows.deployment import served_config
from closecast.flows.fetch import fetch
from closecast.flows.naming import rename_flow_run
from closecast.flows.steps import model_in_use, prepare_session, session_report, session_run
from closecast.tasks.data.sources import FetchResult
from closecast.tasks.modeling.prediction import ModelInUse
from closecast.tasks.modeling.steps import evaluate_model, predict_next, train_model
from closecast.tasks.registry.steps import promote_model, register_model
from closecast.tasks.reporting.backfill import waiting_message
from closecast.tasks.reporting.events import emit_report_health
from closecast.tasks.reporting.steps import (
    log_run,
    name_run,
    plan_backfill,
    publish_report,
    update_scorecard,
)
from closecast.tasks.reporting.summary import MlflowLinks


@dataclass(frozen=True)
class BackfillResult:
    """Reports written by this backfill, sessions skipped as already reported, and sessions
    not run because the store has no data for them yet (`waiting` names them)."""

    reports: list[Path]
    skipped: list[date]
    waiting: list[date]
    waiting_message: str


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
    start: DateText,
    end: DateText,
    retrain_every: Annotated[int, Field(ge=1)] = 1,
    register_versions: bool = False,
) -> BackfillResult:
    """Run the nightly steps for every XNYS session in [start, end] not yet reported.

    Args:
        config: the pipeline's settings (home, data, model); e.g. set data.tickers (as_of: end).
        start: the first date of the range, YYYY-MM-DD, e.g. 2024-01-02.
        end: the last date of the range, YYYY-MM-DD, e.g. 2024-03-28; sessions without data wait.
        retrain_every: train a new model every N sessions, 1 or more; those between reuse it.
        register_versions: register each model it trains through the gate (default: none).
    """
    config = served_config(config)  # a deployment run inherits what its config leaves out
    config = config.model_copy(
        update={
            "experiment": BACKFILL_EXPERIMENT,
            "data": config.data.model_copy(update={"as_of": end}),
        }
    )
    fetched = fetch(config.data, config.home)
    plan = plan_backfill(
        config.reports_dir, config.prices_dir, config.data.tickers, start, end, retrain_every
    )
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
    return BackfillResult(reports, plan.done, plan.waiting, waiting_message(plan))


@flow(name="backfill-session", flow_run_name=_session_name)
def backfill_session(
    config: PipelineConfig,
    as_of: date,
    fetch_failures: dict[str, str],
    model: ModelInUse | None,
    register_versions: bool,
) -> tuple[Path, ModelInUse]:
    """One point-in-time session: train when given no model, predict, report, score."""
    inputs = prepare_session(config, as_of, FetchResult(failures=fetch_failures))
    uri, data, registered, retrained = config.mlflow_uri, inputs.dataset, None, model is None
    with session_run(config, "backfill", inputs, {"retrained": str(retrained).lower()}) as run:
        if model is None:  # this session retrains; the sessions until the next one reuse it
            trained = train_model(data, config.lstm, config.train)
            evaluation = evaluate_model(trained.forecaster, data.test)
            log_run(uri, config.prices_dir, run, trained, evaluation, inputs.validated)
            if register_versions:
                registered = register_model(
                    config.registry, run, trained.forecaster, evaluation, data, inputs.latest
                )
            model = model_in_use(trained, evaluation, run, registered)
        predictions = predict_next(model.forecaster, inputs.latest)  # in memory, point-in-time
        report = session_report(config.data.tickers, inputs, predictions, model.version, run)
        if registered is not None:
            promote_model(uri, registered)
            title = name_run(uri, run, "backfill", as_of, registered.version, registered.decision)
            rename_flow_run(title)
        live = update_scorecard(config.reports_dir, inputs.validated.frames, as_of, uri, run)
        champion = registered.champion_comparison if registered else None
        links = MlflowLinks(uri, run, version=registered.version if registered else None)
        path = publish_report(
            report, config.reports_dir, model.metrics, model.decision, live, champion, links
        )
    emit_report_health(report, path)  # too many tickers not ok: an alert, never a failure
    return path, model
