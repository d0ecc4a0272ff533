"""`closecast serve`: the three deployments of one home, served with their schedules.

What belongs to a home: its deployments. With no `PREFECT_API_URL` serve
starts a Prefect server whose database lives under the home
(closecast.cli.local_server); on a shared API it refuses to take over the
deployments of another home. One serve per home at a time (a lock under
it). A clean stop leaves the schedule active and the runs it scheduled in
place, so the nights missed while stopped run when serve is back.
"""

import fcntl
import logging
import os
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from closecast.cli.exits import interrupt_on_signals
from closecast.cli.local_server import _healthy as _healthy
from closecast.cli.local_server import local_server, require_api
from closecast.cli.local_server import server_environment as server_environment
from closecast.cli.local_server import stop_process_group as stop_process_group
from closecast.cli.prefect_api import publish_environ, restore_environ
from closecast.core.config import PipelineConfig
from closecast.core.errors import InputError
from closecast.core.schedule import NIGHTLY_SLOT

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

    from closecast.cli.alerts import NotifyTarget

logger = logging.getLogger(__name__)

# Flow runs the runner starts at a time. One: it takes due runs oldest slot first, so late
# nightlies catch up in order (the deployment limit alone lets them race for the slot).
RUNNER_LIMIT = 1
# The UI shows a cron in words without its time zone ("At 06:30 PM") beside a next run in the
# browser's: the description names the zone. prefect.yaml says the same (tests/test_deployments).
NIGHTLY_DESCRIPTION = (
    f"Retrain, gate and predict after every weekday close, Monday to Friday at "
    f"{NIGHTLY_SLOT.at()} time ({NIGHTLY_SLOT.timezone}; the schedule's times are "
    f"{NIGHTLY_SLOT.place}'s, whatever the browser's time zone)."
)
LOCK_NAME = "serve.lock"
T = TypeVar("T")


@contextmanager
def home_lock(home: Path) -> Iterator[None]:
    """Hold the home's serve lock while the block runs; refuse in one line if another serve
    holds it. The kernel releases it when this process ends, however it ends."""
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise InputError(
                f"home {home} is already served by serve pid {holder}: stop that one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def refuse_another_homes_deployment(config: PipelineConfig, api_url: str) -> None:
    """On a shared Prefect API: one line, before anything is changed, when `nightly/nightly`
    is served for another home (serving would point that home's nightly at this one)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name("nightly/nightly")
        except ObjectNotFound:
            return
    served = deployment.parameters.get("config", {}).get("home")
    if served is not None and Path(served).resolve() != config.home.resolve():
        raise InputError(
            f"the Prefect server at {api_url} already serves nightly for "
            f"home {served}: stop that serve and `prefect deployment delete nightly/nightly`, "
            "or serve this home without PREFECT_API_URL (its own server)"
        )


def build_deployments(
    config: PipelineConfig, task_runner: Any | None = None
) -> list["RunnerDeployment"]:
    """`nightly` on its weeknight cron, `predict` and `backfill` for manual runs.

    `nightly` allows one run at a time and queues the others (ENQUEUE, never
    cancel): late runs after downtime wait their turn, each computing its slot's session.
    """
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
    from prefect.schedules import Cron

    from closecast.flows.backfill import backfill
    from closecast.flows.nightly import nightly
    from closecast.flows.predict import predict

    flows: list[Flow[..., Any]] = [nightly, predict, backfill]
    if task_runner is not None:
        flows = [f.with_options(task_runner=task_runner) for f in flows]
    parameters = {"config": config.model_dump(mode="json")}
    nightly_flow, predict_flow, backfill_flow = flows
    deployments = [
        nightly_flow.to_deployment(
            "nightly",
            schedule=Cron(NIGHTLY_SLOT.cron, timezone=NIGHTLY_SLOT.timezone),
            concurrency_limit=ConcurrencyLimitConfig(
                limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE
            ),
            parameters=parameters,
            tags=["closecast"],
            description=NIGHTLY_DESCRIPTION,
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
    return [_called_from_sync(d) for d in deployments]


def _called_from_sync(result: T | Coroutine[Any, Any, T]) -> T:
    """What a Prefect method that dispatches on the caller (`to_deployment`) returns here:
    called from sync code, never the coroutine of its async twin."""
    assert not isinstance(result, Coroutine)
    return result


def serve_deployments(
    config: PipelineConfig,
    port: int,
    task_runner: Any | None = None,
    alerts: "NotifyTarget | None" = None,
    host: str = "127.0.0.1",
) -> None:
    """Serve the home's deployments until interrupted, on PREFECT_API_URL or a server of its
    own on host; first install the alerts when a target is given (left as they are otherwise).
    """
    api_url = os.environ.get("PREFECT_API_URL")
    with home_lock(config.home):
        if api_url:
            require_api(api_url)
            refuse_another_homes_deployment(config, api_url)
        interrupt_on_signals()  # Ctrl-C, even in the background, and SIGTERM stop what we start
        if api_url:
            print(f"serving on the Prefect API at {api_url}", flush=True)
            _serve(config, task_runner, alerts)
            return
        with local_server(port, config.home, host) as url, served_at(url):
            _serve(config, task_runner, alerts)


@contextmanager
def served_at(api_url: str) -> Iterator[None]:
    """The API and UI URLs of the server serve started, for this process and the runs its
    runner starts (they inherit the environment) while the block runs.

    The UI URL is the one this server's UI is reached at: beside the API, or behind
    the proxy its UI calls the API through (PREFECT_SERVER_UI_API_URL). A
    PREFECT_UI_URL from a profile or the environment would name another port (an
    earlier serve's), and the model card's link to the flow run (`url_for`) with it.
    """
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL, temporary_settings

    proxied = os.environ.get("PREFECT_SERVER_UI_API_URL") or os.environ.get("PREFECT_UI_API_URL")
    ui_url = (proxied or api_url).rstrip("/").removesuffix("/api")
    previous = publish_environ({"PREFECT_API_URL": api_url, "PREFECT_UI_URL": ui_url})
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url, PREFECT_UI_URL: ui_url}):
            yield
    finally:
        restore_environ(previous)


def _serve(
    config: PipelineConfig,
    task_runner: Any | None,
    alerts: "NotifyTarget | None",
) -> None:
    from prefect import serve

    _install_alerts(alerts)
    # Not paused on the way out: pausing deletes the scheduled runs, and with them the nights
    # missed while serve is stopped; left active, they run late, oldest first, on restart.
    serve(
        *build_deployments(config, task_runner),
        limit=RUNNER_LIMIT,
        pause_on_shutdown=False,
    )


def _install_alerts(target: "NotifyTarget | None") -> None:
    from closecast.cli.alerts import LATE_WITHIN, install_alerts

    if target is None:
        print("alerts: left as they are (--notify-url or --notify-block sets them)", flush=True)
        return
    install_alerts(target)
    late = NIGHTLY_SLOT.at(after=LATE_WITHIN)
    print(
        f"alerts: nightly failed, late ({late}), report unhealthy -> {target.describe()}",
        flush=True,
    )
