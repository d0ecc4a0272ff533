"""The predict flow: fetch → validate → latest windows → champion pyfunc → report (no training)."""

from dataclasses import dataclass
from pathlib import Path

from prefect import flow, get_run_logger

from closecast.core.config import PipelineConfig
from closecast.flows.deployment import served_config
from closecast.flows.fetch import fetch
from closecast.flows.naming import flow_run_id, name_flow_run, rename_flow_run, run_name
from closecast.flows.steps import prediction_inputs, session_report
from closecast.models.derived import extra_rows
from closecast.tasks.data.steps import load_prices
from closecast.tasks.mlflow.runs import tracking_run
from closecast.tasks.modeling.steps import predict_next
from closecast.tasks.registry.steps import find_champion, load_version
from closecast.tasks.reporting.report import report_path, require_predictions, trained_report_run
from closecast.tasks.reporting.steps import publish_report
from closecast.tasks.reporting.summary import MlflowLinks
from closecast.tasks.reporting.tracking import run_title


@dataclass(frozen=True)
class PredictResult:
    """What a predict run produced; `kept_run_id` names the training run whose report for
    the as_of was kept (nothing written), else ''."""

    report_path: Path
    run_id: str
    version: str
    kept_run_id: str = ""


@flow(name="predict", flow_run_name=lambda: run_name("predict"))
def predict(config: PipelineConfig) -> PredictResult:
    """Predict the session after as_of with the registry's champion; nothing is trained.

    A report for that as_of with predictions from a run that trained (nightly,
    backfill) is kept: nothing is predicted or written over it.

    Args:
        config: the pipeline's settings (home, data, model); e.g. set data.as_of or data.tickers.
    """
    config = served_config(config)  # a deployment run inherits what its config leaves out
    champion = find_champion(config.mlflow_uri)
    fetched = fetch(config.data, config.home)
    prices = load_prices(config.prices_dir, config.data.tickers, config.data.as_of)
    name_flow_run(prices.as_of)
    existing = report_path(config.reports_dir, prices.as_of)
    if kept := trained_report_run(existing, config.mlflow_uri):
        get_run_logger().warning("kept %s: written by run %s, which trained", existing, kept)
        rename_flow_run(f"predict {prices.as_of} · kept the report of run {kept[:8]}")
        return PredictResult(existing, "", champion.version, kept_run_id=kept)
    rows = champion.window + extra_rows(champion.features)  # the champion's `input_rows`
    inputs = prediction_inputs(prices, fetched, config.data.tickers, rows)
    tags = {"as_of": prices.as_of.isoformat(), "model_version": champion.version, "kind": "predict"}
    tags["flow_run_id"] = flow_run_id()  # the card's and the run's link to this flow run
    # A reader (READ on the experiment) predicts too: without a run when it may not log one.
    with tracking_run(config, f"predict {prices.as_of}", tags, required=False) as run_id:
        predictions = predict_next(load_version(config.mlflow_uri, champion.version), inputs.latest)
        report = session_report(config.data.tickers, inputs, predictions, champion.version, run_id)
        require_predictions(report, config.reports_dir)
        decision = f"champion v{champion.version}"
        links = MlflowLinks(config.mlflow_uri, run_id) if run_id else None
        path = publish_report(report, config.reports_dir, champion.metrics, decision, links=links)
    rename_flow_run(run_title("predict", prices.as_of, champion.version, "champion"))
    return PredictResult(path, run_id, champion.version)
