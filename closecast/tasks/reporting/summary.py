"""The run summary: the markdown a person who did not run the flow reads in the Prefect UI."""

import base64
import math
from dataclasses import dataclass, field

import pandas as pd

from closecast.core.config import MODEL_NAME
from closecast.core.formatting import NA, basis_points, metric, percent, plural, pvalue
from closecast.core.statuses import OK
from closecast.tasks.modeling.evaluation import LEVELS
from closecast.tasks.reporting.plots import (
    PLOTTED_SESSIONS,
    TOMORROW_PLOT,
    TOMORROW_TICKERS,
    fan_chart_rule,
)
from closecast.tasks.reporting.scorecard import LIVE_SESSIONS

# Where `mlflow ui` serves when started without --port: the summary's links to a local store.
MLFLOW_UI = "http://127.0.0.1:5000"


def _close(value: float) -> str:
    """A close to the cent, or n/a."""
    return f"{value:,.2f}" if math.isfinite(value) else NA


def _difference_bp(mine: float | None, theirs: float | None) -> str:
    """Challenger minus champion in bp, with digits enough to tell a tie from a near tie."""
    if mine is None or theirs is None:
        return NA
    if mine == theirs:
        return "0 (tie)"
    diff = (mine - theirs) * 1e4
    return f"{diff:+.1f} bp" if abs(diff) >= 0.05 else f"{diff:+.2g} bp"


# The report's tickers in the summary: all of them up to MOVE_ROWS, else the
# MOVE_TAIL largest predicted rises and falls (the table artifact has every row).
MOVE_ROWS = 20
MOVE_TAIL = 5
# Non-ok tickers listed by name; the rest are counted.
NOT_OK_ROWS = 20


@dataclass(frozen=True)
class MlflowLinks:
    """Where this run, and the version it registered, live in MLflow.

    Attributes:
        tracking_uri: the tracking URI the run logged to.
        run_id: the run.
        version: the version the run registered; None when it registered none.
        experiment_id: the run's experiment; None links the UI's run page that finds it.
        model_name: the registered model.
    """

    tracking_uri: str
    run_id: str
    version: str | None = None
    experiment_id: str | None = None
    model_name: str = MODEL_NAME

    def run_path(self) -> str:
        if self.experiment_id is None:
            return f"#/runs/{self.run_id}"  # the UI redirects to the run's experiment
        return f"#/experiments/{self.experiment_id}/runs/{self.run_id}"

    def version_path(self, version: str) -> str:
        return f"#/models/{self.model_name}/versions/{version}"

    def artifact_path(self, path: str) -> str:
        """The run's artifact page of `path`, as the model card links its plots."""
        return f"{self.run_path()}/artifactPath/{path}"

    @property
    def served(self) -> bool:
        """Whether the tracking URI is a server, whose UI the links then point at."""
        return self.tracking_uri.startswith(("http://", "https://"))

    def url(self, path: str) -> str:
        """`path` on the tracking server's UI; for a local store on `mlflow ui`'s default."""
        base = self.tracking_uri.rstrip("/") if self.served else MLFLOW_UI
        return f"{base}/{path}"


@dataclass(frozen=True)
class RunCharts:
    """The charts of a run that the summary shows or lists.

    Attributes:
        tomorrow: tomorrow's chart as a PNG (`plots.plot_tomorrow`), shown inline.
        logged: whether the run holds it too, as `plots/tomorrow.png`.
        fans: the run's fan charts (artifact paths); none for a run that trained nothing.
    """

    tomorrow: bytes
    logged: bool = False
    fans: list[str] = field(default_factory=list)


