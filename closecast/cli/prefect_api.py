"""A temporary Prefect API for one flow command, gone with the command even after `kill -9`.

With no Prefect API configured, Prefect starts a temporary API server
itself: lazily, from whichever thread first needs a client, and stopped only
at interpreter exit, so every killed command used to leave one running.
The flow commands start the same ephemeral app here instead, in a child
that stops as soon as its parent is gone, and point PREFECT_API_URL at it.

The listening socket is bound here and handed to the child: its port is
known at once, and the first requests wait in the socket's backlog until the
server is ready instead of failing, so the server starts while the command
is still importing its flow.

Run as `python -m closecast.cli.prefect_api FD PARENT_PID --port PORT`, this
module is that child.
"""

import asyncio
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from closecast.cli.exits import watch_parent
from closecast.cli.imports import heavy_imports

FLOW_COMMANDS = frozenset({"run", "predict", "backfill", "fetch"})
HOST = "127.0.0.1"
STOP_TIMEOUT_S = 5.0
RECORDER_LOGGER = "prefect.server.services.task_run_recorder"
NO_BLOCK_REGISTRATION = (
    "PREFECT_SERVER_REGISTER_BLOCKS_ON_START",
    "PREFECT_SERVER_MEMOIZE_BLOCK_AUTO_REGISTRATION",
)
# The task-run recorder writes task runs in batches, of up to 100 and at least once a second,
# not in one SQLite transaction per event (Prefect's default). Each of those commits could
# land inside another request's read-then-write transaction, which SQLite then refuses at
# once ("database is locked"): the API answers 503 and Prefect's client waits 2 s to ask
# again. The rate limit's slot request at the start of every download chunk met one nearly
# every time, as the recorder wrote the chunk task's own start.
RECORDER_BATCHES = {
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE": "100",
    "PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL": "1",
}


def runs_a_flow(argv: Sequence[str]) -> bool:
    """Whether the command line runs a flow (`closecast run ...`, not `run --help`)."""
    return bool(argv) and argv[0] in FLOW_COMMANDS and "--help" not in argv


def configured_api() -> str | None:
    """The Prefect API the settings name (environment, profile, prefect.toml), if any."""
    from prefect.settings import get_current_settings

    return get_current_settings().api.url


def publish_environ(values: dict[str, str]) -> dict[str, str | None]:
    """Set `values` in the environment (child processes inherit it); returns what they
    replaced, for `restore_environ`."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    return previous


def restore_environ(previous: dict[str, str | None]) -> None:
    """Put back the environment `publish_environ` replaced (unset what was unset)."""
    for name, value in previous.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@contextmanager
def temporary_api(argv: Sequence[str]) -> Iterator[str | None]:
    """For a flow command with no Prefect API configured: a temporary one, its URL.

    Yields None (and starts nothing) for other commands or when an API is
    configured. The server is stopped when the block ends, and stops itself
    when this process dies.
    """
    if (
        os.name != "posix"
        or not runs_a_flow(argv)
        or os.environ.get("PREFECT_API_URL")
        or ("prefect.settings" in sys.modules and configured_api())
    ):
        yield None
        return
    with socket.create_server((HOST, 0)) as listener:
        port = listener.getsockname()[1]
        command = [sys.executable, "-m", __name__, str(listener.fileno()), str(os.getpid())]
        # Its own session: the terminal's Ctrl-C goes to the whole foreground process group,
        # and the command, not the signal, must stop the server once the flow run has ended.
        server = subprocess.Popen(
            [*command, "--port", str(port)], pass_fds=[listener.fileno()], start_new_session=True
        )
    # Only the child holds the socket now: if it dies, requests are refused, not left waiting.
    try:
        with heavy_imports():
            configured = configured_api()
        if configured:  # set in a profile or prefect.toml: importing prefect tells
            yield None
            return
        url = f"http://{HOST}:{port}/api"
        with _published(url):
            yield url
    finally:
        stop_server(server)


@contextmanager
def _published(url: str) -> Iterator[None]:
    """PREFECT_API_URL = `url` for this process: every thread, and the processes it starts.

    The UI URL is emptied: the ephemeral server serves no UI, so a "View at"
    link would lead nowhere. Flow runs send no heartbeats: they tell a
    server that outlives the process that the run still lives, and this one
    does not outlive it; a flow run's heartbeat thread also holds up its end
    by up to a second. Logs and events still queued are sent before the
    server goes (Prefect would send them at exit, to a stopped server).
    """
    from prefect.context import refresh_global_settings_context
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
        PREFECT_UI_URL,
        temporary_settings,
    )

    previous = publish_environ({"PREFECT_API_URL": url, "PREFECT_UI_URL": ""})
    refresh_global_settings_context()  # threads without a settings context of their own
    try:
        updates = {
            PREFECT_API_URL: url,
            PREFECT_UI_URL: "",
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
        }
        with temporary_settings(updates=updates):
            try:
                yield
            finally:
                _send_queued_logs_and_events()
    finally:
        restore_environ(previous)
        refresh_global_settings_context()


def _send_queued_logs_and_events() -> None:
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        worker.drain_all(timeout=STOP_TIMEOUT_S)


def stop_server(server: subprocess.Popen[bytes]) -> None:
    """SIGTERM (uvicorn's graceful shutdown), SIGKILL if it lingers."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


class _DropCancelledFlush(logging.Filter):
    """The task-run recorder's flush cancelled by the server's own shutdown.

    When the command ends, the server stops its services while the recorder
    may be writing a batch of task-run events: the write is cancelled, the
    batch put back and written by the recorder's final flush, yet each
    cancelled write is logged as an error with two tracebacks. Events it
    gives up on are still logged ("Dropping event ..."), without one.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, asyncio.CancelledError)


def quiet_shutdown() -> None:
    """No tracebacks from the services' orderly shutdown in this server's log."""
    logging.getLogger(RECORDER_LOGGER).addFilter(_DropCancelledFlush())


def serve(fd: int, parent: int) -> None:
    """Serve Prefect's ephemeral API on the inherited socket `fd` while `parent` lives.

    It registers no block types on start: a flow command uses none, a block
    saved through the API registers its own type, and a lasting server
    (`prefect server start`, `closecast serve`) registers them all when it
    starts. The check whether they changed alone loads every installed
    Prefect collection (prefect-dask imports dask.distributed): a quarter
    second of CPU while the command imports its flow, on a machine where the
    two processes share the cores. Its task-run recorder writes in batches
    (RECORDER_BATCHES). Each setting in the environment still wins.
    """
    watch_parent(parent)  # SIGTERM (uvicorn's graceful stop) once the command is gone
    for name in NO_BLOCK_REGISTRATION:
        os.environ.setdefault(name, "false")
    for name, value in RECORDER_BATCHES.items():
        os.environ.setdefault(name, value)
    with heavy_imports():
        import uvicorn
        from prefect.server.api.server import create_app

        app = create_app(ephemeral=True, final=True)  # no UI, only the services a run needs
    quiet_shutdown()
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[socket.socket(fileno=fd)])


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
