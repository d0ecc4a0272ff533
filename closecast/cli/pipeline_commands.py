"""The commands that run a flow: run, fetch, predict, backfill, serve; alerts; the task runner."""

import ipaddress
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from closecast.cli.imports import heavy_imports
from closecast.cli.options import (
    LOOPBACK,
    DaskAddressOpt,
    DaskHostOpt,
    DataOptions,
    HomeOpt,
    HostOpt,
    NotifyBlockOpt,
    NotifyUrlOpt,
    TaskRunnerOpt,
    build_config,
    parse_date,
    parse_host,
    with_data_options,
    with_model_options,
)
from closecast.core.errors import InputError
from closecast.core.formatting import head_summary
from closecast.core.schedule import NIGHTLY_SLOT

if TYPE_CHECKING:
    from mlflow import MlflowClient

NoPromoteOpt = Annotated[bool, typer.Option("--no-promote", help="Never move champion.")]
PromotionAlphaOpt = Annotated[
    float | None,
    typer.Option(
        "--promotion-alpha",
        help="Promote only when the gate's p-value is below this, e.g. 0.05 (default: off).",
    ),
]


DASHBOARD_PORT = 8787
DEFAULT_LINK = "{scheme}://{host}:{port}/status"  # distributed's own


def local_cluster_kwargs(host: str) -> dict[str, Any]:
    """A small local Dask cluster whose dashboards listen on `host` only.

    Threads, not processes: per-ticker frames are handed over without
    pickling and workers start in a second. The scheduler talks in-process;
    the scheduler's dashboard and each worker's HTTP server bind `host`, and
    the dashboard link names it (distributed would name the machine's
    network address, where nothing listens).
    """
    kwargs: dict[str, Any] = {"n_workers": 2, "threads_per_worker": 1, "processes": False}
    kwargs["dashboard_address"] = f"{host}:{DASHBOARD_PORT}"
    kwargs["worker_dashboard_address"] = f"{host}:0"
    return kwargs


def task_runner(kind: str, address: str | None, host: str = LOOPBACK):  # type: ignore[no-untyped-def]
    """The task runner --task-runner names (None: the flow's own thread pool).

    `dask` is prefect-dask's runner (`dask_runner.ClusterTaskRunner`): on the
    cluster at `address`, else on a local one. A task that keeps killing the
    cluster's workers, or a cluster left without any, ends the run in one line.
    """
    if kind not in {"default", "dask"}:
        raise InputError(f"invalid --task-runner {kind!r}: expected default or dask")
    if kind == "default":
        if address:
            raise InputError(f"--dask-address {address!r} needs --task-runner dask")
        return None
    import dask

    from closecast.cli.dask_runner import ClusterTaskRunner, no_workers_timeout_s

    logging.getLogger("distributed").setLevel(logging.WARNING)

    if address:
        if not address.startswith(("tcp://", "tls://", "inproc://", "ws://", "wss://")):
            raise InputError(f"invalid --dask-address {address!r}: expected tcp://HOST:PORT")
        return ClusterTaskRunner(address=address, no_workers_timeout_s=no_workers_timeout_s())
    # The link is formatted from the scheduler's address, which is in-process: name the host
    # the dashboard listens on instead, unless it listens everywhere.
    listens_everywhere = ipaddress.ip_address(host).is_unspecified
    link = DEFAULT_LINK if listens_everywhere else f"http://{host}:{{port}}/status"
    dask.config.set({"distributed.dashboard.link": link})
    return ClusterTaskRunner(
        cluster_kwargs=local_cluster_kwargs(host), no_workers_timeout_s=no_workers_timeout_s()
    )


