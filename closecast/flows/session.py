"""One session's steps, shared by the nightly and backfill flows.

`prepare_session` reads the store up to as_of and builds the windows;
`forecast_session` trains → evaluates → registers → predicts → reports, in
one MLflow run whose registration is rolled back when a step fails.
`slot_as_of` gives a scheduled run with no as_of the session of its slot.
"""

from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from uuid import UUID

import pandas as pd

from closecast.core.calendar import session_closed_by
from closecast.core.config import MODEL_NAME, PipelineConfig
from closecast.core.statuses import Issues, merge_issues, ticker_label
from closecast.tasks.data.sources import FetchResult
from closecast.tasks.data.store import LoadedPrices, load_prices
from closecast.tasks.data.validate import ValidatedPrices
from closecast.tasks.mlflow.connection import tracking_run
from closecast.tasks.modeling.evaluation import evaluate_model
from closecast.tasks.modeling.fanout import features_each, validate_each
from closecast.tasks.modeling.features import latest_rows
from closecast.tasks.modeling.prediction import predict_in_memory
from closecast.tasks.modeling.training import train_model
from closecast.tasks.modeling.windows import Dataset, build_windows, window_columns
from closecast.tasks.registry.aliases import rollback_registration
from closecast.tasks.registry.register import (
    RegisteredVersion,
    predict_next,
    promote_model,
    register_model,
)
from closecast.tasks.reporting.backfill import ModelInUse
from closecast.tasks.reporting.events import emit_report_health
from closecast.tasks.reporting.report import (
    ReportContext,
    build_report,
    publish_report,
    require_predictions,
)
from closecast.tasks.reporting.scorecard import update_scorecard
from closecast.tasks.reporting.summary import MlflowLinks
from closecast.tasks.reporting.tracking import log_run, name_run, run_tags


@dataclass(frozen=True)
class SessionInputs:
    """What a session reads: prices up to as_of, validated and windowed, and the issues found."""

    prices: LoadedPrices
    validated: ValidatedPrices
    dataset: Dataset
    latest: pd.DataFrame  # the last window of each predictable ticker, as the pyfunc takes it
    issues: Issues


@dataclass(frozen=True)
class SessionResult:
    """The report a session wrote, its MLflow run, and the model it trained or carried."""

    report_path: Path
    run_id: str
    model: ModelInUse
    predicting_version: str  # the version the report names
    registered: RegisteredVersion | None  # None when nothing was registered

    @property
    def promotion(self) -> str:
        """The gate's decision for the version this session registered, else ''."""
        return self.registered.decision.tag if self.registered else ""


LATEST = "as_of=latest"  # a flow run's name before its as_of is resolved


def run_name(kind: str) -> str:
    """`nightly AAPL +2 as_of=2024-05-01`: the flow, the tickers and the as_of, for the UI.

    A scheduled run is named for its slot's session from the start, so even one
    that fails before reading the store says which session it was for. Else,
    with no as_of given, the name says `as_of=latest` until `name_flow_run`
    puts in the session the run resolved.
    """
    from prefect.runtime import flow_run

    config = slot_as_of(flow_run.parameters["config"], schedule_slot())
    as_of = config.data.as_of
    return f"{kind} {ticker_label(config.data.tickers)} " + (f"as_of={as_of}" if as_of else LATEST)


def name_flow_run(as_of: date) -> None:
    """Put the resolved as_of into the current flow run's name in place of `as_of=latest`.

    A name without it (an as_of given, a backfill session) or no flow run is left alone.
    """
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    name = flow_run.name
    if not flow_run.id or not name or LATEST not in name:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(
            UUID(flow_run.id), name=name.replace(LATEST, f"as_of={as_of.isoformat()}")
        )


def schedule_slot() -> datetime | None:
    """The schedule slot of the current flow run when Prefect's scheduler created it, else None.

    A run started by hand (`closecast run`, `prefect deployment run`) is not
    auto-scheduled; a late scheduled run keeps its slot however late it starts.
    """
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not context.flow_run.auto_scheduled:
        return None
    slot: datetime = flow_run.scheduled_start_time
    return slot


def slot_as_of(config: PipelineConfig, slot: datetime | None) -> PipelineConfig:
    """The config a run computes: as_of as given; else the session the schedule slot belongs
    to (the last XNYS session closed by then); else none, which means the latest."""
    if config.data.as_of is not None or slot is None:
        return config
    as_of = session_closed_by(slot)
    return config.model_copy(update={"data": config.data.model_copy(update={"as_of": as_of})})


def prepare_session(
    config: PipelineConfig, as_of: date | None, fetched: FetchResult
) -> SessionInputs:
    """Load the store up to as_of, validate, build features and windows, gather the issues."""
    prices = load_prices(config.prices_dir, config.data.tickers, as_of)
    name_flow_run(prices.as_of)
    validated = validate_each(prices.frames)
    features = features_each(validated.frames, window_columns(config.windows.features))
    dataset = build_windows(features, config.windows, prices.as_of)
    issues = merge_issues(
        fetched.issues(prices.frames), prices.issues, validated.issues, dataset.issues
    )
    latest = latest_rows(validated.frames, dataset.latest.tickers.tolist(), dataset.window)
    return SessionInputs(prices, validated, dataset, latest, issues)


