"""The report: one row per requested ticker, written atomically, published to Prefect."""

import math
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from core.errors import PipelineError
from core.statuses import INVALID_DATA, OK, Issues
from models.forecaster import INTERVAL_COLUMNS
from tasks.evaluation import LEVELS
from tasks.scorecard import LIVE_SESSIONS
from tasks.store import write_atomic

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


def _number(metrics: dict[str, float] | None, key: str) -> float | None:
    """`metrics[key]` when it is there and finite, else None."""
    value = (metrics or {}).get(key)
    return float(value) if value is not None and math.isfinite(value) else None


def _pct(value: float | None, digits: int = 1, sign: bool = False) -> str:
    return "n/a" if value is None else f"{value * 100:{'+' if sign else ''}.{digits}f}%"


def _bp(value: float | None) -> str:
    return "n/a" if value is None else f"{value * 1e4:.0f} bp"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _pvalue(value: float | None) -> str:
    return "n/a" if value is None else "< 0.01" if value < 0.01 else f"{value:.2f}"


# Live coverage this far off nominal, and beyond chance, is flagged in the summary.
COVERAGE_TOLERANCE = 0.05


def _coverage_cell(observed: float | None, level: int, closes: float | None) -> str:
    """Observed coverage in %, flagged when off nominal beyond chance and the tolerance.

    Chance is two binomial standard errors over the scored closes; closes of one
    session move together, so the tolerance keeps one market-wide day from
    flagging a month of otherwise honest intervals.
    """
    text = _pct(observed)
    if observed is None or not closes:
        return text
    nominal = level / 100
    allowed = max(COVERAGE_TOLERANCE, 2 * math.sqrt(nominal * (1 - nominal) / closes))
    if observed < nominal - allowed:
        return f"{text} ⚠ too narrow"
    if observed > nominal + allowed:
        return f"{text} ⚠ too wide"
    return text


def _test_span_lines(metrics: dict[str, float]) -> list[str]:
    """Point forecast against naive, direction, and the 95% interval score against EWMA."""

    def m(key: str) -> float | None:
        return _number(metrics, key)

    lines = [
        f"- point forecast: RMSE {_pct(m('test_rmse'), 2)} of the last close vs naive "
        f"{_pct(m('naive_rmse'), 2)}, skill {_pct(m('skill'), 2, sign=True)} "
        f"(p = {_pvalue(m('skill_pvalue'))}, Diebold–Mariano against naive)"
    ]
    low, high = m("test_directional_accuracy_low"), m("test_directional_accuracy_high")
    if m("test_directional_accuracy") is not None:
        ci = "" if low is None else f" (95% CI {low * 100:.1f}–{_pct(high)})"
        lines.append(f"- direction right: {_pct(m('test_directional_accuracy'))}{ci}")
    if m("coverage_80") is None and m("coverage_95") is None:
        return [*lines, "- intervals: the model gives no intervals"]
    return [
        *lines,
        f"- 95% interval score {_bp(m('interval_score_95'))} of the last close vs EWMA "
        f"{_bp(m('baseline_interval_score_95'))}, interval skill "
        f"{_pct(m('interval_skill_95'), sign=True)} (a lower score is better)",
    ]


def _coverage_lines(metrics: dict[str, float], live: dict[str, float] | None) -> list[str]:
    """Coverage at 80% and 95%: nominal, on the test span, and live when scored."""
    suffix = f"{LIVE_SESSIONS}d"
    tested = [_number(metrics, f"coverage_{level}") for level in LEVELS]
    realised = [_number(live, f"live_coverage_{level}_{suffix}") for level in LEVELS]
    if all(c is None for c in tested + realised):
        return []
    lines = [
        "",
        "## Coverage: share of closes inside the interval",
        "",
        "| | 80% interval | 95% interval |",
        "|---|---|---|",
        "| nominal | 80% | 95% |",
    ]
    if any(c is not None for c in tested):
        lines.append(f"| test span | {_pct(tested[0])} | {_pct(tested[1])} |")
    if any(c is not None for c in realised):
        sessions = int(_number(live, f"live_sessions_{suffix}") or LIVE_SESSIONS)
        closes = _number(live, f"live_interval_rows_{suffix}")
        cells = [
            _coverage_cell(c, level, closes) for c, level in zip(realised, LEVELS, strict=True)
        ]
        span = f"live, last {_count(sessions, 'session')}"
        if closes:
            span += f" ({_count(int(closes), 'close')})"
        lines.append(f"| {span} | {cells[0]} | {cells[1]} |")
    return lines


