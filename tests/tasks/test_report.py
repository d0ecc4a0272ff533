"""The report: its rows, the no-prediction branch, and what publish_report shows in Prefect."""

import base64
import json
import re
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prefect import flow
from prefect.artifacts import Artifact

from closecast.core.errors import PipelineError
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.reporting.report import (
    REPORT_COLUMNS,
    ReportContext,
    build_report,
    report_path,
    require_predictions,
)
from closecast.tasks.reporting.steps import publish_report
from closecast.tasks.reporting.summary import MlflowLinks
from tests.fixtures import read_report

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
    assert table.description is not None
    assert table.description.startswith("Predictions from 2024-05-01 for 2024-05-02")
    records = json.loads(str(table.data))
    assert [r["ticker"] for r in records] == ["AAA", "BBB"]
    assert records[0]["predicted_close"] == 101.0 and records[0]["status"] == "ok"
    assert records[1]["predicted_close"] is None and records[1]["lower_80"] is None
    assert records[1]["predicted_return_bp"] is None
    assert records[1]["message"] == "last close 2024-04-20 is older than as_of"
    summary = Artifact.get("nightly-summary", _sync=True)
    assert summary is not None and summary.type == "markdown"
    text = str(summary.data)
    assert text.startswith("# closecast 2024-05-01 → 2024-05-02")
    assert "- promotion: **champion: first**" in text
    assert "| live, last 20 sessions (180 closes) | 76.1% | 93.3% |" in text
    assert "| BBB | stale_data | last close 2024-04-20 is older than as_of |" in text
    assert summary.description == (
        "2024-05-01 → 2024-05-02: champion; closecast-lstm v3 predicted 1 of 2 tickers. "
        "Scores, moves and tomorrow's chart."
    )
    assert "## Tomorrow" in text and "(data:image/png;base64,iVBORw0KGgo" in text
    assert "MLflow run" not in text  # no run given: the chart is the summary's alone


@pytest.mark.usefixtures("prefect_harness")
def test_the_table_artifact_rounds_and_shows_status_before_the_identifiers(
    tmp_path: Path,
) -> None:
    """Closes to the cent, the return in bp to a tenth, status and message before run_id;
    the CSV keeps its columns and its digits."""
    forecast = pd.DataFrame(
        {
            "ticker": ["AAA"],
            "predicted_close": [2505.7386883057334],
            "lower_80": [2480.123456],
            "upper_80": [2530.987654],
            "lower_95": [2470.005],
            "upper_95": [2541.4449],
        }
    )
    report = build_report(["AAA"], CONTEXT, {"AAA": 2490.126}, forecast, {})

    @flow
    def publish() -> Path:
        return publish_report(report, tmp_path, {"test_rmse": 0.0102}, "champion: first")

    path = publish()

    records = json.loads(str(Artifact.get("predictions", _sync=True).data))  # type: ignore[union-attr]
    columns = list(records[0])
    assert columns[:5] == [
        "ticker",
        "status",
        "last_close",
        "predicted_close",
        "predicted_return_bp",
    ]
    assert columns.index("message") < columns.index("run_id")
    assert set(columns) == set(REPORT_COLUMNS) - {"predicted_return"} | {"predicted_return_bp"}
    row = records[0]
    assert row["last_close"] == 2490.13 and row["predicted_close"] == 2505.74
    assert [row[c] for c in ("lower_80", "upper_80", "upper_95")] == [2480.12, 2530.99, 2541.44]
    assert row["predicted_return_bp"] == 62.7  # 2505.7387 / 2490.126 - 1 = 0.0062699
    assert row["status"] == "ok" and row["message"] == "" and row["run_id"] == "r" * 32
    written = read_report(path)
    assert list(written.columns) == REPORT_COLUMNS
    assert written.loc[0, "predicted_close"] == pytest.approx(2505.738688)


@pytest.mark.usefixtures("prefect_harness")
def test_the_summary_artifact_gives_the_reason_the_champion_the_moves_and_the_links(
    mlflow_home: Path, tmp_path: Path
) -> None:
    """Read back from Prefect: the reason, challenger vs champion in bp, each move with its
    intervals in %, the MLflow run and version (for a local store: how to open them, then
    links), and tomorrow's chart, which the run holds too."""
    uri = f"sqlite:///{mlflow_home}/mlflow.db"
    client = configure_mlflow(uri)
    experiment = client.create_experiment("closecast")
    run_id = client.create_run(experiment).info.run_id
    forecast = pd.DataFrame(
        {
            "ticker": ["AAA"],
            "predicted_close": [101.004],
            "lower_80": [99.0],
            "upper_80": [103.0],
            "lower_95": [98.0],
            "upper_95": [104.0],
        }
    )
    report = build_report(["AAA"], CONTEXT, {"AAA": 100.0}, forecast, {})
    links = MlflowLinks(uri, run_id, version="4")
    reason = "rejected: interval score 0.030000 does not beat champion v3's 0.029000"
    mine = {"test_rmse": 0.0102, "test_interval_score": 0.03}
    held = {"test_rmse": 0.0101, "test_interval_score": 0.029}

    @flow
    def publish() -> Path:
        return publish_report(report, mlflow_home, mine, reason, None, ("3", held), links)

    publish()

    summary = Artifact.get("nightly-summary", _sync=True)
    assert summary is not None
    text = str(summary.data)
    assert f"- promotion: **{reason}**" in text
    assert "| | v4 (this run) | champion v3 | difference |" in text
    assert "| interval score (mean of 80% and 95%) | 300.0 bp | 290.0 bp | +10.0 bp |" in text
    assert "| test_rmse | 102.0 bp | 101.0 bp | +1.0 bp |" in text
    assert "| AAA | 100.00 | 101.00 | +1.00% | -1.00% to +3.00% | -2.00% to +4.00% |" in text
    assert (
        f"start `mlflow ui --backend-store-uri {uri}` (it serves http://127.0.0.1:5000), then "
        f"open [run](http://127.0.0.1:5000/#/experiments/{experiment}/runs/{run_id})"
    ) in text
    assert "[v4](http://127.0.0.1:5000/#/models/closecast-lstm/versions/4)" in text
    page = f"#/experiments/{experiment}/runs/{run_id}/artifactPath/plots/tomorrow.png"
    assert f"- this chart: [plots/tomorrow.png](http://127.0.0.1:5000/{page})" in text
    assert [a.path for a in client.list_artifacts(run_id, "plots")] == ["plots/tomorrow.png"]
    # the run's chart is the summary's, drawn once: the same PNG, byte for byte
    logged = Path(client.download_artifacts(run_id, "plots/tomorrow.png", str(tmp_path)))
    assert logged.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    embedded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", text)
    assert embedded is not None and base64.b64decode(embedded[1]) == logged.read_bytes()