def _links_line(links: MlflowLinks, predicting: str) -> str:
    """The run's and the versions' pages: links on a server; for a local store the `mlflow ui`
    command to start first, then links to the pages it serves."""
    versions = [v for v in dict.fromkeys([links.version or "", predicting]) if v.isdigit()]
    pages = [("run", links.run_path())] + [(f"v{v}", links.version_path(v)) for v in versions]
    shown = " · ".join(f"[{name}]({links.url(path)})" for name, path in pages)
    if links.served:
        return f"- MLflow: {shown}"
    return (
        f"- MLflow: start `mlflow ui --backend-store-uri {links.tracking_uri}` (it serves "
        f"{MLFLOW_UI}), then open {shown}"
    )


def _charts_lines(charts: RunCharts, links: MlflowLinks | None) -> list[str]:
    """Tomorrow's chart inline (a data: URI: an artifact holds no files), then where the run's
    charts are in MLflow and which tickers have a fan chart."""
    image = base64.b64encode(charts.tomorrow).decode()
    lines = [
        "",
        "## Tomorrow",
        "",
        "Each ticker's predicted move in % of its last close, with its 80% and 95% intervals; "
        f"beyond {TOMORROW_TICKERS} tickers the {TOMORROW_TICKERS // 2} largest rises and "
        "falls.",
        "",
        f"![predicted moves with their 80% and 95% intervals](data:image/png;base64,{image})",
    ]
    where = [""]
    if charts.logged and links is not None:
        # No code span in the link text: the Prefect UI would show its backticks.
        page = f"[{TOMORROW_PLOT}]({links.url(links.artifact_path(TOMORROW_PLOT))})"
        where.append(f"- this chart: {page} in the MLflow run")
    if charts.fans:
        where.append(
            f"- fan charts of the last {PLOTTED_SESSIONS} test sessions: "
            f"{plural(len(charts.fans), 'ticker')} in the MLflow run "
            f"(`plots/predicted_vs_actual_<ticker>.png`): {fan_chart_rule()}"
        )
    return lines + where if len(where) > 1 else lines


def _champion_lines(
    metrics: dict[str, float], champion: tuple[str, dict[str, float]], challenger: str
) -> list[str]:
    """The gated scores of both versions on the same test windows, side by side."""
    version, held = champion
    rows = [
        ("interval score (mean of 80% and 95%)", "test_interval_score"),
        ("test_rmse", "test_rmse"),
    ]
    lines = [
        "",
        f"## {challenger} vs champion v{version}, on the same test windows",
        "",
        "Scores relative to the last close; lower is better.",
        "",
        f"| | {challenger} | champion v{version} | difference |",
        "|---|---|---|---|",
    ]
    for label, key in rows:
        mine, theirs = metric(metrics, key), metric(held, key)
        lines.append(
            f"| {label} | {basis_points(mine, 1)} | {basis_points(theirs, 1)} | {_difference_bp(mine, theirs)} |"
        )
    return lines


def _interval(row: pd.Series, level: int) -> str:
    low, high = row[f"lower_{level}"], row[f"upper_{level}"]
    if not (math.isfinite(low) and math.isfinite(high)):
        return "n/a"
    close = row["last_close"]
    return f"{percent(low / close - 1, 2, sign=True)} to {percent(high / close - 1, 2, sign=True)}"


def _moves_lines(ok: pd.DataFrame) -> list[str]:
    """Each predicted ticker's move and intervals as % of its last close; a long list cut."""
    if not len(ok):
        return []
    ranked = ok.sort_values(["predicted_return", "ticker"], ascending=[False, True])
    levels = [
        level
        for level in LEVELS
        if f"lower_{level}" in ranked and ranked[f"lower_{level}"].notna().any()
    ]
    header = [
        "ticker",
        "last close",
        "predicted close",
        "move",
        *(f"{lv}% interval" for lv in levels),
    ]
    lines = ["", "## Predicted moves", ""]
    if len(ranked) > MOVE_ROWS:
        lines += [
            f"The {MOVE_TAIL} largest predicted rises and falls of {len(ranked)} tickers; "
            "the `predictions` table has them all.",
            "",
        ]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row_line(r: pd.Series) -> str:
        cells = [
            str(r["ticker"]),
            _close(r["last_close"]),
            _close(r["predicted_close"]),
            percent(r["predicted_return"], 2, sign=True),
            *(_interval(r, lv) for lv in levels),
        ]
        return "| " + " | ".join(cells) + " |"

    if len(ranked) <= MOVE_ROWS:
        return lines + [row_line(r) for _, r in ranked.iterrows()]
    hidden = len(ranked) - 2 * MOVE_TAIL
    return [
        *lines,
        *(row_line(r) for _, r in ranked.head(MOVE_TAIL).iterrows()),
        "| … | " + f"{hidden} more | " + "| " * (len(header) - 2),
        *(row_line(r) for _, r in ranked.tail(MOVE_TAIL).iterrows()),
    ]


