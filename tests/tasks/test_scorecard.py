from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from closecast.tasks.reporting.report import REPORT_COLUMNS
from closecast.tasks.reporting.scorecard import (
    SCORECARD_COLUMNS,
    live_metrics,
    read_scorecard,
    score_predictions,
    update_scorecard,
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
    table, added = update_scorecard(reports_dir, frames, date(2024, 1, 3))
    assert added == 1
    assert list(table["as_of"]) == ["2024-01-02"]  # BBB was stale_data: not scored

    later = {"AAA": _prices({"2024-01-03": 101.0, "2024-01-04": 99.0})}
    assert update_scorecard(reports_dir, later, date(2024, 1, 4))[1] == 1
    again, added = update_scorecard(reports_dir, later, date(2024, 1, 4))
    assert added == 0
    on_disk = read_scorecard(reports_dir / "scorecard.csv")
    assert len(on_disk) == len(again) == 2
    assert list(on_disk.columns) == SCORECARD_COLUMNS
    assert list(on_disk["target_date"]) == ["2024-01-03", "2024-01-04"]
    assert list(on_disk["direction_hit"]) == [True, True]  # 101→100 predicted, 101→99 actual


def test_refresh_ignores_reports_whose_target_is_after_as_of(reports_dir: Path) -> None:
    """A point-in-time run for 01-03 does not score the 01-04 target, even with its close."""
    frames = {"AAA": _prices({"2024-01-03": 101.0, "2024-01-04": 99.0})}
    table, _ = update_scorecard(reports_dir, frames, date(2024, 1, 3))
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


def _with_bounds(report: pd.DataFrame, bounds: dict[str, tuple[float, float, float, float]]):
    """`report` with (lower_80, upper_80, lower_95, upper_95) per ticker; others left empty."""
    report = report.copy()
    for ticker, values in bounds.items():
        report.loc[report["ticker"] == ticker, ["lower_80", "upper_80", "lower_95", "upper_95"]] = (
            values
        )
    return report


def test_scorecard_columns_follow_the_contract() -> None:
    """The scorecard's columns, in the order PRODUCT.md §8 lists them."""
    assert SCORECARD_COLUMNS == [
        "as_of",
        "target_date",
        "ticker",
        "predicted_close",
        "actual_close",
        "error",
        "naive_error",
        "direction_hit",
        "model_version",
        "lower_80",
        "upper_80",
        "lower_95",
        "upper_95",
        "hit_80",
        "hit_95",
    ]


def test_score_predictions_marks_interval_hits_bounds_included() -> None:
    """hit_X is lower_X ≤ actual ≤ upper_X, bounds included; a row without bounds has no hit."""
    report = _report(
        "2024-01-02",
        "2024-01-03",
        [("AAA", 100.0, 100.5, "ok"), ("BBB", 50.0, 50.0, "ok"), ("CCC", 20.0, 20.0, "ok")],
    )
    report = _with_bounds(
        report,
        {"AAA": (100.0, 101.0, 99.0, 102.0), "BBB": (49.5, 50.5, 47.0, 53.0)},  # CCC: none
    )
    closes = {
        "AAA": _prices({"2024-01-03": 101.0})["close"],  # on the 80% upper bound
        "BBB": _prices({"2024-01-03": 52.0})["close"],  # outside 80%, inside 95%
        "CCC": _prices({"2024-01-03": 21.0})["close"],
    }
    scored = score_predictions(report, closes).set_index("ticker")
    assert scored.loc["AAA", ["lower_80", "upper_80", "lower_95", "upper_95"]].tolist() == [
        100.0,
        101.0,
        99.0,
        102.0,
    ]
    assert [scored.loc["AAA", "hit_80"], scored.loc["AAA", "hit_95"]] == [True, True]
    assert [scored.loc["BBB", "hit_80"], scored.loc["BBB", "hit_95"]] == [False, True]
    assert scored.loc["CCC", ["lower_80", "upper_95"]].isna().all()
    assert pd.isna(scored.loc["CCC", "hit_80"]) and pd.isna(scored.loc["CCC", "hit_95"])


def test_old_reports_without_interval_columns_are_scored_with_empty_hits(tmp_path: Path) -> None:
    """A report written before intervals is scored; its hits are empty on disk, not False."""
    folder = tmp_path / "reports"
    folder.mkdir()
    old = _report("2024-01-02", "2024-01-03", [("AAA", 100.0, 102.0, "ok")])
    old.drop(columns=["lower_80", "upper_80", "lower_95", "upper_95"]).to_csv(
        folder / "predictions_2024-01-02.csv", index=False
    )
    new = _with_bounds(
        _report("2024-01-03", "2024-01-04", [("AAA", 101.0, 100.0, "ok")]),
        {"AAA": (99.0, 101.0, 98.0, 102.0)},
    )
    new.to_csv(folder / "predictions_2024-01-03.csv", index=False)
    frames = {"AAA": _prices({"2024-01-03": 101.0, "2024-01-04": 98.5})}

    _, added = update_scorecard(folder, frames, date(2024, 1, 4))

    assert added == 2
    raw = pd.read_csv(folder / "scorecard.csv", dtype=str, keep_default_na=False)
    assert list(raw.columns) == SCORECARD_COLUMNS
    assert raw[["lower_80", "hit_80", "hit_95"]].iloc[0].tolist() == ["", "", ""]
    assert raw[["hit_80", "hit_95"]].iloc[1].tolist() == ["False", "True"]
    on_disk = read_scorecard(folder / "scorecard.csv")
    assert pd.isna(on_disk["hit_80"].iloc[0]) and on_disk["hit_80"].iloc[1] is not pd.NA
    assert not on_disk["hit_80"].iloc[1] and on_disk["hit_95"].iloc[1]


def test_a_scorecard_with_the_old_columns_is_extended(reports_dir: Path) -> None:
    """An old scorecard.csv keeps its rows (no hits) and gains the interval columns."""
    old_columns = SCORECARD_COLUMNS[: SCORECARD_COLUMNS.index("model_version") + 1]
    pd.DataFrame(
        [["2023-12-29", "2024-01-02", "AAA", 99.0, 100.0, -1.0, 0.5, False, "2"]],
        columns=old_columns,
    ).to_csv(reports_dir / "scorecard.csv", index=False)
    assert list(read_scorecard(reports_dir / "scorecard.csv").columns) == SCORECARD_COLUMNS

    frames = {"AAA": _prices({"2024-01-02": 100.0, "2024-01-03": 101.0})}
    _, added = update_scorecard(reports_dir, frames, date(2024, 1, 3))

    assert added == 1
    on_disk = read_scorecard(reports_dir / "scorecard.csv")
    assert list(on_disk.columns) == SCORECARD_COLUMNS
    assert list(on_disk["as_of"]) == ["2023-12-29", "2024-01-02"]
    assert on_disk["error"].iloc[0] == pytest.approx(-1.0)
    assert on_disk["hit_80"].isna().all()  # neither the old row nor a report without bounds


def test_live_coverage_counts_only_rows_with_intervals_in_the_last_sessions() -> None:
    """live_coverage_X_Nd is the share of hits among the window's rows that have intervals."""
    table = pd.DataFrame(
        {
            "as_of": ["d1", "d2", "d2", "d3", "d3"],
            "target_date": ["2024-01-03", "2024-01-04", "2024-01-04", "2024-01-05", "2024-01-05"],
            "ticker": ["AAA", "AAA", "BBB", "AAA", "BBB"],
            "predicted_close": 100.0,
            "actual_close": 100.0,
            "error": 0.0,
            "naive_error": 0.0,
            "direction_hit": True,
            "model_version": "1",
            # the first row falls outside a 2-session window; BBB on 01-04 has no interval
            "hit_80": pd.array([False, True, pd.NA, False, True], dtype="boolean"),
            "hit_95": pd.array([False, True, pd.NA, True, True], dtype="boolean"),
        }
    )
    metrics = live_metrics(table, date(2024, 1, 5), sessions=2)
    assert metrics["live_coverage_80_2d"] == pytest.approx(2 / 3)
    assert metrics["live_coverage_95_2d"] == pytest.approx(1.0)
    assert metrics["live_interval_rows_2d"] == 3.0

    no_intervals = table.assign(hit_80=pd.NA, hit_95=pd.NA)
    metrics = live_metrics(no_intervals, date(2024, 1, 5), sessions=2)
    assert "live_rmse_2d" in metrics
    assert "live_coverage_80_2d" not in metrics and "live_coverage_95_2d" not in metrics
