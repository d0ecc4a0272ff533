"""The flow commands' own steps: an existing MLflow store opened before the flow run begins."""

from pathlib import Path

from closecast.cli.pipeline_commands import open_mlflow_store


def test_an_existing_store_is_opened_and_answers(mlflow_home: Path) -> None:
    """A SQLite store that exists is opened before the flow, ready for its connection."""
    client = open_mlflow_store(f"sqlite:///{mlflow_home / 'mlflow.db'}")
    assert client is not None
    assert [e.name for e in client.search_experiments()] == ["Default"]


def test_a_missing_store_is_left_for_the_flow_to_create(tmp_path: Path) -> None:
    """No database file: nothing is opened and nothing is created (a run that fails before
    MLflow leaves no database behind)."""
    uri = f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert open_mlflow_store(uri) is None
    assert not (tmp_path / "home").exists()


def test_a_store_that_cannot_open_is_left_for_the_flow_to_report(tmp_path: Path) -> None:
    """A file that is no database: no error here; the flow's connection reports it in its run."""
    broken = tmp_path / "mlflow.db"
    broken.write_bytes(b"not a database " * 100)
    assert open_mlflow_store(f"sqlite:///{broken}") is None
    assert broken.read_bytes() == b"not a database " * 100


def test_a_tracking_server_is_not_contacted_before_the_flow() -> None:
    """An http tracking URI is the flow's to contact (with its retries and one-line errors)."""
    assert open_mlflow_store("http://127.0.0.1:9/") is None
