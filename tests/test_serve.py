import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from prefect.settings import Settings

from closecast.alerts import FAILED, LATE, UNHEALTHY
from closecast.serve import server_environment

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _deployments(api: str) -> dict[str, dict]:
    request = urllib.request.Request(
        f"{api}/deployments/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return {d["name"]: d for d in json.load(response)}
    except OSError:
        return {}


def _automations(api: str) -> list[str]:
    request = urllib.request.Request(
        f"{api}/automations/filter",
        data=b"{}",
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return [a["name"] for a in json.load(response)]


def _group_alive(pgid: int) -> bool:
    """Whether any process of the group (the server and its uvicorn child) is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_serve_starts_a_server_serves_three_deployments_and_stops_it(
    tmp_path: Path, csv_folder: Path
) -> None:
    """With no PREFECT_API_URL, serve starts a server, installs the alerts, deploys; Ctrl-C
    stops both."""
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect")
    command = [sys.executable, "-m", "closecast.cli", "serve", "--port", str(port)]
    command += ["--source", f"csv:{csv_folder}", "--home", str(tmp_path / "home")]
    command += ["--notify-url", "http://127.0.0.1:9/alerts"]
    serve = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline, found = time.monotonic() + 120, {}
        while time.monotonic() < deadline and len(found) < 3 and serve.poll() is None:
            time.sleep(1)
            found = _deployments(api)
        assert set(found) == {"nightly", "predict", "backfill"}, serve.poll()
        (schedule,) = found["nightly"]["schedules"]
        assert schedule["schedule"]["cron"] == "30 18 * * 1-5"
        assert schedule["schedule"]["timezone"] == "America/New_York"
        assert found["predict"]["schedules"] == found["backfill"]["schedules"] == []
        assert found["nightly"]["parameters"]["config"]["data"]["source"] == f"csv:{csv_folder}"
        assert set(_automations(api)) == {FAILED, LATE, UNHEALTHY}  # installed before serving
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui-settings", timeout=5) as page:
            assert json.load(page)["api_url"] == api  # the UI calls this server, not port 4200
    finally:
        serve.send_signal(signal.SIGINT)
        output, _ = serve.communicate(timeout=60)
    server_pid = int(output.split("Prefect server (pid ")[1].split(")")[0])
    assert f"Prefect UI: http://127.0.0.1:{port}" in output
    assert f"Prefect server (pid {server_pid}) stopped" in output
    assert not _group_alive(server_pid)  # the server leads its own process group
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{api}/health", timeout=2)


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
    from closecast.serve import build_deployments
    from core.config import PipelineConfig

    served = {d.name: d for d in build_deployments(PipelineConfig(home=tmp_path))}
    nightly = served["nightly"]
    assert nightly.concurrency_limit == 1
    assert nightly.concurrency_options.collision_strategy.value == "ENQUEUE"
    assert served["predict"].concurrency_limit is served["backfill"].concurrency_limit is None

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployed = {d["name"]: d for d in spec["deployments"]}
    assert deployed["nightly"]["concurrency_limit"] == {"limit": 1, "collision_strategy": "ENQUEUE"}
    assert "concurrency_limit" not in deployed["predict"] | deployed["backfill"]
