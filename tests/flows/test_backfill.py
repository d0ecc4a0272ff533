from datetime import date
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from closecast.core.config import BACKFILL_EXPERIMENT, EXPERIMENT
from closecast.core.errors import PipelineError
from closecast.flows.backfill import backfill
from closecast.tasks.reporting.report import report_path
from closecast.tasks.reporting.scorecard import read_scorecard
from tests.fixtures import read_report, tiny_config, write_ticker_csvs

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _runs(client: MlflowClient, experiment: str) -> list:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    return client.search_runs([found.experiment_id], order_by=["attributes.start_time ASC"])


def test_backfill_reports_each_session_registers_nothing_and_resumes(
    mlflow_home: Path, csv_folder: Path
) -> None:
    """One report and one MLflow run per session; a re-run does only the sessions left.

    The first call registers nothing; the second, with register_versions, registers
    the model it trains (and only that one).
    """
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"])
    first = backfill(config, date(2021, 3, 1), date(2021, 3, 2), retrain_every=2)
    assert [p.name for p in first.reports] == [
        "predictions_2021-03-01.csv",
        "predictions_2021-03-02.csv",
    ]
    stamps = {p: p.stat().st_mtime_ns for p in first.reports}
    client = MlflowClient(config.mlflow_uri)
    assert client.search_model_versions() == []  # nothing registered without register_versions

    # Stopped after 03-02, started again for the whole range: only 03-03 runs.
    second = backfill(
        config, date(2021, 3, 1), date(2021, 3, 3), retrain_every=2, register_versions=True
    )
    assert second.skipped == [date(2021, 3, 1), date(2021, 3, 2)]
    assert [p.name for p in second.reports] == ["predictions_2021-03-03.csv"]
    assert {p: p.stat().st_mtime_ns for p in first.reports} == stamps

    runs = _runs(client, BACKFILL_EXPERIMENT)
    assert [r.data.tags["as_of"] for r in runs] == ["2021-03-01", "2021-03-02", "2021-03-03"]
    assert [r.data.tags["retrained"] for r in runs] == ["true", "false", "true"]
    assert _runs(client, EXPERIMENT) == []
    (version,) = client.search_model_versions()
    assert version.run_id == runs[2].info.run_id

    # Each session predicts with the model trained last, held in memory.
    versions = [
        read_report(p)["model_version"].astype(str).unique().tolist()
        for p in [*first.reports, *second.reports]
    ]
    assert versions == [[f"run:{runs[0].info.run_id}"]] * 2 + [[str(version.version)]]

    # Point-in-time: each report's last close is that session's close in the source.
    source = pd.read_csv(csv_folder / "AAA.csv", index_col="Date")
    for path in [*first.reports, *second.reports]:
        row = read_report(path).set_index("ticker").loc["AAA"]
        assert row["last_close"] == pytest.approx(source.loc[row["as_of"], "Close"], rel=1e-6)

    # Every session scored the sessions before it; the last logged the live RMSE.
    scorecard = read_scorecard(config.reports_dir / "scorecard.csv")
    assert sorted(set(scorecard["as_of"])) == ["2021-03-01", "2021-03-02"]
    assert len(scorecard) == 4
    assert runs[-1].data.metrics["live_sessions_20d"] == 2
    assert runs[-1].data.metrics["live_rmse_20d"] > 0


def test_backfill_past_the_data_runs_only_stored_sessions_and_fills_the_gap_later(
    mlflow_home: Path, tmp_path: Path
) -> None:
    """Sessions after the store's last date get no report; a range with none fails; an
    all-stale_data report (an older version's) does not count as done, so a rerun once the
    data has arrived fills the gap."""
    full = write_ticker_csvs(tmp_path / "full", {"AAA": 300, "BBB": 300})  # ends 2021-03-11
    csv = tmp_path / "csv"
    csv.mkdir()
    for path in full.iterdir():  # the source as it was on 03-09: the last two sessions missing
        (csv / path.name).write_text("".join(path.read_text().splitlines(True)[:-2]))
    config = tiny_config(mlflow_home, f"csv:{csv}", ["AAA", "BBB"])
    reports = config.reports_dir

    first = backfill(config, date(2021, 3, 9), date(2021, 3, 11))
    assert [p.name for p in first.reports] == ["predictions_2021-03-09.csv"]
    assert first.waiting == [date(2021, 3, 10), date(2021, 3, 11)]
    assert "no data after 2021-03-09 yet, not run: 2021-03-10, 2021-03-11" in (
        first.waiting_message
    )
    assert sorted(p.name for p in reports.glob("predictions_*.csv")) == [
        "predictions_2021-03-09.csv"
    ]

    with pytest.raises(PipelineError, match="the store ends 2021-03-09 for AAA, BBB"):
        backfill(config, date(2021, 3, 10), date(2021, 3, 11))
    assert not report_path(reports, date(2021, 3, 10)).exists()

    # What an older version wrote for 03-10 before its prices arrived: every row stale_data.
    stale = read_report(first.reports[0]).assign(
        as_of="2021-03-10", status="stale_data", predicted_close=float("nan")
    )
    stale.to_csv(report_path(reports, date(2021, 3, 10)), index=False)

    for path in full.iterdir():  # the data has arrived
        (csv / path.name).write_text(path.read_text())
    second = backfill(config, date(2021, 3, 9), date(2021, 3, 11))
    assert second.skipped == [date(2021, 3, 9)]
    assert second.waiting == [] and second.waiting_message == ""
    assert [p.name for p in second.reports] == [
        "predictions_2021-03-10.csv",
        "predictions_2021-03-11.csv",
    ]
    for path in second.reports:
        assert list(read_report(path)["status"]) == ["ok", "ok"]
