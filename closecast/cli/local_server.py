"""`serve`'s own Prefect server: its database under the home, gone with `serve`.

Schedules do not fire on Prefect's ephemeral API, so with no
`PREFECT_API_URL` serve starts `prefect server start` (one process: uvicorn
runs in it). Its SQLite database is `<home>/prefect/prefect.db`, not
`PREFECT_HOME`'s: a home owns its deployments, and two serves on two homes
never see each other's. The server stops when serve does, and by itself
when serve is killed (`kill -9`): it watches its parent as the flow
commands' temporary API does.

Run as `python -m closecast.cli.local_server PARENT_PID ARGS...`, this module is
that server: `prefect ARGS...` while PARENT_PID lives.
"""

import logging
import os
import runpy
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

from closecast.core.errors import InputError, PipelineError

logger = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 120.0
DATABASE_SETTINGS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)


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


def server_environment(
    host: str, port: int, base: Mapping[str, str], home: Path | None = None
) -> dict[str, str]:
    """The environment for `prefect server start` on host:port, whose UI calls that API,
    with its database under `home` (unless the environment names one).

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
    if home is not None and not any(env.get(name) for name in DATABASE_SETTINGS):
        database = home / "prefect" / "prefect.db"
        env[DATABASE_SETTINGS[0]] = f"sqlite+aiosqlite:///{database}"
    return env


@contextmanager
def local_server(
    port: int,
    home: Path,
    host: str = "127.0.0.1",
    timeout_s: float = STARTUP_TIMEOUT_S,
) -> Iterator[str]:
    """Start `prefect server start` on host:port for `home`, yield its API URL, stop it on exit.

    Raises:
        InputError: the port is taken, by another Prefect server or by something else.
        PipelineError: the server exited or did not become healthy in time.
    """
    api_url = f"http://{host}:{port}/api"
    if _port_in_use(host, port):
        if _healthy(api_url):  # not ours: its database and deployments belong to someone else
            raise InputError(
                f"port {port} is held by a Prefect server this serve did not start: "
                "stop it or give another --port"
            )
        raise InputError(f"port {port} is in use by something other than a Prefect server")
    log_path = home / "logs" / "prefect-server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    env = server_environment(host, port, os.environ, home)
    command = [sys.executable, "-m", __name__, str(os.getpid()), "server", "start"]
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


if __name__ == "__main__":
    from closecast.cli.exits import watch_parent

    watch_parent(int(sys.argv[1]))  # SIGTERM (uvicorn's graceful stop) once serve is gone
    sys.argv = ["prefect", *sys.argv[2:]]
    runpy.run_module("prefect", run_name="__main__", alter_sys=True)
