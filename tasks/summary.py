"""The run summary: the markdown a person who did not run the flow reads in the Prefect UI."""

import math

import pandas as pd

from core.statuses import OK
from tasks.evaluation import LEVELS
from tasks.scorecard import LIVE_SESSIONS


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
