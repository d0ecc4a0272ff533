"""`closecast serve`: the three deployments, served with their schedules.

Schedules do not fire on Prefect's ephemeral API, so with no
`PREFECT_API_URL` a local Prefect server (SQLite under `PREFECT_HOME`) is
started first, waited for, and stopped again when serving ends.
"""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from core.config import PipelineConfig
from core.errors import InputError, PipelineError

if TYPE_CHECKING:
    from closecast.alerts import NotifyTarget

logger = logging.getLogger(__name__)

NIGHTLY_CRON = "30 18 * * 1-5"
NIGHTLY_TIMEZONE = "America/New_York"
STARTUP_TIMEOUT_S = 120.0
# Flow runs the runner starts at a time. One: it takes due runs oldest slot first, so late
# nightlies catch up in order (the deployment limit alone lets them race for the slot).
RUNNER_LIMIT = 1


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def require_api(api_url: str) -> None:
    """Fail in one line when no Prefect API answers at `api_url` (its /health)."""
    if not _healthy(api_url):
        raise PipelineError(
            f"no Prefect server answers at {api_url}: start it, or correct PREFECT_API_URL"
        )


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        return probe.connect_ex((host, port)) == 0


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    """SIGTERM the process and its children (it leads its own group), SIGKILL if they linger."""
    if process.poll() is not None:
        return
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def server_environment(host: str, port: int, base: Mapping[str, str]) -> dict[str, str]:
    """The environment for `prefect server start` on host:port, whose UI calls that API.

    `--port` moves only the API: the UI's API address comes from
    PREFECT_SERVER_UI_API_URL, else PREFECT_API_URL, else
    PREFECT_SERVER_API_HOST and _PORT (4200). A UI API URL the user set
    (behind a proxy) is kept; a PREFECT_API_URL is dropped, it is not this server.
    """
    env = {**base, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("PREFECT_API_URL", None)
    env["PREFECT_SERVER_API_HOST"] = host
    env["PREFECT_SERVER_API_PORT"] = str(port)
    if not (env.get("PREFECT_SERVER_UI_API_URL") or env.get("PREFECT_UI_API_URL")):
        env["PREFECT_SERVER_UI_API_URL"] = f"http://{host}:{port}/api"
    return env


@contextmanager
def local_server(
    port: int, log_path: Path, host: str = "127.0.0.1", timeout_s: float = STARTUP_TIMEOUT_S
) -> Iterator[str]:
    """Start `prefect server start` on host:port, yield its API URL, stop it on exit.

    Raises:
        InputError: the port is taken by something that is not a Prefect server.
        PipelineError: the server exited or did not become healthy in time.
    """
    api_url = f"http://{host}:{port}/api"
    if _port_in_use(host, port):
        if _healthy(api_url):
            logger.info("using the Prefect server already running at %s", api_url)
            yield api_url
            return
        raise InputError(f"port {port} is in use by something other than a Prefect server")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = server_environment(host, port, os.environ)
    command = [sys.executable, "-m", "prefect", "server", "start"]
    command += ["--host", host, "--port", str(port), "--analytics-off"]
    with log_path.open("ab") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _healthy(api_url):
            if process.poll() is not None:
                raise PipelineError(
                    f"the Prefect server exited with code {process.returncode}; see {log_path}"
                )
            if time.monotonic() > deadline:
                raise PipelineError(f"the Prefect server did not start in {timeout_s:.0f}s")
            time.sleep(0.5)
        print(f"Prefect server (pid {process.pid}) at {api_url}; log: {log_path}", flush=True)
        print(f"Prefect UI: http://{host}:{port}", flush=True)
        yield api_url
    finally:
        stop_process_group(process)
        print(f"Prefect server (pid {process.pid}) stopped", flush=True)


def build_deployments(config: PipelineConfig, task_runner: Any | None = None) -> list[Any]:
    """`nightly` on its weeknight cron, `predict` and `backfill` for manual runs.

    `nightly` allows one run at a time and queues the others (ENQUEUE, never
    cancel): late runs after downtime wait their turn, each computing its slot's session.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from flows.backfill import backfill
    from flows.nightly import nightly
    from flows.predict import predict

    flows = [nightly, predict, backfill]
    if task_runner is not None:
        flows = [f.with_options(task_runner=task_runner) for f in flows]
    parameters = {"config": config.model_dump(mode="json")}
    nightly_flow, predict_flow, backfill_flow = flows
    return [
        nightly_flow.to_deployment(
            "nightly",
            schedule=Cron(NIGHTLY_CRON, timezone=NIGHTLY_TIMEZONE),
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            parameters=parameters,
            tags=["closecast"],
            description="Retrain, gate and predict after every weekday close.",
        ),
        predict_flow.to_deployment(
            "predict",
            parameters=parameters,
            tags=["closecast"],
            description="Predict the next session with the champion; no training.",
        ),
        backfill_flow.to_deployment(
            "backfill",
            parameters=parameters,
            tags=["closecast"],
            description="Point-in-time runs for each session in [start, end].",
        ),
    ]


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve_deployments(
    config: PipelineConfig,
    port: int,
    task_runner: Any | None = None,
    alerts: "NotifyTarget | None" = None,
    host: str = "127.0.0.1",
) -> None:
    """Serve the deployments until interrupted, on PREFECT_API_URL or a local server on host;
    first install the alerts when a target is given (left as they are otherwise)."""
    from prefect import serve
    from prefect.settings import PREFECT_API_URL, temporary_settings

    api_url = os.environ.get("PREFECT_API_URL")
    if api_url:
        require_api(api_url)
    # Ctrl-C must reach us even when started in the background, where SIGINT is ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)  # stop what we started on SIGTERM too
    if api_url:
        print(f"serving on the Prefect API at {api_url}", flush=True)
        _install_alerts(alerts)
        serve(*build_deployments(config, task_runner), limit=RUNNER_LIMIT)
        return
    with local_server(port, config.home / "logs" / "prefect-server.log", host) as url:
        os.environ["PREFECT_API_URL"] = url  # the runs the runner starts inherit it
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                _install_alerts(alerts)
                serve(*build_deployments(config, task_runner), limit=RUNNER_LIMIT)
        finally:
            os.environ.pop("PREFECT_API_URL", None)


def _install_alerts(target: "NotifyTarget | None") -> None:
    from closecast.alerts import install_alerts

    if target is None:
        print("alerts: left as they are (--notify-url or --notify-block sets them)", flush=True)
        return
    install_alerts(target)
    print(
        f"alerts: nightly failed, late (22:00 New York), report unhealthy -> {target.describe()}",
        flush=True,
    )