def open_mlflow_store(tracking_uri: str) -> "MlflowClient | None":
    """Open an existing local MLflow store now, while the temporary Prefect API starts.

    Opening it (MLflow's SQL store: its imports, the engine, the table check)
    takes 0.4-0.8 s that the flow would otherwise spend after its run has
    begun, and here its imports run with the collector off (`heavy_imports`).
    MLflow keeps the store it made for the URI, so the flow's own connection
    finds it ready. Only a SQLite file that exists is opened: a
    new store is the flow's to create, and a store that fails to open is the
    flow's connection to report, as part of its run.

    Returns:
        The client on the opened store, or None when nothing was opened.
    """
    if not tracking_uri.startswith("sqlite:///"):
        return None
    if not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return None
    from closecast.tasks.mlflow.connection import configure_mlflow

    try:
        client = configure_mlflow(tracking_uri)
        client.search_experiments(max_results=1)
    except Exception:  # the flow connects again and says what is wrong
        logging.getLogger(__name__).debug("MLflow store not opened early", exc_info=True)
        return None
    return client


def with_runner(flow, runner):  # type: ignore[no-untyped-def]
    """`flow`, on `runner` when one is given."""
    return flow if runner is None else flow.with_options(task_runner=runner)


@with_data_options()
@with_model_options
def run(
    *,
    data: DataOptions,
    home: HomeOpt = None,
    model: dict[str, Any],
    no_promote: NoPromoteOpt = False,
    promotion_alpha: PromotionAlphaOpt = None,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
    host: DaskHostOpt = LOOPBACK,
) -> None:
    """The nightly flow: fetch, validate, train, evaluate, register, predict, report."""
    config = build_config(
        home, data, model=model, no_promote=no_promote, promotion_alpha=promotion_alpha
    )
    flow_runner = task_runner(runner, dask_address, parse_host(host))
    with heavy_imports():
        from closecast.flows.nightly import nightly

        open_mlflow_store(config.mlflow_uri)

    result = with_runner(nightly, flow_runner)(config)
    typer.echo(f"report: {result.report_path}")
    typer.echo(f"mlflow run: {result.run_id}")
    by = "" if result.predicting_model == result.model else f"{result.predicting_model} "
    typer.echo(
        f"model: {result.model} v{result.version} ({result.promotion}); "
        f"predictions by {by}v{result.predicting_version}"
    )
    typer.echo(f"skill vs naive: {result.metrics['skill']:+.4f}")
    typer.echo(head_summary(result.head, result.metrics))


@with_data_options()
def fetch(
    *,
    data: DataOptions,
    home: HomeOpt = None,
) -> None:
    """Fetch and store prices only."""
    config = build_config(home, data, uses_mlflow=False)
    with heavy_imports():
        from closecast.flows.fetch import fetch as fetch_flow

    result = fetch_flow(config.data, config.home)
    for ticker in config.data.tickers:
        if ticker in result.failures:
            state = result.failures[ticker].removeprefix(f"{ticker}: ")
        elif ticker in result.frames:
            state = f"{len(result.frames[ticker])} rows fetched"
        else:
            state = "store already up to date"
        typer.echo(f"{ticker}: {state}")
    typer.echo(f"store: {config.prices_dir}")


@with_data_options()
def predict(
    *,
    data: DataOptions,
    home: HomeOpt = None,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
    host: DaskHostOpt = LOOPBACK,
) -> None:
    """Fetch and predict the next session with the champion model (no training)."""
    config = build_config(home, data)
    flow_runner = task_runner(runner, dask_address, parse_host(host))
    with heavy_imports():
        from closecast.flows.predict import predict as predict_flow
        from closecast.tasks.registry.champion import require_champion

    require_champion(config.mlflow_uri)  # fail in one line, before any flow run starts

    result = with_runner(predict_flow, flow_runner)(config)
    if result.kept_run_id:
        typer.echo(
            f"report: {result.report_path} kept, written by run {result.kept_run_id} "
            "(which trained); predict wrote nothing"
        )
        return
    typer.echo(f"report: {result.report_path}")
    typer.echo(f"mlflow run: {result.run_id or 'none (the tracking server refused one)'}")
    typer.echo(f"predictions by closecast-lstm v{result.version} (champion)")


