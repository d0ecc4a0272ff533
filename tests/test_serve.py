import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow import MlflowClient
from prefect.settings import Settings

from closecast.cli.alerts import FAILED, LATE, UNHEALTHY, WAITING
from closecast.cli.local_server import server_environment
from tests.fixtures import tiny_config
from tests.prefect_server import api_post, seed_prefect_home, serve_process
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _deployments(api: str) -> dict[str, dict]:
    try:
        return {d["name"]: d for d in api_post(api, "/deployments/filter", {})}
    except OSError:  # the server is not up yet
        return {}


def _automations(api: str) -> list[str]:
    return [a["name"] for a in api_post(api, "/automations/filter", {})]


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group (the server and its uvicorn child) is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize(
    ("user", "ui_api"),
    [
        ({}, "http://127.0.0.1:4321/api"),
        ({"PREFECT_API_URL": "http://elsewhere:4200/api"}, "http://127.0.0.1:4321/api"),
        ({"PREFECT_UI_API_URL": "https://proxy.example/api"}, "https://proxy.example/api"),
    ],
)
def test_the_local_server_ui_calls_the_api_on_its_port(
    monkeypatch: pytest.MonkeyPatch, user: dict[str, str], ui_api: str
) -> None:
    """Prefect's settings under serve's environment: API on --port, UI calling it."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "PREFECT_UI"))}
    env = server_environment("127.0.0.1", 4321, {**base, **user})
    assert "PREFECT_API_URL" not in env  # another server's address is not this one's
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert (settings.server.api.host, settings.server.api.port) == ("127.0.0.1", 4321)
    assert settings.server.ui.api_url == ui_api


def test_nightly_runs_one_at_a_time_and_queues_the_rest_served_or_deployed(
    tmp_path: Path,
) -> None:
    """serve's nightly and prefect.yaml's both allow one run at a time and queue the others
    (never cancel them); predict and backfill have no limit."""
    from closecast.cli.serve import build_deployments
    from closecast.core.config import PipelineConfig

    served = {d.name: d for d in build_deployments(PipelineConfig(home=tmp_path))}
    nightly = served["nightly"]
    assert nightly.concurrency_limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert served["predict"].concurrency_limit is served["backfill"].concurrency_limit is None

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployed = {d["name"]: d for d in spec["deployments"]}
    assert deployed["nightly"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert "concurrency_limit" not in deployed["predict"] | deployed["backfill"]


def _serve_cli(
    home: Path, port: int, source: str, prefect_home: Path, *options: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(prefect_home)  # one PREFECT_HOME for every serve, as on a machine
    command = [sys.executable, "-m", "closecast.cli.app", "serve", "--port", str(port)]
    command += ["--source", source, "--home", str(home), *options]
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _serve_running(serve: subprocess.Popen[Any]) -> Callable[[], bool]:
    return lambda: serve.poll() is None


def _wait_for_nightly(api: str, serve: subprocess.Popen[str]) -> dict:
    found = wait_for(
        lambda: _deployments(api), lambda d: "nightly" in d, alive=_serve_running(serve)
    )
    assert "nightly" in found, serve.poll()
    return found["nightly"]


@pytest.mark.slow
def test_each_home_owns_its_prefect_server_serves_it_alone_and_takes_it_along_on_kill_9(
    tmp_path: Path, csv_folder: Path, prefect_template: Path
) -> None:
    """Two homes, two serves: each starts a server of its own, installs the alerts and
    deploys nightly (its cron), predict and backfill; each server's database is under its
    home (A's is there from an earlier serve, B's is made) and holds that home's deployments
    only; a second serve of a home, or one on a port another serve's server holds, is refused
    in one line; Ctrl-C of serve stops its server, and so does `kill -9`."""
    home_a, home_b, prefect_home = tmp_path / "HA", tmp_path / "HB", tmp_path / "prefect"
    seed_prefect_home(home_a / "prefect", prefect_template)  # served before: migrated already
    port_a, port_b = _free_port(), _free_port()
    api_a, api_b = f"http://127.0.0.1:{port_a}/api", f"http://127.0.0.1:{port_b}/api"
    serve_a = _serve_cli(home_a, port_a, f"csv:{csv_folder}", prefect_home)
    serve_b = None
    try:
        _wait_for_nightly(api_a, serve_a)
        alerts = ("--notify-url", "http://127.0.0.1:9/alerts")
        serve_b = _serve_cli(home_b, port_b, "sample", prefect_home, *alerts)
        _wait_for_nightly(api_b, serve_b)
        found = wait_for(
            lambda: _deployments(api_b), lambda d: len(d) >= 3, alive=_serve_running(serve_b)
        )
        assert set(found) == {"nightly", "predict", "backfill"}, serve_b.poll()
        (schedule,) = found["nightly"]["schedules"]
        assert schedule["schedule"]["cron"] == "30 18 * * 1-5"
        assert schedule["schedule"]["timezone"] == "America/New_York"
        assert found["predict"]["schedules"] == found["backfill"]["schedules"] == []
        assert set(_automations(api_b)) == {FAILED, LATE, UNHEALTHY, WAITING}  # before serving
        assert _automations(api_a) == []  # B's alerts are B's server's
        with urllib.request.urlopen(f"http://127.0.0.1:{port_b}/ui-settings", timeout=5) as page:
            assert json.load(page)["api_url"] == api_b  # the UI calls this server, not port 4200
        nightly_a, nightly_b = _deployments(api_a)["nightly"], _deployments(api_b)["nightly"]
        assert nightly_a["parameters"]["config"]["home"] == str(home_a)
        assert nightly_a["parameters"]["config"]["data"]["source"] == f"csv:{csv_folder}"
        assert nightly_b["parameters"]["config"]["home"] == str(home_b)
        assert nightly_a["id"] != nightly_b["id"]
        for home in (home_a, home_b):
            assert _stored_deployments(home / "prefect" / "prefect.db") == {
                ("nightly", str(home)),
                ("predict", str(home)),
                ("backfill", str(home)),
            }

        again = _serve_cli(home_a, _free_port(), "sample", prefect_home)
        out, _ = again.communicate(timeout=120)
        assert (again.returncode, out) == (
            2,
            f"closecast: error: home {home_a} is already served by serve pid {serve_a.pid}: "
            "stop that one first\n",
        )
        taken = _serve_cli(tmp_path / "HC", port_a, "sample", prefect_home)
        out, _ = taken.communicate(timeout=120)
        assert (taken.returncode, out) == (
            2,
            f"closecast: error: port {port_a} is held by a Prefect server this serve did not "
            "start: stop it or give another --port\n",
        )
        assert _deployments(api_a)["nightly"]["parameters"]["config"]["home"] == str(home_a)

        serve_a.kill()  # kill -9: no cleanup of its own
        serve_a.wait(timeout=10)
        assert wait_for(lambda: not _port_open(port_a))  # its server went with it

        serve_b.send_signal(signal.SIGINT)
        output, _ = serve_b.communicate(timeout=60)
        server_pid = int(output.split("Prefect server (pid ")[1].split(")")[0])
        assert f"Prefect UI: http://127.0.0.1:{port_b}" in output
        assert f"Prefect server (pid {server_pid}) stopped" in output
        assert not _group_alive(server_pid)  # the server leads its own process group
        with pytest.raises(OSError):
            urllib.request.urlopen(f"{api_b}/health", timeout=2)
    finally:
        for serve in (serve_a, serve_b):
            if serve is not None and serve.poll() is None:
                serve.send_signal(signal.SIGINT)
                serve.communicate(timeout=60)


def _stored_deployments(database: Path) -> set[tuple[str, str]]:
    """(name, home) of each deployment in a Prefect SQLite database, read from the file."""
    with closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT name, parameters FROM deployment").fetchall()
    return {(name, json.loads(parameters)["config"]["home"]) for name, parameters in rows}


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def _run_deployment(api: str, deployment_id: str, config: dict[str, Any]) -> dict[str, Any]:
    """`prefect deployment run -p config=...`: a manual run with these parameters, once ended."""
    body = {"parameters": {"config": config}}
    created = api_post(api, f"/deployments/{deployment_id}/create_flow_run", body)

    def read() -> dict[str, Any]:
        with urllib.request.urlopen(f"{api}/flow_runs/{created['id']}", timeout=10) as response:
            return dict(json.load(response))

    ended = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
    return wait_for(read, lambda run: run["state_type"] in ended, every_s=1)


@pytest.mark.slow
def test_a_manual_run_with_a_partial_config_runs_on_the_served_home_and_fails_in_one_line(
    serve_api: str, mlflow_home: Path, csv_folder: Path, tmp_path: Path
) -> None:
    """A deployment run given only some fields takes the rest (home, source, model) from the
    served config; an expected failure is one line in serve's log, no traceback; a serve of
    another home on the same API is refused in one line."""
    config = tiny_config(mlflow_home, f"csv:{csv_folder}", ["AAA", "BBB"])
    stray = tmp_path / "stray"  # where a run without serve's home would write ($CLOSECAST_HOME)
    log_path = tmp_path / "serve.log"
    serve = serve_process(config, serve_api, log_path, CLOSECAST_HOME=str(stray))
    try:
        names = {"nightly", "predict", "backfill"}
        found = wait_for(
            lambda: _deployments(serve_api), lambda d: set(d) == names, alive=_serve_running(serve)
        )
        assert set(found) == names and serve.poll() is None, log_path.read_text()

        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
        command = [sys.executable, "-m", "closecast.cli.app", "serve", "--source", "sample"]
        command += ["--home", str(tmp_path / "other")]
        other = subprocess.run(
            command,
            cwd=ROOT,
            env={**env, "PREFECT_API_URL": serve_api},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (other.returncode, other.stdout) == (2, "")
        assert other.stderr == (
            f"closecast: error: the Prefect server at {serve_api} already serves nightly for "
            f"home {mlflow_home}: stop that serve and `prefect deployment delete "
            "nightly/nightly`, or serve this home without PREFECT_API_URL (its own server)\n"
        )

        # No champion yet in the served home: an expected PipelineError.
        failed = _run_deployment(serve_api, found["predict"]["id"], {"train": {"epochs": 1}})
        partial = {"data": {"as_of": "2021-03-10"}, "train": {"epochs": 1}}
        done = _run_deployment(serve_api, found["nightly"]["id"], partial)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)

    assert (failed["state_type"], done["state_type"]) == ("FAILED", "COMPLETED")
    log = log_path.read_text()
    assert "no champion version of closecast-lstm" in log
    assert "Traceback" not in log
    assert not stray.exists()
    assert (mlflow_home / "reports" / "predictions_2021-03-10.csv").is_file()
    mlflow = MlflowClient(config.mlflow_uri)
    experiment = mlflow.get_experiment_by_name(config.experiment)
    assert experiment is not None
    (run,) = mlflow.search_runs([experiment.experiment_id])
    assert run.data.params["train.epochs"] == "1"  # the run's own field
    # the rest: serve's
    assert (run.data.params["home"], run.data.params["lstm.hidden_size"]) == (str(mlflow_home), "8")


@pytest.mark.parametrize("user_database", [None, "sqlite+aiosqlite:////srv/prefect/shared.db"])
def test_the_local_server_database_lives_under_the_home_unless_one_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, user_database: str | None
) -> None:
    """Prefect's settings under serve's environment: the home's own database, so another
    home's serve (same PREFECT_HOME) never sees these deployments; a database the user names
    wins."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    if user_database:
        base["PREFECT_SERVER_DATABASE_CONNECTION_URL"] = user_database
    env = server_environment("127.0.0.1", 4321, base, tmp_path / "home")
    for name in list(os.environ):
        if name.startswith("PREFECT_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    url = Settings().server.database.connection_url
    expected = (
        user_database or f"sqlite+aiosqlite:///{tmp_path / 'home' / 'prefect' / 'prefect.db'}"
    )
    assert (url.get_secret_value() if hasattr(url, "get_secret_value") else url) == expected


@pytest.mark.parametrize(
    ("user", "ui"),
    [
        ({"PREFECT_UI_URL": "http://127.0.0.1:4200"}, "http://127.0.0.1:4321"),
        ({"PREFECT_SERVER_UI_API_URL": "https://proxy.example/api"}, "https://proxy.example"),
    ],
)
def test_serve_links_flow_runs_to_the_ui_it_serves(
    monkeypatch: pytest.MonkeyPatch, user: dict[str, str], ui: str
) -> None:
    """While serve serves its own server (here on port 4321), a flow run's link (`url_for`,
    what a model card links) names that server's UI, not a UI URL left from an earlier
    serve on port 4200; behind a proxy, the proxy's. Afterwards the environment is as it was."""
    from prefect.utilities.urls import url_for

    from closecast.cli.serve import served_at

    for name, value in user.items():
        monkeypatch.setenv(name, value)
    run_id = "123e4567-e89b-12d3-a456-426614174000"
    with served_at("http://127.0.0.1:4321/api"):
        assert url_for("flow-run", obj_id=run_id) == f"{ui}/runs/flow-run/{run_id}"
        assert os.environ["PREFECT_UI_URL"] == ui  # the runs the runner starts inherit it
        assert os.environ["PREFECT_API_URL"] == "http://127.0.0.1:4321/api"
    assert os.environ.get("PREFECT_UI_URL") == user.get("PREFECT_UI_URL")
    assert "PREFECT_API_URL" not in os.environ or os.environ["PREFECT_API_URL"] != (
        "http://127.0.0.1:4321/api"
    )
