"""The run summary in the Prefect UI: what ran, how it scored, what needs attention."""

from datetime import date

import pandas as pd
import pytest

from closecast.tasks.reporting.report import ReportContext, build_report
from closecast.tasks.reporting.summary import (
    MlflowLinks,
    RunCharts,
    summary_description,
    summary_markdown,
)

CONTEXT = ReportContext(date(2024, 5, 1), date(2024, 5, 2), "closecast-lstm", "3", "r" * 32)

METRICS = {
    "test_rmse": 0.010234,
    "naive_rmse": 0.010337,
    "skill": 0.009964,
    "skill_pvalue": 0.2134,
    "test_directional_accuracy": 0.5123,
    "test_directional_accuracy_low": 0.4801,
    "test_directional_accuracy_high": 0.5443,
    "coverage_80": 0.7891,
    "coverage_95": 0.9462,
    "interval_score_80": 0.0301,
    "interval_score_95": 0.04123,
    "baseline_interval_score_80": 0.0312,
    "baseline_interval_score_95": 0.04254,
    "interval_skill_95": 0.03079,
    "test_interval_score": 0.035612,
}
LIVE = {
    "live_rmse_20d": 0.0110,
    "live_naive_rmse_20d": 0.0112,
    "live_directional_accuracy_20d": 0.505,
    "live_sessions_20d": 20.0,
    "live_coverage_80_20d": 0.7611,
    "live_coverage_95_20d": 0.9333,
    "live_interval_rows_20d": 180.0,
}


@pytest.fixture
def report() -> pd.DataFrame:
    """AAA and BBB predicted, CCC stale."""
    predictions = pd.DataFrame(
        {
            "ticker": ["AAA", "BBB"],
            "predicted_close": [101.0, 50.5],
            "lower_80": [99.0, 49.0],
            "upper_80": [103.0, 52.0],
            "lower_95": [98.0, 48.0],
            "upper_95": [104.0, 53.0],
        }
    )
    issues = {"CCC": ("stale_data", "last close 2024-04-20 is older than as_of | 5 sessions")}
    return build_report(
        ["AAA", "BBB", "CCC"], CONTEXT, {"AAA": 100.0, "BBB": 50.0}, predictions, issues
    )


def test_summary_says_what_ran_and_how_it_scored_on_the_test_span(report: pd.DataFrame) -> None:
    """As_of → target, version, decision, skill with its p-value, coverage, interval score in bp."""
    text = summary_markdown(report, METRICS, "champion")
    assert "2024-05-01 → 2024-05-02" in text
    assert "closecast-lstm v3" in text
    assert "2 of 3 tickers" in text
    assert "champion" in text
    assert "RMSE 1.02% of the last close vs naive 1.03%" in text
    assert "skill +1.00% (p = 0.21" in text
    assert "51.2% (95% CI 48.0–54.4%)" in text
    assert "412 bp of the last close vs EWMA 425 bp" in text
    assert "interval skill +3.1%" in text
    assert "| test span | 78.9% | 94.6% |" in text
    assert "| nominal | 80% | 95% |" in text
    assert "live" not in text.lower()  # no scorecard numbers were given
    assert "nan" not in text.lower()


def test_summary_shows_last_months_live_coverage(report: pd.DataFrame) -> None:
    """With the scorecard's live metrics, a row compares last month's coverage to nominal."""
    text = summary_markdown(report, METRICS, "rejected", live=LIVE)
    assert "| live, last 20 sessions (180 closes) | 76.1% | 93.3% |" in text
    assert "RMSE 1.10% vs naive 1.12%" in text
    assert "⚠" not in text  # 76.1% of 180 closes is within chance of 80%


def test_summary_of_the_first_scored_session(report: pd.DataFrame) -> None:
    """One scored session of two closes: counted in the singular, not flagged (chance)."""
    first = LIVE | {
        "live_sessions_20d": 1.0,
        "live_interval_rows_20d": 2.0,
        "live_coverage_80_20d": 0.5,
        "live_coverage_95_20d": 1.0,
    }
    text = summary_markdown(report, METRICS, "champion", live=first)
    assert "## Live, last 1 scored session\n" in text
    assert "| live, last 1 session (2 closes) | 50.0% | 100.0% |" in text


def test_summary_flags_live_coverage_far_from_nominal(report: pd.DataFrame) -> None:
    """Live 80% coverage well below nominal is marked as intervals too narrow."""
    narrow = LIVE | {"live_coverage_80_20d": 0.62}
    text = summary_markdown(report, METRICS, "champion", live=narrow)
    assert "| live, last 20 sessions (180 closes) | 62.0% ⚠ too narrow | 93.3% |" in text


