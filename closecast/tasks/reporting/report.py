"""The report: one row per requested ticker, written atomically, published to Prefect."""

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from mlflow.exceptions import MlflowException

from closecast.core.errors import PipelineError
from closecast.core.statuses import INVALID_DATA, OK, STALE_DATA, Issues
from closecast.models.forecaster import INTERVAL_COLUMNS
from closecast.tasks.data.store import write_atomic
from closecast.tasks.mlflow.connection import connect_mlflow

REPORT_COLUMNS = [
    "as_of",
    "target_date",
    "ticker",
    "last_close",
    "predicted_close",
    "predicted_return",
    *INTERVAL_COLUMNS,
    "model_name",
    "model_version",
    "run_id",
    "status",
    "message",
]


# The columns of reports written before the forecasts had intervals; they still count as done.
POINT_ONLY_COLUMNS = [c for c in REPORT_COLUMNS if c not in INTERVAL_COLUMNS]


@dataclass(frozen=True)
class ReportContext:
    """What every row of one report shares."""

    as_of: date
    target_date: date
    model_name: str
    model_version: str
    run_id: str


def build_report(
    tickers: list[str],
    context: ReportContext,
    last_close: dict[str, float],
    predictions: pd.DataFrame,
    issues: Issues,
) -> pd.DataFrame:
    """One row per requested ticker, sorted by ticker; a ticker with no prediction says why."""
    predicted = dict(zip(predictions["ticker"], predictions["predicted_close"], strict=True))
    by_ticker = predictions.set_index("ticker")
    intervals = [c for c in INTERVAL_COLUMNS if c in by_ticker.columns]
    # The model's own word on a ticker it could not predict (status and message columns).
    model_issues: Issues = {}
    if {"status", "message"} <= set(predictions.columns):
        model_issues = {
            str(r.ticker): (r.status, str(r.message))
            for r in predictions.itertuples()
            if r.status != OK
        }
    rows = []
    for ticker in sorted(tickers):
        status, message = issues.get(ticker) or model_issues.get(ticker) or (OK, "")
        close = last_close.get(ticker, float("nan"))
        if not (math.isfinite(close) and close > 0):
            close = float("nan")  # never print an invalid price, e.g. a -1.0 the source sent
        forecast = predicted.get(ticker, float("nan")) if status == OK else float("nan")
        if status == OK and not (math.isfinite(forecast) and forecast > 0 and close > 0):
            status, message = INVALID_DATA, "the model returned no usable prediction"
            forecast = float("nan")
        bounds = dict.fromkeys(INTERVAL_COLUMNS, float("nan"))
        if status == OK:  # a non-ok row leaves the interval columns empty
            bounds |= {c: float(by_ticker.at[ticker, c]) for c in intervals}
        rows.append(
            {
                "as_of": context.as_of.isoformat(),
                "target_date": context.target_date.isoformat(),
                "ticker": ticker,
                "last_close": close,
                "predicted_close": forecast,
                "predicted_return": forecast / close - 1.0,
                **bounds,
                "model_name": context.model_name,
                "model_version": context.model_version,
                "run_id": context.run_id,
                "status": status,
                "message": message,
            }
        )
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)


def report_path(reports_dir: Path, as_of: date) -> Path:
    return reports_dir / f"predictions_{as_of.isoformat()}.csv"


def write_report(report: pd.DataFrame, reports_dir: Path, as_of: date) -> Path:
    """Write the CSV atomically; a rerun for the same as_of replaces it."""
    path = report_path(reports_dir, as_of)
    write_atomic(path, lambda tmp: report.to_csv(tmp, index=False, float_format="%.6f"))
    return path


def require_predictions(report: pd.DataFrame, reports_dir: Path) -> None:
    """Fail the run when no ticker got a prediction, leaving the statuses for the reader.

    The report goes to its usual path only when none exists for that as_of, so
    an earlier good report is never replaced by one without a prediction.

    Raises:
        PipelineError: when no row of `report` is ok; names the statuses and the report.
    """
    if (report["status"] == OK).any():
        return
    as_of = date.fromisoformat(report["as_of"].iloc[0]) if len(report) else None
    counts = report["status"].value_counts().sort_index()
    first = report.iloc[0] if len(report) else None
    why = ", ".join(f"{n} {status}" for status, n in counts.items())
    if first is not None:
        why += f" (e.g. {first.ticker}: {first.message})"
    where = ""
    if as_of is not None:
        path = report_path(reports_dir, as_of)
        if path.exists():
            where = f"; {path} was left as it was"
        else:
            blank = report.assign(model_version="")  # nothing was registered or used
            where = f"; statuses in {write_report(blank, reports_dir, as_of)}"
    raise PipelineError(f"no ticker could be predicted: {why}{where}")


# The table artifact's columns: the report's, status and message before the
# identifiers so they show without scrolling, the return in basis points.
TABLE_COLUMNS = [
    "ticker",
    "status",
    "last_close",
    "predicted_close",
    "predicted_return_bp",
    *INTERVAL_COLUMNS,
    "message",
    "as_of",
    "target_date",
    "model_name",
    "model_version",
    "run_id",
]


def table_records(report: pd.DataFrame) -> list[dict[str, object]]:
    """The report as the table artifact shows it: closes to the cent, returns in bp.

    An empty cell is None (JSON null), never NaN.
    """
    table = report.assign(predicted_return_bp=report["predicted_return"] * 1e4)
    prices = ["last_close", "predicted_close", *INTERVAL_COLUMNS]
    table[prices] = table[prices].round(2)
    table["predicted_return_bp"] = table["predicted_return_bp"].round(1)
    table = table[TABLE_COLUMNS]
    records: list[dict[str, object]] = (
        table.astype(object).where(table.notna(), None).to_dict(orient="records")
    )
    return records


def is_complete_report(path: Path, tickers: list[str], as_of: date) -> bool:
    """True when `path` is a readable report for `as_of` with one row per ticker.

    Reports are written atomically, so a file that exists is whole; this also
    refuses one written for another ticker list, one that lacks a column every
    report has had (`POINT_ONLY_COLUMNS`: not a report), and one whose rows are
    all stale_data (written before the session's prices arrived). Columns are
    matched by name, as the contract asks of readers: a report from before the
    intervals, or one with a column added since, is as complete as today's,
    so adding a column never makes a backfill recompute the reports it wrote.
    """
    if not path.is_file():
        return False
    try:
        wanted = {"as_of", "ticker", "status"}
        report = pd.read_csv(path, usecols=lambda c: c in wanted, dtype=str)
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return False
    return (
        set(POINT_ONLY_COLUMNS) <= set(header)
        and set(report["as_of"]) == {as_of.isoformat()}
        and sorted(report["ticker"]) == sorted(tickers)
        and not (report["status"] == STALE_DATA).all()
    )


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
