from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.artifacts import Artifact

from closecast.flows.nightly import nightly
from closecast.tasks.reporting.report import REPORT_COLUMNS
from closecast.tasks.reporting.scorecard import SCORECARD_COLUMNS, read_scorecard
from tests.fixtures import tiny_config

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_nightly_scores_earlier_reports_and_logs_live_rmse_and_coverage(
    mlflow_home: Path, csv_folder: Path
) -> None:
    """A run for 03-05 scores the 03-04 report against the 03-05 closes, logs RMSE and coverage."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"], as_of=date(2021, 3, 5))
    closes = {
        t: pd.read_csv(csv_folder / f"{t}.csv", index_col="Date")["Close"] for t in ("AAA", "BBB")
    }
    actual = [closes["AAA"]["2021-03-05"], closes["BBB"]["2021-03-05"]]
    earlier = pd.DataFrame(
        {
            "as_of": "2021-03-04",
            "target_date": "2021-03-05",
            "ticker": ["AAA", "BBB"],
            "last_close": [closes["AAA"]["2021-03-04"], closes["BBB"]["2021-03-04"]],
            "predicted_close": [closes["AAA"]["2021-03-05"] + 1.0, closes["BBB"]["2021-03-04"]],
            "predicted_return": 0.0,
            # AAA's close is below its 80% interval and inside its 95%; BBB's inside both
            "lower_80": [actual[0] + 0.5, actual[1] - 1.0],
            "upper_80": [actual[0] + 1.5, actual[1] + 1.0],
            "lower_95": [actual[0] - 0.5, actual[1] - 2.0],
            "upper_95": [actual[0] + 2.5, actual[1] + 2.0],
            "model_name": "closecast-lstm",
            "model_version": "7",
            "run_id": "earlier",
            "status": "ok",
            "message": "",
        },
        columns=REPORT_COLUMNS,
    )
    config.reports_dir.mkdir(parents=True)
    earlier.to_csv(config.reports_dir / "predictions_2021-03-04.csv", index=False)

    result = nightly(config)

    scorecard = read_scorecard(config.reports_dir / "scorecard.csv")
    assert list(scorecard.columns) == SCORECARD_COLUMNS
    assert list(scorecard["ticker"]) == ["AAA", "BBB"]  # its own report's target is not yet known
    aaa, bbb = scorecard.iloc[0], scorecard.iloc[1]
    assert aaa["actual_close"] == pytest.approx(closes["AAA"]["2021-03-05"], rel=1e-6)
    assert aaa["error"] == pytest.approx(1.0, abs=1e-5)
    assert bbb["error"] == pytest.approx(bbb["naive_error"], abs=1e-5)  # predicted "no change"
    assert set(scorecard["model_version"]) == {"7"}
    assert list(scorecard["hit_80"]) == [False, True]
    assert list(scorecard["hit_95"]) == [True, True]

    metrics = MlflowClient(config.mlflow_uri).get_run(result.run_id).data.metrics
    relative = scorecard["error"] / (scorecard["actual_close"] + scorecard["naive_error"])
    naive = scorecard["naive_error"] / (scorecard["actual_close"] + scorecard["naive_error"])
    assert metrics["live_rmse_20d"] == pytest.approx(np.sqrt(np.mean(relative**2)), rel=1e-4)
    assert metrics["live_naive_rmse_20d"] == pytest.approx(np.sqrt(np.mean(naive**2)), rel=1e-4)
    assert metrics["live_coverage_80_20d"] == pytest.approx(0.5)
    assert metrics["live_coverage_95_20d"] == pytest.approx(1.0)
    summary = Artifact.get("nightly-summary", _sync=True)
    assert summary is not None
    assert "| live, last 1 session (2 closes) | 50.0% | 100.0% |" in str(summary.data)