def test_summary_of_a_model_without_intervals_and_no_scorecard(report: pd.DataFrame) -> None:
    """An old champion's point metrics only: no coverage table, no NaN, the live RMSE alone."""
    point_only = {k: METRICS[k] for k in ("test_rmse", "naive_rmse", "skill")}
    live = {k: LIVE[k] for k in ("live_rmse_20d", "live_naive_rmse_20d", "live_sessions_20d")}
    text = summary_markdown(report, point_only, "champion v2", live=live)
    assert "the model gives no intervals" in text
    assert "coverage" not in text.lower()
    assert "nan" not in text.lower()
    assert "RMSE 1.10% vs naive 1.12%" in text


def test_summary_lists_the_tickers_that_are_not_ok(report: pd.DataFrame) -> None:
    """Each non-ok ticker is a table row with its status and message (pipes escaped)."""
    text = summary_markdown(report, METRICS, "champion")
    assert "| ticker | status | message |" in text
    assert "| CCC | stale_data | last close 2024-04-20 is older than as_of \\| 5 sessions |" in text


def test_summary_gives_the_reason_and_the_champion_side_by_side(report: pd.DataFrame) -> None:
    """The decision with its reason, then both gated scores of both versions in bp."""
    reason = "rejected: interval score 0.035612 ties champion v2's 0.035612 on the same windows"
    held = {"test_interval_score": 0.035612, "test_rmse": 0.010198}
    links = MlflowLinks("http://mlflow:5000", "r" * 32, version="4")
    text = summary_markdown(report, METRICS, reason, champion=("2", held), links=links)
    assert f"- promotion: **{reason}**" in text
    assert "## v4 (this run) vs champion v2, on the same test windows" in text
    assert "| | v4 (this run) | champion v2 | difference |" in text
    assert "| interval score (mean of 80% and 95%) | 356.1 bp | 356.1 bp | 0 (tie) |" in text
    assert "| test_rmse | 102.3 bp | 102.0 bp | +0.4 bp |" in text


def test_a_near_tie_shows_digits_enough_to_tell_it_from_a_tie(report: pd.DataFrame) -> None:
    """A difference under a tenth of a bp keeps its significant digits; a champion without
    intervals shows n/a for its interval score."""
    held = {"test_rmse": 0.0102339}
    text = summary_markdown(report, METRICS, "champion: beats", champion=("1", held))
    assert "## this run's model vs champion v1, on the same test windows" in text
    assert "| interval score (mean of 80% and 95%) | 356.1 bp | n/a | n/a |" in text
    assert "| test_rmse | 102.3 bp | 102.3 bp | +0.001 bp |" in text


def test_summary_shows_each_tickers_move_and_intervals_in_percent(report: pd.DataFrame) -> None:
    """Closes to the cent, the move and both intervals as % of the last close, largest first."""
    text = summary_markdown(report, METRICS, "champion")
    table = (
        "| ticker | last close | predicted close | move | 80% interval | 95% interval |\n"
        "|---|---|---|---|---|---|\n"
        "| AAA | 100.00 | 101.00 | +1.00% | -1.00% to +3.00% | -2.00% to +4.00% |\n"
        "| BBB | 50.00 | 50.50 | +1.00% | -2.00% to +4.00% | -4.00% to +6.00% |\n"
    )
    assert table in text
    assert "| CCC | stale_data |" in text  # not among the moves: it has none


def test_a_point_forecast_shows_moves_without_interval_columns() -> None:
    """No interval in the report: moves only, no empty interval columns, no nan."""
    predictions = pd.DataFrame({"ticker": ["AAA"], "predicted_close": [99.254]})
    report = build_report(["AAA"], CONTEXT, {"AAA": 100.0}, predictions, {})
    text = summary_markdown(report, {"test_rmse": 0.01}, "champion: first version")
    assert "| ticker | last close | predicted close | move |\n" in text
    assert "| AAA | 100.00 | 99.25 | -0.75% |" in text
    assert "nan" not in text.lower()


def test_a_large_universe_shows_the_largest_moves_and_a_count() -> None:
    """Of 30 predicted tickers the summary lists the 5 largest rises and falls, counts the
    rest, and lists at most 20 of 25 non-ok tickers with the others counted by status."""
    tickers = [f"T{i:02d}" for i in range(30)]
    closes = {t: 100.0 for t in tickers}
    predictions = pd.DataFrame(
        {"ticker": tickers, "predicted_close": [90.0 + i for i in range(30)]}
    )
    stale = {f"S{i:02d}": ("stale_data", "old") for i in range(24)} | {"X": ("fetch_failed", "x")}
    report = build_report([*tickers, *stale], CONTEXT, closes, predictions, stale)
    text = summary_markdown(report, METRICS, "champion")
    assert "The 5 largest predicted rises and falls of 30 tickers" in text
    rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| T")]
    assert [row.removeprefix("| ") for row in rows] == [
        f"T{i:02d}" for i in (29, 28, 27, 26, 25, 4, 3, 2, 1, 0)
    ]
    assert "| … | 20 more |" in text
    assert "| T29 | 100.00 | 119.00 | +19.00% |" in text
    assert "| T00 | 100.00 | 90.00 | -10.00% |" in text
    assert sum(line.startswith("| S") or line.startswith("| X") for line in text.splitlines()) == 20
    assert "5 more not predicted (25 in all: 1 fetch_failed, 24 stale_data)" in text