def _live_lines(live: dict[str, float] | None) -> list[str]:
    """Realised RMSE of the scored predictions against naive's, when there are any."""
    suffix = f"{LIVE_SESSIONS}d"
    rmse = _number(live, f"live_rmse_{suffix}")
    if rmse is None:
        return []
    sessions = int(_number(live, f"live_sessions_{suffix}") or LIVE_SESSIONS)
    naive = _number(live, f"live_naive_rmse_{suffix}")
    return [
        "",
        f"## Live, last {_count(sessions, 'scored session')}",
        "",
        f"- RMSE {_pct(rmse, 2)} vs naive {_pct(naive, 2)} of the last close",
    ]


def summary_markdown(
    report: pd.DataFrame,
    metrics: dict[str, float],
    decision: str,
    live: dict[str, float] | None = None,
) -> str:
    """The run summary a person who did not run the flow reads in the Prefect UI.

    Args:
        report: the report's rows.
        metrics: the test-span metrics of the model that predicted (MLflow names).
        decision: the promotion decision, as the flow words it.
        live: the scorecard's live metrics (`live_rmse_20d`, `live_coverage_80_20d`,
            ...), or None when the flow scored nothing before publishing.
    """
    not_ok = report[report["status"] != OK]
    lines = [
        f"# closecast {report['as_of'].iloc[0]} → {report['target_date'].iloc[0]}",
        "",
        f"- model: **{report['model_name'].iloc[0]} v{report['model_version'].iloc[0]}**, "
        f"predicted {len(report) - len(not_ok)} of {len(report)} tickers",
        f"- promotion: **{decision}**",
        "",
        "## Test span",
        "",
        *_test_span_lines(metrics),
        *_live_lines(live),
        *_coverage_lines(metrics, live),
    ]
    if len(not_ok):
        lines += ["", "## Not predicted", "", "| ticker | status | message |", "|---|---|---|"]
        for r in not_ok.itertuples():
            message = str(r.message).replace("|", "\\|")  # a pipe would end the cell
            lines.append(f"| {r.ticker} | {r.status} | {message} |")
    return "\n".join(lines)


@task(name="publish-report", cache_policy=NO_CACHE)
def publish_report(
    report: pd.DataFrame,
    reports_dir: Path,
    metrics: dict[str, float],
    decision: str,
    live: dict[str, float] | None = None,
) -> Path:
    """Write the CSV and publish it as a Prefect table artifact with a markdown summary.

    `live` (the scorecard's live metrics, when the flow scored before publishing)
    adds last month's realised RMSE and coverage to the summary.
    """
    as_of = date.fromisoformat(report["as_of"].iloc[0])
    path = write_report(report, reports_dir, as_of)
    table = report.astype(object).where(report.notna(), None).to_dict(orient="records")
    create_table_artifact(table=table, key="predictions", description=f"Predictions from {as_of}")
    create_markdown_artifact(
        markdown=summary_markdown(report, metrics, decision, live), key="nightly-summary"
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


def is_complete_report(path: Path, tickers: list[str], as_of: date) -> bool:
    """True when `path` is a readable report for `as_of` with one row per ticker.

    Reports are written atomically, so a file that exists is whole; this also
    refuses one written for another ticker list or with other columns.
    """
    if not path.is_file():
        return False
    try:
        report = pd.read_csv(path, usecols=lambda c: c in {"as_of", "ticker"}, dtype=str)
        header = pd.read_csv(path, nrows=0).columns.tolist()
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError):
        return False
    return (
        header in (REPORT_COLUMNS, POINT_ONLY_COLUMNS)
        and set(report["as_of"]) == {as_of.isoformat()}
        and sorted(report["ticker"]) == sorted(tickers)
    )
