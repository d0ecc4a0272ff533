"""The pipeline against a real `mlflow server` on loopback (SQLite backend, served artifacts)."""

from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pytest

from closecast.cli.app import main
from closecast.core.config import MODEL_NAME, WindowConfig
from closecast.models.derived import extra_rows
from closecast.tasks.data.store import load_prices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.features import latest_rows
from closecast.tasks.registry.aliases import alias_history, current_aliases
from tests.fixtures import read_report
from tests.mlflow_fixtures import running_mlflow_server

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[tuple[str, Path]]:
    """A tracking server on a free loopback port (the test fails if it does not start)."""
    root = tmp_path_factory.mktemp("mlflow-server")
    with running_mlflow_server(root, request.getfixturevalue("mlflow_template")) as url:
        yield url, root / "artifacts"


def test_nightly_promote_and_load_against_a_tracking_server(
    mlflow_server: tuple[str, Path],
    csv_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With MLFLOW_TRACKING_URI=http://... runs, registry, artifacts and rollback all go
    through the server; nothing MLflow-related is written under --home."""
    url, artifacts = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    home = tmp_path / "home"
    run = ["run", "--source", f"csv:{csv_folder}", "--tickers", "AAA,BBB", "--home", str(home),
           "--epochs", "2", "--hidden", "8"]  # fmt: skip
    assert main(run) == 0
    assert main([*run, "--no-promote"]) == 0
    capsys.readouterr()

    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists()
    client = configure_mlflow(url)
    assert current_aliases(client) == {"champion": "1", "challenger": "2"}
    assert client.get_model_version(MODEL_NAME, "2").tags["promotion"] == "manual"
    [report_path] = (home / "reports").glob("predictions_*.csv")
    report = read_report(report_path)
    run_id = report["run_id"][0]
    assert client.get_run(run_id).inputs.dataset_inputs
    logged = {a.path for a in client.list_artifacts(run_id)}
    assert {"config.json", "plots", "per_ticker_metrics.json"} <= logged
    assert any(p.name == "weights.pt" for p in artifacts.rglob("weights.pt"))

    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    prices = load_prices(home / "prices", ["AAA", "BBB"], None)
    windows = WindowConfig()  # what the run trained on: the CLI's defaults
    rows = windows.window + extra_rows(windows.features)  # the champion's input_rows
    predicted = model.predict(latest_rows(prices.frames, ["AAA", "BBB"], rows))
    np.testing.assert_allclose(predicted["predicted_close"], report["predicted_close"], rtol=1e-6)

    assert main(["promote", "2", "--home", str(home)]) == 0
    assert main(["promote", "1", "--home", str(home)]) == 0
    assert main(["models", "--home", str(home)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        f"champion: {MODEL_NAME} v2 (was v1)",
        f"champion: {MODEL_NAME} v1 (was v2)",
    ]
    assert [line.split()[:2] for line in out[-2:]] == [["2", "challenger"], ["1", "champion"]]
    moves = [(m.alias, m.previous, m.version) for m in alias_history(client)]
    assert moves[-2:] == [("champion", "1", "2"), ("champion", "2", "1")]


@pytest.mark.parametrize(
    ("options", "start_timeout_s", "says"),
    [
        (["--no-such-option"], 180, r"mlflow server exited with code 2 before answering"),
        ([], 0, r"mlflow server did not answer within 0 s"),
    ],
    ids=["exits", "slow"],
)
def test_a_server_that_does_not_start_fails_the_test_rather_than_skipping_it(
    tmp_path: Path,
    mlflow_template: Path,
    monkeypatch: pytest.MonkeyPatch,
    options: list[str],
    start_timeout_s: int,
    says: str,
) -> None:
    """A server that exits, or is not up in time, fails the test naming its log."""
    monkeypatch.setattr("tests.mlflow_fixtures.SERVER_START_TIMEOUT_S", start_timeout_s)
    starting = running_mlflow_server(tmp_path, mlflow_template, *options)
    with pytest.raises(pytest.fail.Exception, match=says) as failed, starting:
        pass
    assert str(tmp_path / "server.log") in str(failed.value)
