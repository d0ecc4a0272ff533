from datetime import date
from pathlib import Path
from uuid import UUID

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from prefect.client.orchestration import get_client

from closecast.core.config import MODEL_NAME
from closecast.flows.nightly import nightly
from closecast.flows.predict import predict
from closecast.models.derived import extra_rows
from closecast.tasks.data.store import load_prices
from closecast.tasks.modeling.features import latest_rows
from tests.fixtures import read_report, tiny_config, write_ticker_csvs

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture
def folder_with_stale(tmp_path: Path) -> Path:
    """AAA and BBB up to 2021-03-11; OLD stops five sessions earlier."""
    folder = write_ticker_csvs(tmp_path / "csv", {"AAA": 300, "BBB": 300, "OLD": 300})
    old = pd.read_csv(folder / "OLD.csv")
    old.iloc[:-5].to_csv(folder / "OLD.csv", index=False)
    return folder


def test_predict_uses_the_champion_and_trains_nothing(
    mlflow_home: Path, folder_with_stale: Path
) -> None:
    """Predictions come from the champion pyfunc on point-in-time rows; OLD is stale."""
    home = mlflow_home
    source = f"csv:{folder_with_stale}"
    nightly(tiny_config(home, source, ["AAA", "BBB"], as_of=date(2021, 3, 1)))
    config = tiny_config(home, source, ["AAA", "BBB", "OLD"], as_of=date(2021, 3, 9))
    result = predict(config)

    client = MlflowClient(config.mlflow_uri)
    assert len(client.search_model_versions()) == 1  # predict registered nothing
    assert result.version == "1"
    report = read_report(result.report_path)
    assert result.report_path.name == "predictions_2021-03-09.csv"
    assert list(report["status"]) == ["ok", "ok", "stale_data"]
    assert set(report["target_date"]) == {"2021-03-10"}
    assert report["model_version"].astype(str).tolist() == ["1"] * 3
    assert set(report["run_id"]) == {result.run_id}

    mlflow.set_tracking_uri(config.mlflow_uri)
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    prices = load_prices(config.prices_dir, ["AAA", "BBB"], date(2021, 3, 9))
    rows = config.windows.window + extra_rows(config.windows.features)  # its input_rows
    expected = champion.predict(latest_rows(prices.frames, ["AAA", "BBB"], rows))
    np.testing.assert_allclose(
        report["predicted_close"][:2].to_numpy(), expected["predicted_close"], rtol=1e-6
    )
    # the run holds tomorrow's chart; the flow run is named after its session and version
    run = client.get_run(result.run_id)
    assert [a.path for a in client.list_artifacts(result.run_id, "plots")] == ["plots/tomorrow.png"]
    with get_client(sync_client=True) as prefect:
        flow_run = prefect.read_flow_run(UUID(run.data.tags["flow_run_id"]))
    assert flow_run.name == "predict 2021-03-09 · v1 champion"


def test_predict_keeps_the_report_of_a_run_that_trained(
    mlflow_home: Path, folder_with_stale: Path
) -> None:
    """A predict for an as_of the nightly reported writes nothing over that report; for
    another as_of it writes its own, which a later predict may replace."""
    source = f"csv:{folder_with_stale}"
    trained = nightly(tiny_config(mlflow_home, source, ["AAA", "BBB"], as_of=date(2021, 3, 9)))
    before = trained.report_path.read_bytes()
    client = MlflowClient(tiny_config(mlflow_home, source, ["AAA"]).mlflow_uri)
    runs = len(client.search_runs(client.search_experiments()[0].experiment_id))

    kept = predict(tiny_config(mlflow_home, source, ["AAA", "BBB"], as_of=date(2021, 3, 9)))
    assert trained.report_path.read_bytes() == before
    assert kept.report_path == trained.report_path
    assert kept.kept_run_id == trained.run_id and kept.run_id == ""
    assert len(client.search_runs(client.search_experiments()[0].experiment_id)) == runs

    later = tiny_config(mlflow_home, source, ["AAA", "BBB"], as_of=date(2021, 3, 10))
    first = predict(later)
    assert first.kept_run_id == "" and first.run_id
    assert set(read_report(first.report_path)["run_id"]) == {first.run_id}
    second = predict(later)  # a predict's report is no reason to keep one
    assert second.report_path == first.report_path and second.kept_run_id == ""
    assert set(read_report(second.report_path)["run_id"]) == {second.run_id}
