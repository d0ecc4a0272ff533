from pathlib import Path
from typing import Any

import pytest
from mlflow import MlflowClient

from closecast.cli.app import main
from closecast.core.config import BACKFILL_EXPERIMENT
from tests.mlflow_fixtures import free_port, new_home


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["backfill", "--start", "2021-13-01", "--end", "2021-03-05"], "2021-13-01"),
        (["backfill", "--start", "2021-03-05", "--end", "2021-03-01"], "2021-03-05"),
        (["backfill", "--start", "2021-03-06", "--end", "2021-03-07"], "no XNYS session"),
        (["backfill", "--start", "2021-03-01", "--end", "2021-03-05", "--retrain-every", "0"], "0"),
        (["backfill", "--end", "2021-03-05"], "--start"),
        (["run", "--task-runner", "spark"], "'spark'"),
        (["run", "--dask-address", "tcp://h:8786"], "--task-runner dask"),
        (["run", "--task-runner", "dask", "--dask-address", "h:8786"], "'h:8786'"),
        (["predict", "--tickers", "../x"], "'../x'"),
        (["serve", "--port", "0"], "--port 0"),
        (["run", "--task-runner", "dask", "--host", "my laptop"], "'my laptop'"),
        (["serve", "--host", "300.1.1.1"], "'300.1.1.1'"),
    ],
)  # fmt: skip
def test_bad_ops_input_exits_2_with_one_line(
    tmp_path: Path,
    csv_folder: Path,
    args: list[str],
    named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Bad usage of predict/backfill/serve/--task-runner: exit 2, one line naming it, nothing made."""
    home = tmp_path / "home"
    assert main([*args, "--source", f"csv:{csv_folder}", "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert named in err
    assert not home.exists()


def test_predict_without_a_champion_exits_1_and_writes_no_report(
    tmp_path: Path, csv_folder: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """No champion yet: exit 1 with one line that says so; no store, no report."""
    home = tmp_path / "home"
    assert main(["predict", "--source", f"csv:{csv_folder}", "--home", str(home)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1].startswith("closecast: pipeline failed: no champion version")
    assert "Traceback" not in err
    assert not (home / "reports").exists() and not (home / "prices").exists()


@pytest.mark.usefixtures("quick_refusals")
@pytest.mark.parametrize(
    "command", [["models"], ["predict", "--source", "sample"]], ids=["models", "predict"]
)
def test_a_refused_tracking_server_exits_1_within_20_s(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
    connections: list[Any],
) -> None:
    """MLFLOW_TRACKING_URI on a port nobody listens on: exit 1, one line, after 4 tries of
    the port and none of MLflow's own retries."""
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy would leave it to MLflow
    assert main([*command, "--home", str(tmp_path / "home")]) == 1
    assert connections.count(("127.0.0.1", port)) == 4  # a try, then one after each wait
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"closecast: pipeline failed: MLflow at {uri} cannot be reached")
    assert line.endswith("Connection refused")


@pytest.mark.usefixtures("prefect_harness")
def test_backfill_trains_with_the_model_options_given(
    tmp_path: Path, csv_folder: Path, mlflow_template: Path
) -> None:
    """Every model and training option of backfill reaches the run's configuration."""
    home = new_home(tmp_path / "home", mlflow_template)
    given = {
        "windows.window": "5", "windows.features": "close,volume", "windows.target": "log_return",
        "lstm.hidden_size": "8", "lstm.dropout": "0.1", "train.epochs": "2",
        "train.batch_size": "16", "train.learning_rate": "0.01", "train.patience": "3",
        "train.seed": "7", "train.device": "cpu",
    }  # fmt: skip
    flags = ["--window", "--features", "--target", "--hidden", "--dropout", "--epochs"]
    flags += ["--batch-size", "--learning-rate", "--patience", "--seed", "--device"]
    options = [
        arg for flag, value in zip(flags, given.values(), strict=True) for arg in (flag, value)
    ]
    args = ["backfill", "--start", "2021-03-01", "--end", "2021-03-01", "--tickers", "AAA,BBB"]
    args += ["--source", f"csv:{csv_folder}", "--home", str(home), *options]
    assert main(args) == 0
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(BACKFILL_EXPERIMENT)
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert {name: run.data.params[name] for name in given} == given
