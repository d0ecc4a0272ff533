"""The nightly flow: fetch → validate → features → windows → train → evaluate →
register/promote → predict → report."""

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prefect import flow

from core.config import MODEL_NAME, PipelineConfig
from core.statuses import merge_issues, ticker_label
from flows.fetch import fetch
from tasks.aliases import rollback_registration
from tasks.evaluation import evaluate_model
from tasks.fanout import features_each, validate_each
from tasks.features import latest_rows
from tasks.mlflow_connection import tracking_run
from tasks.registry import predict_next, promote_model, register_model
from tasks.report import ReportContext, build_report, publish_report, require_predictions
from tasks.scorecard import update_scorecard
from tasks.store import load_prices
from tasks.tracking import log_run, run_tags
from tasks.training import train_model
from tasks.windows import build_windows, window_columns


@dataclass(frozen=True)
class NightlyResult:
    """What a nightly run produced."""

    report_path: Path
    run_id: str
    version: str
    predicting_version: str
    promotion: str
    metrics: dict[str, float]


def run_name(kind: str) -> str:
    """`nightly AAPL +2 as_of=2024-05-01`: the flow, the tickers and the as_of, for the UI."""
    from prefect.runtime import flow_run

    config = flow_run.parameters["config"]
    return f"{kind} {ticker_label(config.data.tickers)} as_of={config.data.as_of or 'latest'}"


@flow(name="nightly", flow_run_name=lambda: run_name("nightly"))
def nightly(config: PipelineConfig) -> NightlyResult:
    """Retrain on everything up to as_of, gate the new version, predict the next session."""
    fetched = fetch(config.data, config.home)
    prices = load_prices(config.prices_dir, config.data.tickers, config.data.as_of)
    validated = validate_each(prices.frames)
    features = features_each(validated.frames, window_columns(config.windows.features))
    dataset = build_windows(features, config.windows, prices.as_of)
    issues = merge_issues(
        fetched.issues(prices.frames), prices.issues, validated.issues, dataset.issues
    )
    if not len(dataset.latest):  # nothing to predict: train nothing, register nothing
        context = ReportContext(prices.as_of, prices.target_date, MODEL_NAME, "", "")
        no_predictions = pd.DataFrame({"ticker": [], "predicted_close": []})
        require_predictions(
            build_report(
                config.data.tickers, context, validated.last_closes(), no_predictions, issues
            ),
            config.reports_dir,
        )
    tags = run_tags(config, prices, dataset)
    with (
        tracking_run(config, f"nightly {prices.as_of}", tags) as run_id,
        rollback_registration(config.mlflow_uri, run_id),
    ):
        trained = train_model(dataset, config.lstm, config.train)
        evaluation = evaluate_model(trained.forecaster, dataset.test)
        log_run(config, run_id, trained, evaluation, validated)
        latest = latest_rows(validated.frames, dataset.latest.tickers.tolist(), dataset.window)
        registered = register_model(config, run_id, trained.forecaster, evaluation, dataset, latest)
        predictions = predict_next(config.mlflow_uri, registered.predicting_version, latest)
        context = ReportContext(
            prices.as_of, prices.target_date, MODEL_NAME, registered.predicting_version, run_id
        )
        report = build_report(
            config.data.tickers, context, validated.last_closes(), predictions, issues
        )
        require_predictions(report, config.reports_dir)  # else the version is rolled back
        promote_model(config.mlflow_uri, registered)
        live = update_scorecard(
            config.reports_dir, validated.frames, prices.as_of, config.mlflow_uri, run_id
        )
        decision = f"{registered.decision.tag}: {registered.decision.reason}"
        path = publish_report(report, config.reports_dir, evaluation.metrics, decision, live=live)
    return NightlyResult(
        path,
        run_id,
        registered.version,
        registered.predicting_version,
        registered.decision.tag,
        evaluation.metrics,
    )
