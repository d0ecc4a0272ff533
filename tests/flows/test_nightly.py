import json
import subprocess
from datetime import date, datetime
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import mlflow
import numpy as np
import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
)

from closecast.core.calendar import NEW_YORK
from closecast.core.config import MODEL_NAME
from closecast.core.errors import PipelineError
from closecast.flows.naming import schedule_slot, slot_as_of
from closecast.flows.nightly import nightly
from closecast.models.derived import extra_rows
from closecast.models.forecaster import OUTPUT_COLUMNS
from closecast.tasks.data.store import load_prices
from closecast.tasks.data.validate import validate_prices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.features import latest_rows
from closecast.tasks.reporting.report import REPORT_COLUMNS
from closecast.tasks.reporting.tracking import prices_table, table_digest
from tests.fixtures import read_report, tiny_config, write_ticker_csvs
from tests.mlflow_fixtures import point_only_training

pytestmark = pytest.mark.usefixtures("prefect_harness")
README = Path(__file__).resolve().parents[2] / "README.md"

METRICS = {
    "test_rmse",
    "test_mae",
    "test_mape",
    "test_directional_accuracy",
    "naive_rmse",
    "naive_mae",
    "skill",
    "best_val_loss",
    "epochs_trained",
    "train_seconds",
    "train_batch_size",
    "train_learning_rate",
    "rows_dropped",
    "output_scale",
}


