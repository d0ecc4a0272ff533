"""The temporary Prefect API of a CLI command: started for flow commands, gone with the command."""

import asyncio
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import urllib.request
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import pytest

from closecast.cli.prefect_api import runs_a_flow, temporary_api
from tests.prefect_server import seed_prefect_home
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[1]
PROC = Path("/proc")


def _children(pid: int) -> list[int]:
    """Pids whose parent is `pid`, from /proc."""
    found = []
    for stat in PROC.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cmdline(pid: int) -> str:
    try:
        return (PROC / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _servers_of(parent: int) -> list[int]:
    """The temporary API servers started by process `parent`, wherever they are now."""
    return [
        int(p.name)
        for p in PROC.glob("[0-9]*")
        if re.search(rf"closecast\.cli\.prefect_api \d+ {parent} ", _cmdline(int(p.name)))
    ]


def _running(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie waiting for its (new) parent to reap it."""
    try:
        state = (PROC / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _answering_server_of(pid: int) -> tuple[int, int] | None:
    """The pid and port of the API server `pid` started, if it answers yet."""
    for child in _children(pid):
        port = re.search(r"--port (\d+)", _cmdline(child))
        if port and _healthy(int(port.group(1))):
            return child, int(port.group(1))
    return None


def _server_of(pid: int) -> tuple[int, int]:
    """The pid and port of the API server `pid` started, once it answers (`pid` running)."""
    found = wait_for(lambda: _answering_server_of(pid), alive=lambda: _running(pid), every_s=0.2)
    assert found is not None, f"no Prefect API server under pid {pid}"
    return found


@pytest.mark.slow
@pytest.mark.skipif(not PROC.is_dir(), reason="reads processes from /proc")
def test_the_temporary_api_dies_with_a_killed_command(
    tmp_path: Path, prefect_template: Path
) -> None:
    """`kill -9` of a running `closecast run` leaves no Prefect API server behind."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect", prefect_template))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [sys.executable, "-m", "closecast.cli.app", "run", "--source", "sample"]
    command += ["--home", str(tmp_path / "home"), "--epochs", "20", "--hidden", "8"]
    cli = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    server = None
    try:
        server, _ = _server_of(cli.pid)
        cli.send_signal(signal.SIGKILL)
        cli.wait(timeout=10)
        gone = wait_for(lambda: not _running(server), every_s=0.2)
        assert gone, f"the API server {server} outlived its command"
    finally:
        if cli.poll() is None:
            cli.kill()
            cli.wait()
        if server is not None and _running(server):
            os.kill(server, signal.SIGKILL)


@pytest.mark.parametrize(
    ("argv", "runs"),
    [
        (["run", "--source", "sample"], True),
        (["predict"], True),
        (["backfill", "--start", "2024-01-02", "--end", "2024-01-03"], True),
        (["fetch"], True),
        (["run", "--help"], False),
        (["models"], False),
        (["promote", "1"], False),
        (["serve"], False),  # serve starts a full Prefect server of its own
        (["--help"], False),
        ([], False),
    ],
)
def test_only_flow_commands_get_a_temporary_api(argv: list[str], runs: bool) -> None:
    """run, predict, backfill and fetch need a Prefect API; nothing else starts one."""
    assert runs_a_flow(argv) is runs


@pytest.mark.usefixtures("prefect_harness")
def test_a_configured_api_is_used_as_it_is() -> None:
    """With a Prefect API configured (here the test harness) nothing is started."""
    with temporary_api(["run"]) as url:
        assert url is None
    assert _servers_of(os.getpid()) == []


@dataclass(frozen=True)
class FinishedCommand:
    """A `closecast fetch` that ran to its end, with its own PREFECT_HOME."""

    returncode: int
    out: str
    err: str
    servers_left: list[int]  # its API servers still running once it returned
    prefect_home: Path


@pytest.fixture(scope="module")
def finished_fetch(tmp_path_factory: pytest.TempPathFactory) -> FinishedCommand:
    """A new user's first command: its PREFECT_HOME is empty, so its API makes the database.
    (The other tests here start from a migrated copy, as every later command does: the
    migrations cost a command ~5 s of CPU once.)"""
    root = tmp_path_factory.mktemp("finished")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(root / "prefect")
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [sys.executable, "-m", "closecast.cli.app", "fetch", "--source", "sample"]
    command += ["--tickers", "^GSPC", "--home", str(root / "home")]
    cli = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    out, err = cli.communicate(timeout=180)
    left = [pid for pid in _servers_of(cli.pid) if _running(pid)] if PROC.is_dir() else []
    return FinishedCommand(cli.returncode, out, err, left, root / "prefect")