def _not_ok_lines(not_ok: pd.DataFrame) -> list[str]:
    """The tickers without a prediction and why (pipes escaped); a long list cut."""
    if not len(not_ok):
        return []
    lines = ["", "## Not predicted", "", "| ticker | status | message |", "|---|---|---|"]
    for r in not_ok.head(NOT_OK_ROWS).itertuples():
        message = str(r.message).replace("|", "\\|")  # a pipe would end the cell
        lines.append(f"| {r.ticker} | {r.status} | {message} |")
    if len(not_ok) > NOT_OK_ROWS:
        counts = not_ok["status"].value_counts().sort_index()
        by_status = ", ".join(f"{n} {status}" for status, n in counts.items())
        lines += [
            "",
            f"{len(not_ok) - NOT_OK_ROWS} more not predicted ({len(not_ok)} in all: {by_status}); "
            "the `predictions` table has them all.",
        ]
    return lines


# Live coverage this far off nominal, and beyond chance, is flagged in the summary.
COVERAGE_TOLERANCE = 0.05


def _coverage_cell(observed: float | None, level: int, closes: float | None) -> str:
    """Observed coverage in %, flagged when off nominal beyond chance and the tolerance.

    Chance is two binomial standard errors over the scored closes; closes of one
    session move together, so the tolerance keeps one market-wide day from
    flagging a month of otherwise honest intervals.
    """
    text = percent(observed)
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
        return metric(metrics, key)

    lines = [
        f"- point forecast: RMSE {percent(m('test_rmse'), 2)} of the last close vs naive "
        f"{percent(m('naive_rmse'), 2)}, skill {percent(m('skill'), 2, sign=True)} "
        f"(p = {pvalue(m('skill_pvalue'))}, Diebold–Mariano against naive)"
    ]
    low, high = m("test_directional_accuracy_low"), m("test_directional_accuracy_high")
    if m("test_directional_accuracy") is not None:
        ci = "" if low is None else f" (95% CI {low * 100:.1f}–{percent(high)})"
        lines.append(f"- direction right: {percent(m('test_directional_accuracy'))}{ci}")
    if m("coverage_80") is None and m("coverage_95") is None:
        return [*lines, "- intervals: the model gives no intervals"]
    return [
        *lines,
        f"- 95% interval score {basis_points(m('interval_score_95'))} of the last close vs EWMA "
        f"{basis_points(m('baseline_interval_score_95'))}, interval skill "
        f"{percent(m('interval_skill_95'), sign=True)} (a lower score is better)",
    ]


def _coverage_lines(metrics: dict[str, float], live: dict[str, float] | None) -> list[str]:
    """Coverage at 80% and 95%: nominal, on the test span, and live when scored."""
    suffix = f"{LIVE_SESSIONS}d"
    tested = [metric(metrics, f"coverage_{level}") for level in LEVELS]
    realised = [metric(live, f"live_coverage_{level}_{suffix}") for level in LEVELS]
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
        lines.append(f"| test span | {percent(tested[0])} | {percent(tested[1])} |")
    if any(c is not None for c in realised):
        sessions = int(metric(live, f"live_sessions_{suffix}") or LIVE_SESSIONS)
        closes = metric(live, f"live_interval_rows_{suffix}")
        cells = [
            _coverage_cell(c, level, closes) for c, level in zip(realised, LEVELS, strict=True)
        ]
        span = f"live, last {plural(sessions, 'session')}"
        if closes:
            span += f" ({plural(int(closes), 'close')})"
        lines.append(f"| {span} | {cells[0]} | {cells[1]} |")
    return lines


