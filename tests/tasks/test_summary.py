"""The run summary in the Prefect UI: what ran, how it scored, what needs attention."""

from datetime import date

import pandas as pd
import pytest

from tasks.report import ReportContext, build_report
from tasks.summary import summary_markdown

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
