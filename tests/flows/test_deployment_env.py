import shutil
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient
from prefect.flows import load_flow_from_entrypoint

from closecast.core.config import PipelineConfig
from closecast.tasks.mlflow.connection import configure_mlflow
from tests.mlflow_fixtures import new_home

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.usefixtures("prefect_harness")


def _deployment(name: str) -> dict:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return next(d for d in spec["deployments"] if d["name"] == name)


def test_a_deployed_nightly_logs_to_the_environments_tracking_uri(
    tmp_path: Path, csv_folder: Path, mlflow_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Run as a worker runs it (prefect.yaml's parameters, through JSON, no tracking_uri),
    the nightly logs to $MLFLOW_TRACKING_URI, not to <home>/mlflow.db."""
    tracking_db = tmp_path / "tracking" / "mlflow.db"
    tracking_db.parent.mkdir()
    shutil.copyfile(mlflow_template, tracking_db)
    home = tmp_path / "home"
    monkeypatch.setenv("CLOSECAST_HOME", str(home))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tracking_db}")

    deployment = _deployment("nightly")
    parameters = dict(deployment["parameters"])
    parameters["config"] = {
        **parameters["config"],
        "data": {"source": f"csv:{csv_folder}", "tickers": ["AAA", "BBB"]},
        "lstm": {"hidden_size": 8},
        "train": {"epochs": 2, "batch_size": 64},
    }
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    config = flow.validate_parameters(parameters)["config"]
    stored = config.model_dump(mode="json")  # what the API keeps for the deployment's runs
    assert stored["tracking_uri"] is None  # the environment is not frozen into it

    result = flow(PipelineConfig.model_validate(stored))

    run = MlflowClient(f"sqlite:///{tracking_db}").get_run(result.run_id)
    assert run.data.tags["source"] == f"csv:{csv_folder}"
    assert not (home / "mlflow.db").exists()


def test_mlflow_leaves_the_environment_to_the_user(tmp_path: Path, mlflow_template: Path) -> None:
    """After MLflow is pointed at one home, a config of another home still resolves to its own
    database: MLflow's own write of $MLFLOW_TRACKING_URI does not leak into the next config."""
    first = new_home(tmp_path / "first", mlflow_template)
    configure_mlflow(PipelineConfig(home=first).mlflow_uri)
    second = PipelineConfig(home=tmp_path / "second")
    assert second.mlflow_uri == f"sqlite:///{tmp_path / 'second' / 'mlflow.db'}"
