"""A real Prefect server on loopback, one per test session, for schedules and automations.

The ephemeral API of `prefect_harness` runs no scheduler and no automations;
tests of late runs and alerts need the real services, so they get a
`prefect server start` of their own (SQLite under a temporary PREFECT_HOME).
"""

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from closecast.cli.local_server import _healthy, server_environment, stop_process_group
from closecast.core.config import PipelineConfig
from tests.mlflow_fixtures import free_port
from tests.prefect_template import make_template
from tests.waiting import fail_unstarted, wait_for

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 120.0
BUSY_TRIES = 20


@pytest.fixture(scope="session")
def prefect_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty Prefect SQLite database with every migration applied (tests/prefect_template.py).
    A server started on a fresh database spends about half its start-up (~7 s of CPU here)
    migrating it; on a copy of this one it only checks it."""
    base = tmp_path_factory.getbasetemp()
    return make_template(base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base)


def seed_prefect_home(folder: Path, template: Path) -> Path:
    """`folder` as a PREFECT_HOME whose database is a copy of the migrated template."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "prefect.db")
    return folder


@pytest.fixture(scope="session")
def prefect_server(
    tmp_path_factory: pytest.TempPathFactory, prefect_template: Path
) -> Iterator[str]:
    """The API URL of a Prefect server started for this session, stopped after it."""
    root = seed_prefect_home(tmp_path_factory.mktemp("prefect-server"), prefect_template)
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env = server_environment("127.0.0.1", port, {**base, "PREFECT_HOME": str(root)})
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--analytics-off"]
    log_path = Path(root) / "server.log"
    with log_path.open("ab") as log:
        server = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    api_url = f"http://127.0.0.1:{port}/api"
    try:
        up = wait_for(
            lambda: _healthy(api_url), alive=lambda: server.poll() is None, hang_s=START_TIMEOUT_S
        )
        if not up:
            fail_unstarted("the Prefect server", server, START_TIMEOUT_S, log_path)
        yield api_url
    finally:
        stop_process_group(server, grace_s=5.0)


def api_post(api: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the API; a 503 (its SQLite busy on a loaded machine) is tried again, as
    Prefect's own client does."""
    request = urllib.request.Request(
        f"{api}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    for _ in range(BUSY_TRIES):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            time.sleep(0.5)
    raise AssertionError(f"{path}: the Prefect API answered 503 {BUSY_TRIES} times")


def delete_deployments(api_url: str) -> None:
    """Delete every deployment on the server (their runs go with them)."""
    for deployment in api_post(api_url, "/deployments/filter", {}):
        delete = urllib.request.Request(
            f"{api_url}/deployments/{deployment['id']}", method="DELETE"
        )
        urllib.request.urlopen(delete, timeout=10).close()


@pytest.fixture
def serve_api(prefect_server: str) -> Iterator[str]:
    """The session's Prefect server for a test that serves a home on it; its deployments are
    deleted after the test (a serve of another home is refused while they name this one)."""
    try:
        yield prefect_server
    finally:
        delete_deployments(prefect_server)


def serve_process(
    config: PipelineConfig, api_url: str, log_path: Path, **env: str
) -> subprocess.Popen[bytes]:
    """`tests.serve_process` for `config` on the API at `api_url`, logging to `log_path`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    environment |= {
        "PREFECT_API_URL": api_url,
        "PREFECT_HOME": str(log_path.parent / "prefect"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # the next late run starts a second after the last
        "DO_NOT_TRACK": "1",
        **env,
    }
    with log_path.open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.serve_process", config.model_dump_json()],
            cwd=ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
