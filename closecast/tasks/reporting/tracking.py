"""Run logging: what a pipeline run leaves in MLflow (metrics, curves, data, tables, plots),
and the name and description it gets once its version is registered."""

import hashlib
import io
import json
import time
import warnings
from dataclasses import replace
from datetime import date
from pathlib import Path

import pandas as pd
from mlflow import MlflowClient
from mlflow.data.dataset import Dataset as MlflowDataset
from mlflow.data.pandas_dataset import from_pandas
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag, Metric
from mlflow.models import infer_signature
from mlflow.types import ColSpec, Schema
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT, MLFLOW_RUN_NOTE

from closecast.core.config import DataConfig
from closecast.core.formatting import metric, percent, signed
from closecast.core.statuses import OK
from closecast.tasks.data.store import LoadedPrices
from closecast.tasks.data.validate import ValidatedPrices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.mlflow.runs import MAX_PARAM_LENGTH, log_bytes, log_metrics, set_tags
from closecast.tasks.modeling.evaluation import Evaluation
from closecast.tasks.modeling.training import TrainedModel
from closecast.tasks.modeling.windows import Dataset
from closecast.tasks.registry.gate import Decision
from closecast.tasks.reporting.plots import (
    LOSS_CURVES_PLOT,
    TOMORROW_PLOT,
    fan_chart_rule,
    plot_loss_curves,
    plot_name,
    plot_predictions,
    plot_tickers,
    plot_tomorrow,
)
from closecast.tasks.reporting.summary import MlflowLinks, RunCharts

CHART_DPI = 80  # tomorrow's chart: sharp in both UIs, small enough to sit inside an artifact
FAN_PREFIX = "plots/predicted_vs_actual_"
FAN_RULE_TAG = "fan_charts"  # run tag: which tickers got a fan chart, in words
NOTE_TICKERS = 10  # tickers a run's description names before "…"
SCHEMA_SAMPLE_ROWS = 100  # rows a table's column types are read from (each column has one dtype)


def log_table(client: MlflowClient, run_id: str, table: pd.DataFrame, name: str) -> None:
    """A DataFrame as an MLflow table artifact (shown in the UI's artifact view)."""
    client.log_table(run_id, data=table, artifact_file=f"{name}.json")


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


def table_schema(table: pd.DataFrame) -> Schema:
    """The MLflow schema of `table`: the one MLflow infers, without its loop over every value.

    MLflow reads each value of each column in Python to tell its type and
    whether any is missing: seconds for a universe's prices. Here the types
    come from the first rows (a column has one dtype) and "required" from
    one vectorised pass over every row.
    """
    sampled = infer_signature(table.head(SCHEMA_SAMPLE_ROWS)).inputs
    complete = table.notna().all()
    return Schema(
        [
            ColSpec(spec.type, spec.name, required=bool(complete[spec.name]))
            for spec in sampled.inputs
        ]
    )


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
    entity = DatasetEntity(
        **MlflowDataset.to_dict(dataset),  # name, digest, source: what every dataset carries
        schema=json.dumps({"mlflow_colspec": table_schema(table).to_dict()}),
        profile=json.dumps({"num_rows": len(table), "num_elements": int(table.size)}),
    )
    context = InputTag(key=MLFLOW_DATASET_CONTEXT, value="training")
    client.log_inputs(run_id, datasets=[DatasetInput(dataset=entity, tags=[context])])
    return dataset.digest


def run_title(kind: str, as_of: date, version: str, decision_tag: str) -> str:
    """`nightly 2018-12-31 · v4 rejected`: the run's name once its version is registered."""
    return f"{kind} {as_of.isoformat()} · v{version} {decision_tag}"


def run_note(
    kind: str,
    as_of: date,
    tickers: list[str],
    metrics: dict[str, float],
    version: str,
    decision: Decision,
) -> str:
    """The run's description: one paragraph of tickers, skills and the gate's decision.

    Errors are relative to the last close, as the metrics are; a metric the
    run lacks reads `n/a`.
    """
    shown = ", ".join(tickers[:NOTE_TICKERS]) + (", …" if len(tickers) > NOTE_TICKERS else "")
    return (
        f"{kind.capitalize()} run for as_of {as_of.isoformat()} on {len(tickers)} tickers "
        f"({shown}). On its test span the model's skill against the naive forecast is "
        f"{signed(metric(metrics, 'skill'))} (test_rmse {percent(metric(metrics, 'test_rmse'), 4)} vs "
        f"naive_rmse {percent(metric(metrics, 'naive_rmse'), 4)} of the last close) and its "
        f"interval_skill_95 against EWMA intervals is {signed(metric(metrics, 'interval_skill_95'))}. "
        f"Registered as v{version}: {decision.tag} — {decision.reason.rstrip('.')}."
    )


