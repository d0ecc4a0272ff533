from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.report import REPORT_COLUMNS
from tasks.scorecard import (
    SCORECARD_COLUMNS,
    live_metrics,
    read_scorecard,
    refresh_scorecard,
    score_predictions,
)


def _report(as_of: str, target: str, rows: list[tuple[str, float, float, str]]) -> pd.DataFrame:
    """A report with (ticker, last_close, predicted_close, status) rows."""
    return pd.DataFrame(
        [
            {
                "as_of": as_of,
                "target_date": target,
                "ticker": t,
                "last_close": last,
                "predicted_close": pred,
                "predicted_return": pred / last - 1,
                "model_name": "closecast-lstm",
                "model_version": "3",
                "run_id": "r",
                "status": status,
                "message": "" if status == "ok" else "why",
            }
            for t, last, pred, status in rows
        ],
        columns=REPORT_COLUMNS,
    )


def _prices(closes: dict[str, float]) -> pd.DataFrame:
    index = pd.DatetimeIndex(pd.to_datetime(list(closes)), name="date")
    return pd.DataFrame({"close": list(closes.values())}, index=index)


@pytest.fixture
def reports_dir(tmp_path: Path) -> Path:
    """Two reports: 01-02 → 01-03 (AAA ok, BBB stale) and 01-03 → 01-04 (AAA ok)."""
    folder = tmp_path / "reports"
    folder.mkdir()
    _report(
        "2024-01-02", "2024-01-03", [("AAA", 100.0, 102.0, "ok"), ("BBB", 50.0, 0.0, "stale_data")]
    ).to_csv(folder / "predictions_2024-01-02.csv", index=False)
    _report("2024-01-03", "2024-01-04", [("AAA", 101.0, 100.0, "ok")]).to_csv(
        folder / "predictions_2024-01-03.csv", index=False
    )
    return folder


def test_score_predictions_computes_errors_against_naive() -> None:
    """error = predicted - actual; naive_error = last - actual; direction compares moves."""
    report = _report(
        "2024-01-02", "2024-01-03", [("AAA", 100.0, 102.0, "ok"), ("BBB", 50.0, 49.0, "ok")]
    )
    closes = {"AAA": _prices({"2024-01-03": 101.0})["close"], "BBB": _prices({})["close"]}
    scored = score_predictions(report, closes)
    assert list(scored.columns) == SCORECARD_COLUMNS
    assert list(scored["ticker"]) == ["AAA"]  # BBB has no close on its target date yet
    row = scored.iloc[0]
    assert row["actual_close"] == 101.0
    assert row["error"] == pytest.approx(1.0)
    assert row["naive_error"] == pytest.approx(-1.0)
    assert bool(row["direction_hit"]) is True
    assert row["model_version"] == "3"


def test_refresh_scores_only_ok_rows_with_a_close_and_is_idempotent(reports_dir: Path) -> None:
    """Rows whose target_date has a close are scored once; re-scoring adds no duplicate."""
    frames = {"AAA": _prices({"2024-01-03": 101.0}), "BBB": _prices({"2024-01-03": 51.0})}
    table, added = refresh_scorecard(reports_dir, frames, date(2024, 1, 3))
    assert added == 1
    assert list(table["as_of"]) == ["2024-01-02"]  # BBB was stale_data: not scored

    later = {"AAA": _prices({"2024-01-03": 101.0, "2024-01-04": 99.0})}
    assert refresh_scorecard(reports_dir, later, date(2024, 1, 4))[1] == 1
    again, added = refresh_scorecard(reports_dir, later, date(2024, 1, 4))
    assert added == 0
    on_disk = read_scorecard(reports_dir / "scorecard.csv")
    assert len(on_disk) == len(again) == 2
    assert list(on_disk.columns) == SCORECARD_COLUMNS
    assert list(on_disk["target_date"]) == ["2024-01-03", "2024-01-04"]
    assert list(on_disk["direction_hit"]) == [True, True]  # 101→100 predicted, 101→99 actual


def test_refresh_ignores_reports_whose_target_is_after_as_of(reports_dir: Path) -> None:
    """A point-in-time run for 01-03 does not score the 01-04 target, even with its close."""
    frames = {"AAA": _prices({"2024-01-03": 101.0, "2024-01-04": 99.0})}
    table, _ = refresh_scorecard(reports_dir, frames, date(2024, 1, 3))
    assert list(table["target_date"]) == ["2024-01-03"]


def test_live_metrics_use_the_last_sessions_and_relative_errors() -> None:
    """RMSE over the last N target dates, errors divided by the last close."""
    table = pd.DataFrame(
        {
            "as_of": ["d1", "d2", "d3"],
            "target_date": ["2024-01-03", "2024-01-04", "2024-01-05"],
            "ticker": ["AAA"] * 3,
            "predicted_close": [0.0, 101.0, 204.0],
            "actual_close": [1.0, 100.0, 200.0],
            "error": [999.0, 1.0, 4.0],  # the first row falls outside a 2-session window
            "naive_error": [0.0, 0.0, 2.0],  # last closes 100 and 202
            "direction_hit": [True, True, False],
            "model_version": ["1"] * 3,
        }
    )
    metrics = live_metrics(table, date(2024, 1, 5), sessions=2)
    expected = np.sqrt(np.mean(np.square([1.0 / 100.0, 4.0 / 202.0])))
    assert metrics["live_rmse_2d"] == pytest.approx(expected)
    assert metrics["live_naive_rmse_2d"] == pytest.approx(np.sqrt(np.mean([0.0, (2 / 202) ** 2])))
    assert metrics["live_directional_accuracy_2d"] == pytest.approx(0.5)
    assert live_metrics(table, date(2024, 1, 2)) == {}
