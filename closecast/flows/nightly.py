"""The nightly flow: fetch → validate → features → windows → train → evaluate →
register/promote → predict → report."""

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from closecast.core.config import MODEL_NAME, PipelineConfig
from closecast.flows.deployment import served_config
from closecast.flows.fetch import fetch
from closecast.flows.naming import rename_flow_run, run_name, schedule_slot, slot_as_of
from closecast.flows.steps import prepare_session, require_windows, session_report, session_run
from closecast.tasks.modeling.steps import evaluate_model, predict_next, train_model
from closecast.tasks.registry.steps import load_version, promote_model, register_model
from closecast.tasks.reporting.events import announce_waiting, emit_report_health
from closecast.tasks.reporting.report import require_predictions
from closecast.tasks.reporting.steps import log_run, name_run, publish_report, update_scorecard
from closecast.tasks.reporting.summary import MlflowLinks


@dataclass(frozen=True)
class NightlyResult:
    """What a nightly run produced."""

    report_path: Path
    run_id: str
    version: str
    predicting_version: str
    promotion: str
    metrics: dict[str, float]
    head: str  # the trained version's interval head: lstm, har or point
    model: str = MODEL_NAME  # the registered model `version` is a version of
    predicting_model: str = MODEL_NAME  # and `predicting_version`'s


@flow(name="nightly", flow_run_name=lambda: run_name("nightly"))
def nightly(config: PipelineConfig) -> NightlyResult:
    """Retrain on everything up to as_of, gate the new version, predict the next session.

    A scheduled run with no as_of computes the session of its slot, however late it starts.

    Args:
        config: the pipeline's settings (home, data, model); e.g. set data.as_of or data.tickers.
    """
    config = slot_as_of(served_config(config), schedule_slot())  # a deployment run inherits
    inputs = prepare_session(config, config.data.as_of, fetch(config.data, config.home))
    require_windows(config, inputs)  # nothing to predict: train nothing, register nothing
    uri, data, as_of = config.mlflow_uri, inputs.dataset, inputs.prices.as_of
    with session_run(config, "nightly", inputs) as run:  # a failed step rolls back the version
        trained = train_model(data, config.lstm, config.train)
        evaluation = evaluate_model(trained.forecaster, data.test)
        log_run(uri, config.prices_dir, run, trained, evaluation, inputs.validated)
        new = register_model(
            config.registry, run, trained.forecaster, evaluation, data, inputs.latest
        )
        served = load_version(uri, new.predicting_version, new.predicting_model)  # or champion
        predictions = predict_next(served, inputs.latest)
        report = session_report(
            config.data.tickers,
            inputs,
            predictions,
            new.predicting_version,
            run,
            new.predicting_model,
        )
        require_predictions(report, config.reports_dir)  # none: `new` is rolled back
        promote_model(uri, new)
        rename_flow_run(name_run(uri, run, "nightly", as_of, new.version, new.decision))
        live = update_scorecard(config.reports_dir, inputs.validated.frames, as_of, uri, run)
        links, champion = MlflowLinks(uri, run, version=new.version), new.champion_comparison
        path = publish_report(
            report, config.reports_dir, evaluation.metrics, new.decision.line, live, champion, links
        )
    emit_report_health(report, path)  # too many tickers not ok: an alert, never a failure
    announce_waiting(new, uri)  # a recommended version only a person may promote: an alert
    return NightlyResult(
        path,
        run,
        new.version,
        new.predicting_version,
        new.decision.tag,
        evaluation.metrics,
        trained.forecaster.head_label,
        new.model,
        new.predicting_model,
    )