def run_tags(
    data: DataConfig, prices: LoadedPrices, dataset: Dataset, flow_run_id: str
) -> dict[str, str]:
    """The tags every pipeline run carries; `flow_run_id` links the run to Prefect ('' if none)."""
    return {
        "as_of": prices.as_of.isoformat(),
        "target_date": prices.target_date.isoformat(),
        "tickers": ",".join(data.tickers)[:MAX_PARAM_LENGTH],
        "source": data.source,
        "data_sha256": dataset.data_sha256,
        "flow_run_id": flow_run_id,
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
        # What training used: many windows scale the configured batch and rate (the params).
        "train_batch_size": float(trained.fit.batch_size),
        "train_learning_rate": trained.fit.learning_rate,
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


def log_run(
    tracking_uri: str,
    prices_dir: Path,
    run_id: str,
    trained: TrainedModel,
    evaluation: Evaluation,
    validated: ValidatedPrices,
) -> None:
    """Log metrics, loss curves, the training data, review tables and plots to the run.

    The plots: each plotted ticker's fan chart over its errors against naive,
    and `plots/loss_curves.png`.
    """
    client = configure_mlflow(tracking_uri)
    log_metrics(client, run_id, run_metrics(evaluation, trained, validated))
    # The rule that picked the fan charts, for the model card (which may not import plots).
    set_tags(
        client, run_id, {"head": trained.forecaster.head_label, FAN_RULE_TAG: fan_chart_rule()}
    )
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
    log_training_data(client, run_id, validated.frames, str(prices_dir))
    for ticker in plot_tickers(evaluation.per_ticker):
        client.log_figure(
            run_id, plot_predictions(evaluation.predictions, ticker), plot_name(ticker)
        )
    if trained.fit.history:
        target = trained.forecaster.encoding.target
        curves_figure = plot_loss_curves(trained.fit.history, trained.fit.best_epoch, target)
        client.log_figure(run_id, curves_figure, LOSS_CURVES_PLOT)


def name_run(
    tracking_uri: str, run_id: str, kind: str, as_of: date, version: str, decision: Decision
) -> str:
    """Rename the run after the version it registered and describe it (`mlflow.note.content`);
    returns the name (`run_title`), which the flow run takes too.

    The description reads the run's own `tickers` tag and metrics.
    """
    client = configure_mlflow(tracking_uri)
    run = client.get_run(run_id)
    tickers = [t for t in run.data.tags.get("tickers", "").split(",") if t]
    note = run_note(kind, as_of, tickers, run.data.metrics, version, decision)
    title = run_title(kind, as_of, version, decision.tag)
    client.update_run(run_id, name=title)
    set_tags(client, run_id, {MLFLOW_RUN_NOTE: note})
    return title


def with_experiment(links: MlflowLinks) -> MlflowLinks:
    """`links` with the run's experiment, so that its pages are linked directly."""
    if links.experiment_id is not None or not links.run_id:
        return links
    run = configure_mlflow(links.tracking_uri).get_run(links.run_id)
    return replace(links, experiment_id=run.info.experiment_id)


def chart_tomorrow(tracking_uri: str, run_id: str, report: pd.DataFrame) -> RunCharts | None:
    """Draw tomorrow's chart; with a run, log it there as `plots/tomorrow.png` and list the
    run's fan charts. None when no ticker was predicted (nothing to draw)."""
    if not (report["status"] == OK).any():
        return None
    buffer = io.BytesIO()
    plot_tomorrow(report).savefig(buffer, format="png", dpi=CHART_DPI)
    png = buffer.getvalue()  # drawn once: the summary's chart and the run's artifact
    if not run_id:  # a reader's predict, which may not log a run
        return RunCharts(png)
    client = configure_mlflow(tracking_uri)
    log_bytes(client, run_id, png, TOMORROW_PLOT)
    plots = [item.path for item in client.list_artifacts(run_id, "plots")]
    fans = sorted(p for p in plots if p.startswith(FAN_PREFIX))
    return RunCharts(png, logged=True, fans=fans)