def test_nightly_end_to_end(mlflow_home: Path, csv_folder: Path) -> None:
    """One run fetches, trains, logs, registers a champion and writes the report."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB", "SHORT"])
    result = nightly(config)

    report = read_report(result.report_path)
    assert list(report.columns) == REPORT_COLUMNS
    assert result.report_path.name == f"predictions_{report['as_of'][0]}.csv"
    assert list(report["ticker"]) == ["AAA", "BBB", "SHORT"]
    assert list(report["status"]) == ["ok", "ok", "insufficient_history"]
    ok = report[report["status"] == "ok"]
    assert ok["predicted_close"].notna().all() and (ok["predicted_close"] > 0).all()
    np.testing.assert_allclose(
        ok["predicted_return"], ok["predicted_close"] / ok["last_close"] - 1, atol=1e-6
    )
    assert set(report["model_version"]) == {1}
    assert set(report["run_id"]) == {result.run_id}
    assert report.loc[2, "message"] != "" and np.isnan(report.loc[2, "predicted_close"])

    client = configure_mlflow(config.mlflow_uri)  # tracking and registry both
    run = client.get_run(result.run_id)
    assert set(run.data.metrics) >= METRICS
    assert run.data.metrics["train_batch_size"] == float(config.train.batch_size)  # few windows
    glossary = README.read_text().split("Metric glossary", 1)[1].split("\n## ", 1)[0]
    assert [m for m in run.data.metrics if f"`{m}`" not in glossary] == []
    assert run.info.status == "FINISHED"
    assert run.data.tags["as_of"] == report["as_of"][0]
    assert run.data.tags["source"] == f"csv:{csv_folder}"
    assert len(run.data.tags["data_sha256"]) == 64
    assert run.data.params["train.epochs"] == "2"
    assert run.data.params["lstm.hidden_size"] == "8"
    # named after what it registered, described, with its source and commit
    assert run.info.run_name == f"nightly {report['as_of'][0]} · v1 champion"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith(f"Nightly run for as_of {report['as_of'][0]} on 3 tickers (AAA, BBB")
    assert f"skill against the naive forecast is {run.data.metrics['skill']:+.4f}" in note
    assert "Registered as v1: champion — first version (interval score " in note
    assert run.data.tags["mlflow.source.name"] == "closecast/flows/nightly.py:nightly"
    assert run.data.tags["mlflow.source.type"] == "JOB"
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
    assert run.data.tags["mlflow.source.git.commit"] == head.stdout.strip()
    # the Prefect flow run takes the outcome into its name, as the MLflow run does; its
    # summary artifact is described and shows tomorrow's chart inline
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(run.data.tags["flow_run_id"]))
        [summary] = prefect.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["nightly-summary"]),
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
            )
        )
    assert flow_run.name == f"nightly {report['as_of'][0]} · v1 champion"
    assert summary.description == (
        f"{report['as_of'][0]} → {report['target_date'][0]}: v1 champion; closecast-lstm v1 "
        "predicted 2 of 3 tickers. Scores, moves and tomorrow's chart."
    )
    assert "](data:image/png;base64,iVBORw0KGgo" in str(summary.data)
    assert "- fan charts of the last 60 test sessions: 2 tickers in the MLflow run" in str(
        summary.data
    )
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    version = client.get_model_version(MODEL_NAME, "1")
    assert version.tags["promotion"] == "champion"
    assert "first version" in version.tags["promotion_reason"]
    assert "test_rmse" in version.description

    # what a reviewer opens: exact config, training data with its digest, curves, plots
    artifacts = client.download_artifacts(result.run_id, "", str(mlflow_home / "review"))
    assert json.loads((Path(artifacts) / "config.json").read_text()) == config.model_dump(
        mode="json"
    )
    [data] = run.inputs.dataset_inputs
    assert [t.value for t in data.tags] == ["training"]
    prices = load_prices(config.prices_dir, ["AAA", "BBB", "SHORT"], None)
    assert data.dataset.digest == table_digest(prices_table(validate_prices(prices.frames).frames))
    assert [m.step for m in client.get_metric_history(result.run_id, "val_loss")] == [1, 2]
    plots = sorted(p.name for p in (Path(artifacts) / "plots").iterdir())
    assert plots == [
        "loss_curves.png",
        "predicted_vs_actual_AAA.png",
        "predicted_vs_actual_BBB.png",
        "tomorrow.png",
    ]
    assert (Path(artifacts) / "plots" / plots[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (Path(artifacts) / "per_ticker_metrics.json").is_file()


def test_second_run_is_a_challenger_and_report_matches_pyfunc(
    mlflow_home: Path, csv_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second run registers v2 as challenger; the champion pyfunc, loaded with pickle
    disallowed, reproduces the report from raw OHLCV rows."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"])
    nightly(config)
    second = nightly(config)
    client = configure_mlflow(config.mlflow_uri)  # tracking and registry both
    assert str(client.get_model_version_by_alias(MODEL_NAME, "challenger").version) == "2"
    v2 = client.get_model_version(MODEL_NAME, "2")
    # the same data again: no test window comes after v1's, so nothing can show v1 beaten
    assert v2.tags["promotion"] == "rejected"
    second_run = client.get_run(second.run_id)
    assert second_run.info.run_name.endswith(" · v2 rejected")
    assert "no test window comes after champion v1's selection" in v2.tags["promotion_reason"]

    report = read_report(second.report_path)
    champion = str(client.get_model_version_by_alias(MODEL_NAME, "champion").version)
    assert set(report["model_version"].astype(str)) == {champion}
    mlflow.set_tracking_uri(config.mlflow_uri)
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    assert model.metadata.signature is not None
    assert model.metadata.saved_input_example_info is not None
    prices = load_prices(config.prices_dir, ["AAA", "BBB"], None)
    rows = config.windows.window + extra_rows(config.windows.features)  # its input_rows
    predicted = model.predict(latest_rows(prices.frames, ["AAA", "BBB"], rows))
    assert list(predicted.columns) == list(OUTPUT_COLUMNS)
    assert set(predicted["status"]) == {"ok"}
    assert list(predicted["ticker"]) == list(report["ticker"])
    np.testing.assert_allclose(
        predicted["predicted_close"].to_numpy(), report["predicted_close"].to_numpy(), rtol=1e-6
    )


def test_a_run_that_predicts_nothing_registers_nothing(mlflow_home: Path, csv_folder: Path) -> None:
    """as_of after the data ends: every ticker is stale, the run fails, the registry and the
    champion are as they were, and the report says why for every ticker."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"])
    first = nightly(config)
    late = config.model_copy(
        update={"data": config.data.model_copy(update={"as_of": date(2021, 6, 1)})}
    )
    with pytest.raises(PipelineError, match=r"^no ticker could be predicted: 2 stale_data"):
        nightly(late)

    client = configure_mlflow(config.mlflow_uri)
    versions = client.search_model_versions(f"name='{MODEL_NAME}'")
    assert [str(v.version) for v in versions] == ["1"]
    assert str(client.get_model_version_by_alias(MODEL_NAME, "champion").version) == "1"
    assert first.report_path.exists()
    report = read_report(config.reports_dir / "predictions_2021-06-01.csv")
    assert list(report["status"]) == ["stale_data", "stale_data"]
    assert report["predicted_close"].isna().all()
    assert (report["last_close"] > 0).all()
    assert report["message"].str.contains("before as_of 2021-06-01").all()


