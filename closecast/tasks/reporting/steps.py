"""The reporting stage's Prefect tasks: plan a backfill, score earlier reports, publish the
report, log and name the MLflow run.

Each task wraps the plain function of the same name in its stage module
(`backfill.plan_backfill`, `scorecard.update_scorecard`, `tracking.log_run`,
...) and adds what only Prefect does: log lines, time limits, and for
`publish_report` the table and markdown artifacts. The logic, and its
tests, live in those modules.
"""

from datetime import date
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from closecast.core.statuses import OK
from closecast.tasks.data.store import last_stored_date
from closecast.tasks.data.validate import ValidatedPrices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.mlflow.runs import log_metrics
from closecast.tasks.modeling.evaluation import Evaluation
from closecast.tasks.modeling.training import TrainedModel
from closecast.tasks.registry.gate import Decision
from closecast.tasks.reporting import backfill, scorecard, tracking
from closecast.tasks.reporting.backfill import BackfillPlan, waiting_message
from closecast.tasks.reporting.report import table_records, write_report
from closecast.tasks.reporting.scorecard import LIVE_SESSIONS, live_metrics
from closecast.tasks.reporting.summary import MlflowLinks, summary_description, summary_markdown


@task(name="plan-backfill", cache_policy=NO_CACHE, task_run_name="plan-backfill {start}..{end}")
def plan_backfill(
    reports_dir: Path,
    prices_dir: Path,
    tickers: list[str],
    start: date,
    end: date,
    retrain_every: int,
) -> BackfillPlan:
    """Plan the backfill; sessions already reported, or with no data yet, are not run."""
    last_stored = last_stored_date(prices_dir, tickers)
    plan = backfill.plan_backfill(reports_dir, tickers, start, end, retrain_every, last_stored)
    logger = get_run_logger()
    logger.info(
        "%d sessions to run (%d retrain), %d already reported",
        len(plan.sessions),
        sum(s.retrain for s in plan.sessions),
        len(plan.done),
    )
    if plan.waiting:
        logger.warning(waiting_message(plan))
    return plan


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(
    report: pd.DataFrame,
    reports_dir: Path,
    metrics: dict[str, float],
    decision: str,
    live: dict[str, float] | None = None,
    champion: tuple[str, dict[str, float]] | None = None,
    links: MlflowLinks | None = None,
) -> Path:
    """Write the CSV and publish it as a Prefect table artifact with a markdown summary;
    draw tomorrow's chart into the summary and, with `links`, log it to the MLflow run.

    Args:
        report: the report's rows.
        reports_dir: where the CSV goes.
        metrics: the test metrics of the model this run trained or carried.
        decision: the promotion decision and its reason ("tag: reason").
        live: the scorecard's live metrics, when the flow scored before publishing;
            adds last month's realised RMSE and coverage to the summary.
        champion: (version, its metrics re-scored on the same test windows), shown
            beside `metrics` in the summary.
        links: the run and its version in MLflow, linked from the summary; the run gets
            tomorrow's chart (`plots/tomorrow.png`).
    """
    as_of = date.fromisoformat(report["as_of"].iloc[0])
    path = write_report(report, reports_dir, as_of)
    uri, run_id = (links.tracking_uri, links.run_id) if links is not None else ("", "")
    charts = tracking.chart_tomorrow(uri, run_id, report)
    links = tracking.with_experiment(links) if links is not None else None
    create_table_artifact(
        table=table_records(report),
        key="predictions",
        description=f"Predictions from {as_of} for {report['target_date'].iloc[0]}: "
        "closes to the cent, predicted_return_bp in basis points",
    )
    create_markdown_artifact(
        markdown=summary_markdown(report, metrics, decision, live, champion, links, charts),
        key="nightly-summary",
        description=summary_description(report, decision, links.version if links else None),
    )
    not_ok = report[report["status"] != OK]
    if len(not_ok):
        get_run_logger().warning(
            "%d ticker(s) not ok: %s",
            len(not_ok),
            ", ".join(f"{r.ticker} ({r.status})" for r in not_ok.itertuples()),
        )
    get_run_logger().info("report written to %s", path)
    return path


@task(name="update-scorecard", cache_policy=NO_CACHE, timeout_seconds=600)
def update_scorecard(
    reports_dir: Path,
    frames: dict[str, pd.DataFrame],
    as_of: date,
    tracking_uri: str,
    run_id: str,
) -> dict[str, float]:
    """Score earlier reports whose target_date has a close; log the rolling live metrics.

    Returns:
        The live metrics logged (`live_rmse_20d`, `live_coverage_80_20d`, ...),
        for the run summary; empty when nothing is scored yet.
    """
    table, added = scorecard.update_scorecard(reports_dir, frames, as_of)
    metrics = live_metrics(table, as_of)
    log = get_run_logger()
    if metrics:
        log_metrics(configure_mlflow(tracking_uri), run_id, metrics)
        suffix = f"{LIVE_SESSIONS}d"
        coverage = ""
        if f"live_coverage_80_{suffix}" in metrics:
            coverage = "; coverage 80% {:.1%}, 95% {:.1%} of {:d} closes".format(
                metrics[f"live_coverage_80_{suffix}"],
                metrics[f"live_coverage_95_{suffix}"],
                int(metrics[f"live_interval_rows_{suffix}"]),
            )
        log.info(
            "%d predictions newly scored; last %d sessions: live rmse %.5f vs naive %.5f%s",
            added,
            int(metrics[f"live_sessions_{suffix}"]),
            metrics[f"live_rmse_{suffix}"],
            metrics[f"live_naive_rmse_{suffix}"],
            coverage,
        )
    else:
        log.info("no earlier prediction has a close yet: nothing to score")
    return metrics


@task(name="log-run", cache_policy=NO_CACHE)
def log_run(
    tracking_uri: str,
    prices_dir: Path,
    run_id: str,
    trained: TrainedModel,
    evaluation: Evaluation,
    validated: ValidatedPrices,
) -> None:
    """Log metrics, loss curves, the training data, review tables and plots to the run."""
    tracking.log_run(tracking_uri, prices_dir, run_id, trained, evaluation, validated)


@task(name="name-run", cache_policy=NO_CACHE)
def name_run(
    tracking_uri: str, run_id: str, kind: str, as_of: date, version: str, decision: Decision
) -> str:
    """Rename the run after the version it registered and describe it; returns the name
    (`nightly 2018-12-19 · v5 champion`), for the flow run to take too."""
    return tracking.name_run(tracking_uri, run_id, kind, as_of, version, decision)
