import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import grimp
import pytest
from mlflow.exceptions import MlflowException

from closecast.core.config import PipelineConfig
from closecast.core.errors import PipelineError
from closecast.tasks.mlflow.connection import (
    configure_mlflow,
    connect_mlflow,
    ensure_experiment,
    unreachable,
)
from closecast.tasks.mlflow.runs import artifact_location, flatten_params, git_commit, tracking_run
from tests.mlflow_fixtures import free_port

REFUSED = (
    "API request to http://127.0.0.1:9/api/2.0/mlflow/experiments/search failed with exception "
    "HTTPConnectionPool(host='127.0.0.1', port=9): Max retries exceeded with url: "
    '/api/2.0/mlflow/experiments/search (Caused by NewConnectionError("HTTPConnection(host='
    "'127.0.0.1', port=9): Failed to establish a new connection: [Errno 111] Connection refused\"))"
)


def test_flatten_params_dots_nested_keys_and_joins_lists() -> None:
    """Nested config becomes dotted params; lists become comma-separated strings."""
    assert flatten_params({"train": {"epochs": 2}, "features": ["close", "open"], "x": None}) == {
        "train.epochs": "2",
        "features": "close,open",
        "x": "None",
    }


def test_artifact_location_is_local_only_for_sqlite(tmp_path: Path) -> None:
    """SQLite stores keep artifacts under <home>/mlartifacts; a server picks its own root."""
    local = PipelineConfig(home=tmp_path)
    assert artifact_location(local) == (tmp_path / "mlartifacts").absolute().as_uri()
    remote = PipelineConfig(home=tmp_path, tracking_uri="http://127.0.0.1:5000")
    assert artifact_location(remote) is None


@pytest.mark.parametrize(
    ("uri", "error", "says"),
    [
        ("http://127.0.0.1:9", MlflowException(REFUSED), "after 7 retries: Connection refused"),
        ("http://h:1", MlflowException("API request ... Read timed out."), "retries: no answer"),
        ("sqlite:////x/mlflow.db", OSError("unable to open database file"), ": unable to open"),
    ],
)
def test_unreachable_is_one_line_naming_the_uri(uri: str, error: Exception, says: str) -> None:
    """The error keeps the URI and the cause, without urllib3's page of detail."""
    message = str(unreachable(uri, error))
    assert message.startswith(f"MLflow at {uri} cannot be reached")
    assert says in message and "\n" not in message and len(message) < 200


def test_connect_mlflow_gives_up_after_the_configured_retries(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nobody listening: a PipelineError naming the URI, after MLFLOW_HTTP_REQUEST_MAX_RETRIES."""
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    uri = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(
        PipelineError, match=r"cannot be reached after 0 retries: Connection refused"
    ):
        connect_mlflow(uri)


@pytest.mark.usefixtures("quick_refusals")
def test_connect_mlflow_reports_a_refused_connection_without_mlflows_retries(
    monkeypatch: pytest.MonkeyPatch, connections: list[Any]
) -> None:
    """Nobody listening, MLflow's retry settings left alone: one line after 4 tries of the
    port (one, then one after each wait), and not one of MLflow's own retries."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy would leave it to MLflow
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(PipelineError) as raised:
        connect_mlflow(uri)
    assert connections.count(("127.0.0.1", port)) == 4
    assert re.fullmatch(
        rf"MLflow at {re.escape(uri)} cannot be reached after \d+ retries: Connection refused",
        str(raised.value),
    )


@pytest.mark.slow  # waits out MLflow's 7 retries
def test_connect_mlflow_keeps_mlflow_retries_for_a_server_that_accepts_but_is_silent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A port that accepts connections is left to MLflow's own (bounded) retries."""
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")  # a proxy would leave it to MLflow
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with socket.socket() as silent:  # listens, never answers: connections wait in the backlog
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(PipelineError, match=r"cannot be reached after 7 retries: no answer"):
            connect_mlflow(uri)


def _dead_pid() -> int:
    """The pid of a process that has exited and been reaped."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def test_tracking_run_marks_the_runs_of_dead_processes_killed(mlflow_home: Path) -> None:
    """RUNNING runs whose process on this host is gone become KILLED, with the reason;
    live processes, other hosts, untagged runs and runs open in this process stay RUNNING."""
    config = PipelineConfig(home=mlflow_home)
    client = configure_mlflow(config.mlflow_uri)
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    host = socket.gethostname()

    def running(pid: int | None, on: str = host) -> str:
        tags = {} if pid is None else {"closecast.pid": str(pid), "closecast.host": on}
        return client.create_run(experiment_id, tags=tags).info.run_id

    dead_pid = _dead_pid()
    dead = running(dead_pid)
    same_pid_earlier = running(os.getpid())  # a previous process that had this pid (a container)
    alive = running(os.getppid())
    elsewhere = running(dead_pid, on="another-host")
    untagged = running(None)
    with tracking_run(config, "outer", {}) as outer, tracking_run(config, "inner", {}) as inner:
        assert client.get_run(outer).info.status == "RUNNING"  # open here, not killed by inner

    for run_id, pid in ((dead, dead_pid), (same_pid_earlier, os.getpid())):
        run = client.get_run(run_id)
        assert run.info.status == "KILLED"
        reason = run.data.tags["closecast.killed_reason"]
        assert outer in reason and f"process {pid} on {host}" in reason
        assert run.data.tags["mlflow.note.content"] == reason
    for run_id in (alive, elsewhere, untagged):
        assert client.get_run(run_id).info.status == "RUNNING"
    for run_id in (outer, inner):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["closecast.pid"] == str(os.getpid())
        assert run.data.tags["closecast.host"] == host


def test_tracking_run_tags_its_source_and_the_git_commit(mlflow_home: Path) -> None:
    """A run started outside a flow is a `closecast` JOB and carries the checkout's commit."""
    config = PipelineConfig(home=mlflow_home)
    with tracking_run(config, "run", {"as_of": "2018-12-31"}) as run_id:
        pass
    tags = configure_mlflow(config.mlflow_uri).get_run(run_id).data.tags
    root = Path(__file__).resolve().parents[2]
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    assert tags["mlflow.source.type"] == "JOB"
    assert tags["mlflow.source.name"] == "closecast"
    assert tags["mlflow.source.git.commit"] == head and len(head) == 40
    assert tags["as_of"] == "2018-12-31"


def test_git_commit_is_none_outside_a_git_checkout(tmp_path: Path) -> None:
    """An installed copy (no .git beside it) gets no commit tag, and no error."""
    assert git_commit(tmp_path) is None


def test_the_registry_and_the_champion_lookup_need_no_training_code() -> None:
    """They reach MLflow through the connection module alone: importing one of them
    imports neither training, validation, run logging nor plots."""
    graph = grimp.build_graph("closecast")
    for module in (
        "closecast.tasks.registry.register",
        "closecast.tasks.registry.logged_model",
        "closecast.tasks.registry.champion",
        "closecast.tasks.registry.aliases",
    ):
        imported = graph.find_upstream_modules(module)
        assert "closecast.tasks.mlflow.connection" in imported
        unwanted = {
            "closecast.tasks.modeling.training",
            "closecast.tasks.data.validate",
            "closecast.tasks.reporting.tracking",
            "closecast.tasks.reporting.plots",
        }
        assert not imported & unwanted, module
