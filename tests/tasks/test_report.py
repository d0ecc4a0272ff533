"""The report: its rows, the no-prediction branch, and what publish_report shows in Prefect."""

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.artifacts import Artifact

from core.errors import PipelineError
from tasks.report import (
    ReportContext,
    build_report,
    publish_report,
    report_path,
    require_predictions,
)
from tests.conftest import read_report

CONTEXT = ReportContext(date(2024, 5, 1), date(2024, 5, 2), "closecast-lstm", "3", "r" * 32)


def predictions(**closes: float) -> pd.DataFrame:
    return pd.DataFrame({"ticker": list(closes), "predicted_close": list(closes.values())})


def test_a_non_ok_row_shows_no_invalid_price() -> None:
    """A -1.0 close or a NaN prediction never reaches the report; the row says why."""
    report = build_report(
        ["BAD", "GOOD", "NANPRED"],
        CONTEXT,
        {"BAD": -1.0, "GOOD": 100.0, "NANPRED": 50.0},
        predictions(GOOD=101.0, NANPRED=float("nan")),
        {"BAD": ("invalid_data", "all 3 price rows failed validation: 3 non_positive_price")},
    )
    rows = report.set_index("ticker")
    assert np.isnan(rows.loc["BAD", "last_close"])
    assert rows.loc["GOOD", ["last_close", "predicted_close"]].tolist() == [100.0, 101.0]
    assert rows.loc["NANPRED", "status"] == "invalid_data"
    assert rows.loc["NANPRED", "message"] == "the model returned no usable prediction"
    assert np.isnan(rows.loc["NANPRED", "predicted_close"])
    assert np.isnan(rows.loc["NANPRED", "predicted_return"])


def test_require_predictions_passes_when_one_ticker_is_ok(tmp_path: Path) -> None:
    """One ok row is a usable report: nothing raised, nothing written."""
    report = build_report(["A"], CONTEXT, {"A": 10.0}, predictions(A=10.5), {})
    require_predictions(report, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_no_prediction_fails_and_writes_the_statuses(tmp_path: Path) -> None:
    """No ok row: PipelineError in one line naming the statuses, and the report keeps why."""
    issues = {t: ("stale_data", f"the last valid price is from 2024-04-01 ({t})") for t in "AB"}
    report = build_report(["A", "B"], CONTEXT, {"A": 10.0}, predictions(), issues)
    with pytest.raises(PipelineError) as failed:
        require_predictions(report, tmp_path)
    message = str(failed.value)
    assert "\n" not in message
    assert message.startswith("no ticker could be predicted: 2 stale_data (e.g. A: the last")
    written = read_report(report_path(tmp_path, CONTEXT.as_of))
    assert list(written["status"]) == ["stale_data", "stale_data"]
    assert written["model_version"].isna().all()  # nothing registered made it
    assert str(report_path(tmp_path, CONTEXT.as_of)) in message


def test_no_prediction_never_replaces_an_earlier_report(tmp_path: Path) -> None:
    """An existing report for that as_of is left byte for byte."""
    path = report_path(tmp_path, CONTEXT.as_of)
    path.write_text("as_of,ticker\n2024-05-01,A\n")
    report = build_report(["A"], CONTEXT, {}, predictions(), {"A": ("fetch_failed", "x")})
    with pytest.raises(PipelineError, match="was left as it was"):
        require_predictions(report, tmp_path)
    assert path.read_text() == "as_of,ticker\n2024-05-01,A\n"


def test_the_models_own_status_and_message_reach_the_report() -> None:
    """A ticker the model could not predict keeps the model's reason; earlier issues win."""
    predictions = pd.DataFrame(
        {
            "ticker": ["A", "B", "C"],
            "predicted_close": [float("nan"), 11.0, float("nan")],
            "status": ["invalid_data", "ok", "insufficient_history"],
            "message": ["close is nan on 2024-05-01", "", "5 rows; the model's window needs 10"],
        }
    )
    report = build_report(
        ["A", "B", "C"],
        CONTEXT,
        {"A": 10.0, "B": 10.0, "C": 10.0},
        predictions,
        {"C": ("stale_data", "the last valid price is from 2024-04-01")},
    ).set_index("ticker")
    assert report.loc["A", ["status", "message"]].tolist() == [
        "invalid_data",
        "close is nan on 2024-05-01",
    ]
    assert report.loc["B", "status"] == "ok" and report.loc["B", "predicted_close"] == 11.0
    assert report.loc["C", "status"] == "stale_data"


@pytest.mark.usefixtures("prefect_harness")
def test_publish_report_writes_the_csv_and_publishes_the_table_and_the_summary(
    tmp_path: Path,
) -> None:
    """The CSV, a `predictions` table artifact with one record per row (an empty cell is
    null), and a `nightly-summary` markdown artifact with the decision and live coverage."""
    report = build_report(
        ["AAA", "BBB"],
        CONTEXT,
        {"AAA": 100.0, "BBB": 50.0},
        predictions(AAA=101.0),
        {"BBB": ("stale_data", "last close 2024-04-20 is older than as_of")},
    )
    live = {
        "live_rmse_20d": 0.011,
        "live_naive_rmse_20d": 0.0112,
        "live_sessions_20d": 20.0,
        "live_coverage_80_20d": 0.7611,
        "live_coverage_95_20d": 0.9333,
        "live_interval_rows_20d": 180.0,
    }

    @flow
    def publish() -> Path:
        return publish_report(report, tmp_path, {"test_rmse": 0.0102}, "champion: first", live)

    path = publish()

    assert path == report_path(tmp_path, CONTEXT.as_of)
    assert list(read_report(path)["ticker"]) == ["AAA", "BBB"]
    table = Artifact.get("predictions", _sync=True)
    assert table is not None and table.type == "table"
    assert table.description == "Predictions from 2024-05-01"
    records = json.loads(str(table.data))
    assert [r["ticker"] for r in records] == ["AAA", "BBB"]
    assert list(records[0]) == list(report.columns)
    assert records[0]["predicted_close"] == 101.0 and records[0]["status"] == "ok"
    assert records[1]["predicted_close"] is None and records[1]["lower_80"] is None
    assert records[1]["message"] == "last close 2024-04-20 is older than as_of"
    summary = Artifact.get("nightly-summary", _sync=True)
    assert summary is not None and summary.type == "markdown"
    text = str(summary.data)
    assert text.startswith("# closecast 2024-05-01 → 2024-05-02")
    assert "- promotion: **champion: first**" in text
    assert "| live, last 20 sessions (180 closes) | 76.1% | 93.3% |" in text
    assert "| BBB | stale_data | last close 2024-04-20 is older than as_of |" in text