@pytest.mark.slow
@pytest.mark.skipif(not PROC.is_dir(), reason="reads processes from /proc")
def test_a_finished_command_stops_its_api_after_sending_its_logs(
    finished_fetch: FinishedCommand,
) -> None:
    """A command that ends normally stops its server; no log is lost, no dead UI link shown."""
    assert finished_fetch.returncode == 0, finished_fetch.err
    assert "^GSPC: " in finished_fetch.out
    assert "Error logging to API" not in finished_fetch.err
    assert "View at" not in finished_fetch.err
    assert finished_fetch.servers_left == []


@pytest.mark.slow
def test_the_temporary_api_registers_no_block_types(finished_fetch: FinishedCommand) -> None:
    """The server a flow command starts records its flow run but registers none of Prefect's
    block types (a run uses none; a lasting server registers them), saving their check."""
    assert finished_fetch.returncode == 0, finished_fetch.err
    with closing(sqlite3.connect(finished_fetch.prefect_home / "prefect.db")) as db:
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (1,)
        assert db.execute("SELECT count(*) FROM block_type").fetchone() == (0,)


_SETTINGS_UNDER_THE_API = """
import json
import urllib.request

from closecast.cli.prefect_api import temporary_api
from prefect.settings import get_current_settings

with temporary_api(["fetch"]) as url:
    settings = get_current_settings()
    print(url == settings.api.url, repr(settings.ui_url), settings.flows.heartbeat_frequency)
    with urllib.request.urlopen(f"{url}/admin/settings", timeout=30) as response:
        recorder = json.load(response)["server"]["services"]["task_run_recorder"]
    print(recorder["batch_size"], recorder["flush_interval"])
"""


@pytest.mark.slow  # a subprocess
def test_flow_runs_under_the_temporary_api_send_no_heartbeats(
    tmp_path: Path, prefect_template: Path
) -> None:
    """Its flow runs get its URL, no UI link and no heartbeat: nothing outlives the command to
    hear one, and a flow run's heartbeat thread holds up the run's end by up to a second.
    Its server records task runs in batches of up to 100 a second, not one transaction per
    event (each of which could make a request inside another transaction wait 2 s on a 503)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect", prefect_template))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    done = subprocess.run(
        [sys.executable, "-c", _SETTINGS_UNDER_THE_API],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "''", "None", "100", "1.0"]


def _mlflow_statuses(db: Path) -> list[str]:
    """The statuses of the MLflow runs in the SQLite store `db` (none while it is being made)."""
    if not db.is_file():
        return []
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as store:
            return [status for (status,) in store.execute("SELECT status FROM runs")]
    except sqlite3.Error:  # no table yet, or locked by the writer
        return []


def _default_sigint() -> None:
    """In the child before exec: SIGINT's default action, whatever the suite inherited."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for_training(cli: subprocess.Popen[bytes], db: Path) -> None:
    """Until the command's MLflow run is RUNNING: it trains from then on, for long."""
    statuses = wait_for(
        lambda: _mlflow_statuses(db), lambda s: s == ["RUNNING"], alive=lambda: cli.poll() is None
    )
    assert cli.poll() is None, f"the command ended with {cli.returncode} before training"
    assert statuses == ["RUNNING"]