def _live_lines(live: dict[str, float] | None) -> list[str]:
    """Realised RMSE of the scored predictions against naive's, when there are any."""
    suffix = f"{LIVE_SESSIONS}d"
    rmse = metric(live, f"live_rmse_{suffix}")
    if rmse is None:
        return []
    sessions = int(metric(live, f"live_sessions_{suffix}") or LIVE_SESSIONS)
    naive = metric(live, f"live_naive_rmse_{suffix}")
    verdict = ""
    if naive:
        gain = 1 - rmse / naive
        verdict = f", {abs(gain) * 100:.1f}% {'better' if gain >= 0 else 'worse'} than naive"
    return [
        "",
        f"## Live, last {plural(sessions, 'scored session')}",
        "",
        f"- RMSE {percent(rmse, 2)} vs naive {percent(naive, 2)} of the last close{verdict} "
        f"(`live_rmse_{suffix}` vs `live_naive_rmse_{suffix}`)",
    ]


def summary_markdown(
    report: pd.DataFrame,
    metrics: dict[str, float],
    decision: str,
    live: dict[str, float] | None = None,
    champion: tuple[str, dict[str, float]] | None = None,
    links: MlflowLinks | None = None,
    charts: RunCharts | None = None,
) -> str:
    """The run summary a person who did not run the flow reads in the Prefect UI.

    Args:
        report: the report's rows.
        metrics: the test-span metrics of the model this run trained or carried (MLflow names).
        decision: the promotion decision and its reason, as the flow words it ("tag: reason").
        live: the scorecard's live metrics (`live_rmse_20d`, `live_coverage_80_20d`,
            ...), or None when the flow scored nothing before publishing.
        champion: (version, its metrics re-scored on the same test windows) when the
            gate compared against a champion, shown beside `metrics`.
        links: where the run and its version live in MLflow.
        charts: tomorrow's chart, shown after the predicted moves, and the run's fan charts.
    """
    ok = report[report["status"] == OK]
    not_ok = report[report["status"] != OK]
    predicting = str(report["model_version"].iloc[0])
    lines = [
        f"# closecast {report['as_of'].iloc[0]} → {report['target_date'].iloc[0]}",
        "",
        f"- model: **{report['model_name'].iloc[0]} v{predicting}**, "
        f"predicted {len(ok)} of {plural(len(report), 'ticker')}",
        f"- promotion: **{decision}**",
    ]
    if links is not None:
        lines.append(_links_line(links, predicting))
    challenger = "this run's model"
    if links is not None and links.version:
        challenger = f"v{links.version} (this run)"
    if champion is not None:
        lines += _champion_lines(metrics, champion, challenger)
    lines += [
        "",
        "## Test span",
        "",
        *_test_span_lines(metrics),
        *_live_lines(live),
        *_coverage_lines(metrics, live),
        *_moves_lines(ok),
        *(_charts_lines(charts, links) if charts is not None else []),
        *_not_ok_lines(not_ok),
    ]
    return "\n".join(lines)


def summary_description(report: pd.DataFrame, decision: str, version: str | None = None) -> str:
    """The summary artifact's description, one line in the artifact list: the session, what
    the gate decided on the version this run registered (`version`), what predicted."""
    first = report.iloc[0]
    ok = int((report["status"] == OK).sum())
    tag = decision.split(":", 1)[0]
    outcome = f"v{version} {tag}" if version else tag
    return (
        f"{first['as_of']} → {first['target_date']}: {outcome}; {first['model_name']} "
        f"v{first['model_version']} predicted {ok} of {plural(len(report), 'ticker')}. "
        "Scores, moves and tomorrow's chart."
    )
