"""A real Prefect server on loopback, one per test session, for schedules and automations.

The ephemeral API of `prefect_harness` runs no scheduler and no automations;
tests of late runs and alerts need the real services, so they get a
`prefect server start` of their own (SQLite under a temporary PREFECT_HOME).
"""

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from closecast.serve import _healthy, server_environment, stop_process_group
from tests.mlflow_fixtures import free_port

START_TIMEOUT_S = 120.0


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The API URL of a Prefect server started for this session, stopped after it."""
    root = tmp_path_factory.mktemp("prefect-server")
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
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(api_url):
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            assert server.poll() is None, f"the Prefect server exited: {tail}"
            assert time.monotonic() < deadline, f"no Prefect server in {START_TIMEOUT_S}s: {tail}"
            time.sleep(0.5)
        yield api_url
    finally:
        stop_process_group(server, grace_s=5.0)