@pytest.mark.slow
@pytest.mark.skipif(not PROC.is_dir(), reason="reads processes from /proc")
def test_ctrl_c_stops_a_run_in_one_line_with_its_mlflow_run_killed(
    tmp_path: Path, prefect_template: Path
) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while a run trains:
    exit 130 with one line and no traceback, the MLflow run KILLED, no report, no temporary
    file, and neither the command nor its Prefect API left running."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect", prefect_template))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    env["PREFECT_LOGGING_LEVEL"] = "WARNING"  # stderr holds what the interrupt prints
    home = tmp_path / "home"
    command = [sys.executable, "-m", "closecast.cli.app", "run", "--source", "sample"]
    command += ["--home", str(home), "--hidden", "8", "--batch-size", "1"]
    command += ["--epochs", "10000", "--patience", "10000"]  # trains for hours
    err_path = tmp_path / "stderr.txt"
    with err_path.open("wb") as err_file:
        cli = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
            start_new_session=True,  # its own group, so the test can send it a terminal's Ctrl-C
            # As a terminal starts it: a suite run in the background (`make test &`) ignores
            # SIGINT, and the command would inherit that and train on through the Ctrl-C.
            preexec_fn=_default_sigint,
        )
    servers: list[int] = []
    try:
        _wait_for_training(cli, home / "mlflow.db")
        servers = _servers_of(cli.pid)
        printed = err_path.stat().st_size  # before the interrupt (MLflow's notes on its tables)
        os.killpg(cli.pid, signal.SIGINT)
        cli.wait(timeout=120)
    finally:
        if cli.poll() is None:
            os.killpg(cli.pid, signal.SIGKILL)
            cli.wait()
    err = err_path.read_bytes()[printed:].decode()
    assert cli.returncode == 130, err
    assert err == "closecast: interrupted\n"
    assert _mlflow_statuses(home / "mlflow.db") == ["KILLED"]
    assert not list(home.glob("reports/predictions_*.csv"))
    assert not [p for p in home.rglob("*") if p.name.endswith(".tmp")]
    assert len(servers) == 1
    gone = wait_for(lambda: not _running(servers[0]), every_s=0.2)
    assert gone, "the Prefect API outlived the interrupted command"


_FLOW_FROM_PYTHON = """
import sys
from pathlib import Path

from prefect.flows import load_flow_from_entrypoint
from prefect.settings import get_current_settings

from closecast.core.config import DataConfig

print(get_current_settings().server.ephemeral.startup_timeout_seconds)
fetch = load_flow_from_entrypoint("closecast/flows/fetch.py:fetch")
result = fetch(data=DataConfig(source="sample", tickers=["^GSPC"]), home=Path(sys.argv[1]))
print(len(result.frames["^GSPC"]))
"""


@pytest.mark.slow
def test_a_flow_called_from_python_gives_prefects_own_server_two_minutes(
    tmp_path: Path, prefect_template: Path
) -> None:
    """With no Prefect API, a flow called from Python (a notebook, a script) in the project
    starts Prefect's ephemeral server with pyproject.toml's 120 s to come up, not 20."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect", prefect_template))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    done = subprocess.run(
        [sys.executable, "-c", _FLOW_FROM_PYTHON, str(tmp_path / "home")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    timeout_s, rows = done.stdout.split()
    assert timeout_s == "120"
    assert int(rows) > 0
    with closing(sqlite3.connect(tmp_path / "prefect" / "prefect.db")) as db:
        # the ephemeral server recorded the flow run in PREFECT_HOME's database
        assert db.execute("SELECT count(*) FROM flow_run").fetchone() == (1,)


def test_the_recorders_flush_cancelled_by_the_shutdown_is_not_logged() -> None:
    """The temporary API's log drops the task-run recorder's flush that its own shutdown
    cancelled (the batch is written by the final flush), and keeps its other errors."""
    from closecast.cli.prefect_api import RECORDER_LOGGER, quiet_shutdown

    logger = logging.getLogger(RECORDER_LOGGER)
    before = list(logger.filters)
    quiet_shutdown()
    try:
        cancelled = (asyncio.CancelledError, asyncio.CancelledError(), None)
        failed = (OSError, OSError("disk full"), None)
        records = [
            logger.makeRecord(logger.name, logging.ERROR, __file__, 1, message, (), exc_info)
            for message, exc_info in [
                ("Error flushing 1 events (1 to retry, 0 dropped)", cancelled),
                ("Error flushing 1 events (1 to retry, 0 dropped)", failed),
                ("Dropping event 1 after 4 failed attempts", None),
            ]
        ]
        assert [all(f.filter(r) for f in logger.filters) for r in records] == [False, True, True]
    finally:
        logger.filters[:] = before


@pytest.mark.slow
def test_a_run_that_predicts_nothing_ends_without_the_servers_tracebacks(
    tmp_path: Path, prefect_template: Path
) -> None:
    """A run that ends at once (nothing to predict) stops its temporary API while the API still
    records the run's task runs: one line says why it failed, and no traceback follows."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env["PREFECT_HOME"] = str(seed_prefect_home(tmp_path / "prefect", prefect_template))
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [sys.executable, "-m", "closecast.cli.app", "run", "--source", "sample"]
    command += ["--home", str(tmp_path / "home"), "--as-of", "2027-06-01"]  # the data ends 2018
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("closecast: pipeline failed: no ticker could be predicted: 2 stale_data")
    )
    assert "Traceback" not in done.stderr and "CancelledError" not in done.stderr, done.stderr