def session_report(
    config: PipelineConfig,
    inputs: SessionInputs,
    predictions: pd.DataFrame,
    version: str,
    run_id: str,
) -> pd.DataFrame:
    """The report's rows: one per requested ticker, a prediction or the reason there is none."""
    prices = inputs.prices
    context = ReportContext(prices.as_of, prices.target_date, MODEL_NAME, version, run_id)
    last_closes = inputs.validated.last_closes()
    return build_report(config.data.tickers, context, last_closes, predictions, inputs.issues)


def require_windows(config: PipelineConfig, inputs: SessionInputs) -> None:
    """Fail before anything is trained when no ticker has a window to predict from.

    Raises:
        PipelineError: naming the statuses; the report (when none exists yet) keeps them.
    """
    if len(inputs.dataset.latest):
        return
    no_predictions = pd.DataFrame({"ticker": [], "predicted_close": []})
    require_predictions(session_report(config, inputs, no_predictions, "", ""), config.reports_dir)


def train_session(
    config: PipelineConfig, run_id: str, inputs: SessionInputs, register: bool
) -> tuple[ModelInUse, RegisteredVersion | None]:
    """Train, evaluate and log to `run_id`; register (through the gate) only when asked."""
    trained = train_model(inputs.dataset, config.lstm, config.train)
    evaluation = evaluate_model(trained.forecaster, inputs.dataset.test)
    log_run(config, run_id, trained, evaluation, inputs.validated)
    if not register:
        unregistered = ModelInUse(
            forecaster=trained.forecaster,
            version=f"run:{run_id}",
            metrics=evaluation.metrics,
            decision="not registered",
        )
        return unregistered, None
    registered = register_model(
        config, run_id, trained.forecaster, evaluation, inputs.dataset, inputs.latest
    )
    model = ModelInUse(
        forecaster=trained.forecaster,
        version=registered.version,
        metrics=evaluation.metrics,
        decision=f"{registered.decision.tag}: {registered.decision.reason}",
    )
    return model, registered


def predict_session(
    config: PipelineConfig,
    inputs: SessionInputs,
    model: ModelInUse,
    registered: RegisteredVersion | None,
    from_registry: bool,
) -> tuple[str, pd.DataFrame]:
    """The version that predicts, and its predictions.

    From the registry, when this run registered a version: the version the
    gate leaves serving (the champion when the new one lost); otherwise the
    model in memory.
    """
    if from_registry and registered is not None:
        version = registered.predicting_version
        return version, predict_next(config.mlflow_uri, version, inputs.latest)
    return model.version, predict_in_memory(model.forecaster, inputs.latest)


def forecast_session(
    config: PipelineConfig,
    inputs: SessionInputs,
    kind: str,
    model: ModelInUse | None = None,
    *,
    register: bool,
    from_registry: bool = False,
    tags: dict[str, str] | None = None,
) -> SessionResult:
    """Train → evaluate → register → predict → report → score, in one MLflow run.

    When a step fails, the versions the run registered are deleted and the
    aliases put back.

    Args:
        kind: the flow, in the run's name (`nightly 2024-05-01`, renamed
            `nightly 2024-05-01 · v4 rejected` once a version is registered).
        model: a model an earlier session trained, held in memory (backfill); None trains one.
        register: register the model it trains through the gate; the aliases move
            once the report is built.
        from_registry: the nightly way: predict with the version the registry
            serves, and fail the run (its registration rolled back) when no
            ticker got a prediction. Else the model in memory predicts and the
            report says whatever came out.
        tags: run tags beside those every pipeline run carries.
    """
    run_name = f"{kind} {inputs.prices.as_of}"
    tags = run_tags(config, inputs.prices, inputs.dataset) | (tags or {})
    with (
        tracking_run(config, run_name, tags) as run_id,
        rollback_registration(config.mlflow_uri, run_id),
    ):
        registered = None
        if model is None:
            model, registered = train_session(config, run_id, inputs, register)
        version, predictions = predict_session(config, inputs, model, registered, from_registry)
        report = session_report(config, inputs, predictions, version, run_id)
        if from_registry:
            require_predictions(report, config.reports_dir)  # else the version is rolled back
        if registered is not None:
            promote_model(config.mlflow_uri, registered)
            as_of, decision = inputs.prices.as_of, registered.decision
            name_run(config.mlflow_uri, run_id, kind, as_of, registered.version, decision)
        live = update_scorecard(
            config.reports_dir,
            inputs.validated.frames,
            inputs.prices.as_of,
            config.mlflow_uri,
            run_id,
        )
        champion = None
        if registered is not None and registered.previous_champion and registered.champion_metrics:
            champion = (registered.previous_champion, registered.champion_metrics)
        links = MlflowLinks(
            config.mlflow_uri, run_id, version=registered.version if registered else None
        )
        path = publish_report(
            report,
            config.reports_dir,
            model.metrics,
            model.decision,
            live=live,
            champion=champion,
            links=links,
        )
    emit_report_health(report, path)  # > 20% of tickers not ok: an alert, never a failure
    return SessionResult(path, run_id, model, version, registered)