@with_data_options(as_of=False)
@with_model_options
def backfill(
    *,
    start: Annotated[str, typer.Option("--start", help="First date, YYYY-MM-DD.")],
    end: Annotated[str, typer.Option("--end", help="Last date, YYYY-MM-DD.")],
    retrain_every: Annotated[
        int, typer.Option("--retrain-every", help="Retrain every N sessions.")
    ] = 1,
    register: Annotated[
        bool, typer.Option("--register", help="Register each trained model (default: none).")
    ] = False,
    data: DataOptions,
    home: HomeOpt = None,
    model: dict[str, Any],
    no_promote: Annotated[
        bool, typer.Option("--no-promote", help="With --register: never move champion.")
    ] = False,
    promotion_alpha: PromotionAlphaOpt = None,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
    host: DaskHostOpt = LOOPBACK,
) -> None:
    """Point-in-time runs for every XNYS session in [start, end] (experiment closecast-backfill)."""
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    assert first is not None and last is not None
    if first > last:
        raise InputError(f"--start {start} is after --end {end}")
    if retrain_every < 1:
        raise InputError(f"invalid --retrain-every {retrain_every}: expected 1 or more")
    from closecast.core.calendar import sessions_between

    if not sessions_between(first, last):
        raise InputError(f"no XNYS session between --start {start} and --end {end}")
    config = build_config(
        home, data, model=model, no_promote=no_promote, promotion_alpha=promotion_alpha
    )
    flow_runner = task_runner(runner, dask_address, parse_host(host))
    with heavy_imports():
        from closecast.flows.backfill import backfill as backfill_flow

        open_mlflow_store(config.mlflow_uri)

    result = with_runner(backfill_flow, flow_runner)(
        config, first, last, retrain_every=retrain_every, register_versions=register
    )
    for path in result.reports:
        typer.echo(f"report: {path}")
    if result.skipped:
        days = ", ".join(d.isoformat() for d in result.skipped)
        typer.echo(f"already reported, skipped: {days}")
    if result.waiting_message:
        typer.echo(result.waiting_message)
    typer.echo(f"scorecard: {config.reports_dir / 'scorecard.csv'}")


@with_data_options(as_of=False)
def serve(
    *,
    data: DataOptions,
    home: HomeOpt = None,
    port: Annotated[
        int, typer.Option("--port", help="Port of the local Prefect server (no PREFECT_API_URL).")
    ] = 4200,
    no_promote: NoPromoteOpt = False,
    runner: TaskRunnerOpt = "default",
    dask_address: DaskAddressOpt = None,
    host: HostOpt = LOOPBACK,
    notify_url: NotifyUrlOpt = None,
    notify_block: NotifyBlockOpt = None,
) -> None:
    # The docstring is the command's help; the slot in it is set from NIGHTLY_SLOT below.
    if not 1 <= port <= 65535:
        raise InputError(f"invalid --port {port}: expected 1-65535")
    from closecast.cli.alerts import notify_target

    target = notify_target(notify_url, notify_block)
    config = build_config(home, data, no_promote=no_promote)
    flow_runner = task_runner(runner, dask_address, parse_host(host))
    with heavy_imports():
        from closecast.cli.serve import serve_deployments

    serve_deployments(config, port, flow_runner, alerts=target, host=parse_host(host))


serve.__doc__ = (
    f"Serve nightly ({NIGHTLY_SLOT.at()}, cron `{NIGHTLY_SLOT.cron}`), predict and backfill "
    "until Ctrl-C; with --notify-url or --notify-block, first install the alerts."
)


def alerts(notify_url: NotifyUrlOpt = None, notify_block: NotifyBlockOpt = None) -> None:
    """Install the alerts on the Prefect server at PREFECT_API_URL (for `prefect worker`
    users; `serve` installs them itself): nightly failed, nightly late, report unhealthy."""
    from closecast.cli.alerts import install_alerts, notify_target
    from closecast.cli.prefect_api import configured_api

    target = notify_target(notify_url, notify_block)
    if target is None:
        raise InputError("give --notify-url URL or --notify-block TYPE/NAME")
    api_url = configured_api()
    if not api_url:
        raise InputError("no Prefect server: set PREFECT_API_URL to the one your worker uses")
    from closecast.cli.serve import require_api

    require_api(api_url)
    install_alerts(target)
    typer.echo(f"alerts installed on {api_url}: {target.describe()}")