def test_a_champion_without_intervals_is_judged_on_test_rmse(
    mlflow_home: Path, csv_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An old point-only champion still predicts (no interval numbers) and is re-scored on
    test_rmse only; the challenger's reason says so and names both scores."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"])
    with monkeypatch.context() as patch:
        patch.setattr("closecast.tasks.modeling.training.train_model", point_only_training())
        old = nightly(config)
    old_report = read_report(old.report_path)
    assert list(old_report["status"]) == ["ok", "ok"]
    assert old_report[["lower_80", "upper_80", "lower_95", "upper_95"]].isna().all().all()

    nightly(config)
    client = configure_mlflow(config.mlflow_uri)
    reason = client.get_model_version(MODEL_NAME, "2").tags["promotion_reason"]
    assert "champion v1 has no intervals, so test_rmse decides" in reason
    assert "vs champion v1's interval score nan, test_rmse " in reason


def test_ok_rows_carry_ordered_intervals(mlflow_home: Path, csv_folder: Path) -> None:
    """Every ok row has lower_95 ≤ lower_80 ≤ predicted ≤ upper_80 ≤ upper_95; others none."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB", "SHORT"])
    result = nightly(config)
    report = read_report(result.report_path)
    bounds = ["lower_95", "lower_80", "predicted_close", "upper_80", "upper_95"]
    ok = report[report["status"] == "ok"]
    assert len(ok) == 2
    assert (ok[bounds].diff(axis=1).iloc[:, 1:] >= 0).all().all()
    assert report.loc[report["status"] != "ok", bounds].isna().all().all()
    run = configure_mlflow(config.mlflow_uri).get_run(result.run_id)
    for name in ("coverage_80", "coverage_95", "interval_score_95", "baseline_interval_score_95",
                 "interval_skill_95", "test_interval_score", "skill_pvalue"):  # fmt: skip
        assert np.isfinite(run.data.metrics[name]), name
    assert 0 <= run.data.metrics["skill_pvalue"] <= 1


SLOT = datetime(2021, 3, 9, 18, 30, tzinfo=NEW_YORK)


@pytest.mark.parametrize(
    ("as_of", "slot", "expected"),
    [
        (None, None, None),  # by hand, no as_of: the latest
        (None, SLOT, date(2021, 3, 9)),  # a weeknight slot: its own session
        (None, datetime(2021, 2, 15, 18, 30, tzinfo=NEW_YORK), date(2021, 2, 12)),  # a holiday
        (date(2021, 1, 4), SLOT, date(2021, 1, 4)),  # an as_of in the config wins
    ],
)
def test_a_scheduled_run_computes_the_session_of_its_slot(
    tmp_path: Path, as_of: date | None, slot: datetime | None, expected: date | None
) -> None:
    """No as_of and a schedule slot: the session the slot belongs to; a given as_of wins."""
    config = tiny_config(tmp_path, "sample", [], as_of=as_of)
    resolved = slot_as_of(config, slot)
    assert resolved.data.as_of == expected
    assert resolved.model_copy(update={"data": config.data}) == config  # nothing else moves


@flow(name="slot-probe")
def slot_probe() -> datetime | None:
    return schedule_slot()


def _deploy_with_slot(client: Any, probe: Any, name: str, **deployment: Any) -> UUID:
    """A deployment of `probe` on the nightly's cron, with the scheduler's run for SLOT
    placed (as it places a missed slot); its id."""
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.schedules import CronSchedule

    cron = CronSchedule(cron="30 18 * * 1-5", timezone="America/New_York")
    deployment_id = client.create_deployment(
        flow_id=client.create_flow(probe),
        name=f"{name}-{uuid4().hex[:8]}",
        schedules=[DeploymentScheduleCreate(schedule=cron)],
        **deployment,
    )
    window = {"start_time": SLOT.isoformat(), "end_time": SLOT.isoformat(), "max_runs": 1}
    path = "/deployments/{id}/schedule"
    client.request("POST", path, path_params={"id": deployment_id}, json=window)
    return deployment_id


def test_only_a_run_the_schedule_created_has_a_slot() -> None:
    """A run the scheduler created knows its slot, however late it runs; the flow called
    directly (`closecast run`) or a deployment run started by hand has none."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow

    assert slot_probe() is None
    with get_client(sync_client=True) as client:
        deployment_id = _deploy_with_slot(client, slot_probe, "probe")
        by_hand = client.create_flow_run_from_deployment(deployment_id)
        ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        (scheduled,) = [
            r for r in client.read_flow_runs(deployment_filter=ours) if r.auto_scheduled
        ]
    assert run_flow(slot_probe, flow_run=scheduled) == SLOT
    assert run_flow(slot_probe, flow_run=by_hand) is None


def test_a_scheduled_run_is_named_for_its_slot_session_even_when_it_fails_early(
    tmp_path: Path,
) -> None:
    """The name says the slot's session from the start (never `as_of=latest`), so a run
    that fails before reading the store, here every fetch failing, still says it."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.flow_engine import run_flow

    write_ticker_csvs(tmp_path / "csv", {"ZZZ": 30})  # a source that has none of the tickers
    config = tiny_config(tmp_path, f"csv:{tmp_path / 'csv'}", ["AAA"])
    with get_client(sync_client=True) as client:
        parameters = {"config": config.model_dump(mode="json")}
        deployment_id = _deploy_with_slot(client, nightly, "named", parameters=parameters)
        ours = DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        (scheduled,) = client.read_flow_runs(deployment_filter=ours)
        assert scheduled.auto_scheduled
        with pytest.raises(PipelineError):
            run_flow(nightly, flow_run=scheduled, parameters=scheduled.parameters)
        assert client.read_flow_run(scheduled.id).name == "nightly AAA as_of=2021-03-09"