def test_summary_compares_live_rmse_with_naives(report: pd.DataFrame) -> None:
    """live_rmse_20d against live_naive_rmse_20d, named, and how much better or worse."""
    text = summary_markdown(report, METRICS, "champion", live=LIVE)
    assert (
        "- RMSE 1.10% vs naive 1.12% of the last close, 1.8% better than naive "
        "(`live_rmse_20d` vs `live_naive_rmse_20d`)"
    ) in text
    worse = summary_markdown(report, METRICS, "champion", live=LIVE | {"live_rmse_20d": 0.0123})
    assert "9.8% worse than naive" in worse


def test_summary_links_the_run_and_versions_on_a_tracking_server(report: pd.DataFrame) -> None:
    """An http tracking URI gives full URLs to the run and to the registered and serving
    versions; without an experiment id the UI's direct run page."""
    links = MlflowLinks("https://mlflow.example/", "abc", version="4", experiment_id="7")
    text = summary_markdown(report, METRICS, "rejected: worse", links=links)
    assert (
        "- MLflow: [run](https://mlflow.example/#/experiments/7/runs/abc) · "
        "[v4](https://mlflow.example/#/models/closecast-lstm/versions/4) · "
        "[v3](https://mlflow.example/#/models/closecast-lstm/versions/3)"
    ) in text
    direct = summary_markdown(report, METRICS, "x", links=MlflowLinks("http://h:5000", "abc"))
    assert "- MLflow: [run](http://h:5000/#/runs/abc) · [v3](http://h:5000/" in direct


def test_summary_tells_how_to_open_a_local_store(report: pd.DataFrame) -> None:
    """A sqlite store: the `mlflow ui` command to run, then links to the pages it serves on
    its default address (no code span to paste)."""
    links = MlflowLinks("sqlite:////home/u/.closecast/mlflow.db", "abc", "3", "1")
    text = summary_markdown(report, METRICS, "champion: first version", links=links)
    assert (
        "- MLflow: start `mlflow ui --backend-store-uri sqlite:////home/u/.closecast/mlflow.db` "
        "(it serves http://127.0.0.1:5000), then open "
        "[run](http://127.0.0.1:5000/#/experiments/1/runs/abc) · "
        "[v3](http://127.0.0.1:5000/#/models/closecast-lstm/versions/3)"
    ) in text
    assert "`#/" not in text


def test_summary_shows_tomorrows_chart_inline_and_where_the_charts_are(
    report: pd.DataFrame,
) -> None:
    """Tomorrow's chart as an inline PNG (an artifact holds no files), a link to it in the
    MLflow run, and the fan charts counted with the rule that picked them."""
    png = b"\x89PNG\r\n\x1a\nfake"
    fans = ["plots/predicted_vs_actual_AAA.png", "plots/predicted_vs_actual_BBB.png"]
    charts = RunCharts(png, logged=True, fans=fans)
    links = MlflowLinks("http://mlflow:5000", "abc", version="4", experiment_id="2")
    text = summary_markdown(report, METRICS, "champion", links=links, charts=charts)
    assert "## Tomorrow\n" in text
    assert (
        "![predicted moves with their 80% and 95% intervals](data:image/png;base64,iVBORw0KGgpmYWtl)"
        in text
    )
    assert (
        "- this chart: [plots/tomorrow.png]"
        "(http://mlflow:5000/#/experiments/2/runs/abc/artifactPath/plots/tomorrow.png) in the MLflow run"
    ) in text
    assert (
        "- fan charts of the last 60 test sessions: 2 tickers in the MLflow run "
        "(`plots/predicted_vs_actual_<ticker>.png`): every ticker with a test span up to 20; "
        "beyond that the 10 worst and 10 best by skill against the naive forecast"
    ) in text
    assert (
        text.index("## Predicted moves")
        < text.index("## Tomorrow")
        < text.index("## Not predicted")
    )
    alone = summary_markdown(report, METRICS, "champion v3", charts=RunCharts(png))
    assert "data:image/png;base64," in alone and "MLflow run" not in alone


def test_the_summary_description_says_the_session_the_model_and_the_decision(
    report: pd.DataFrame,
) -> None:
    """One line for the artifacts list: as_of → target, the registered version and the gate's
    tag, the version that predicted and how many tickers; a predict's decision as it reads."""
    assert summary_description(report, "rejected: interval score worse", "4") == (
        "2024-05-01 → 2024-05-02: v4 rejected; closecast-lstm v3 predicted 2 of 3 tickers. "
        "Scores, moves and tomorrow's chart."
    )
    assert summary_description(report, "champion v3").startswith(
        "2024-05-01 → 2024-05-02: champion v3; closecast-lstm v3 predicted 2 of 3 tickers."
    )
