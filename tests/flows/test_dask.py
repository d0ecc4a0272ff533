import threading
from collections.abc import Iterator
from pathlib import Path

import dask
import pandas as pd
import psutil
import pytest
from distributed import LocalCluster
from prefect_dask import DaskTaskRunner

from closecast.cli.pipeline_commands import DEFAULT_LINK, local_cluster_kwargs, task_runner
from closecast.flows.nightly import nightly
from tests.fixtures import read_report, tiny_config
from tests.mlflow_fixtures import new_home

pytestmark = pytest.mark.usefixtures("prefect_harness")


@pytest.fixture(autouse=True)
def _dashboard_link() -> Iterator[None]:
    """`task_runner` sets the process's dashboard link, as a command does once: restore it."""
    saved = dask.config.get("distributed.dashboard.link")
    yield
    dask.config.set({"distributed.dashboard.link": saved})


def test_nightly_on_a_local_dask_cluster_gives_the_default_runners_report(
    tmp_path: Path, csv_folder: Path, mlflow_template: Path
) -> None:
    """Per-ticker tasks run on a real LocalCluster; the report equals the thread pool's."""
    source, tickers = f"csv:{csv_folder}", ["AAA", "BBB", "SHORT"]
    default = nightly(tiny_config(new_home(tmp_path / "threads", mlflow_template), source, tickers))
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False) as cluster:
        runner = DaskTaskRunner(address=cluster.scheduler_address)
        on_dask = nightly.with_options(task_runner=runner)(
            tiny_config(new_home(tmp_path / "dask", mlflow_template), source, tickers)
        )
        ran = cluster.scheduler.task_prefixes
        # validate and features for each of the 3 tickers went through the scheduler
        assert sum(sum(p.state_counts.values()) for p in ran.values()) >= 6

    same = ["as_of", "target_date", "ticker", "last_close", "predicted_close", "status", "message"]
    pd.testing.assert_frame_equal(
        read_report(default.report_path)[same], read_report(on_dask.report_path)[same]
    )
    assert list(read_report(on_dask.report_path)["status"]) == ["ok", "ok", "insufficient_history"]


def _listening(process: psutil.Process) -> set[tuple[str, int]]:
    return {
        (c.laddr.ip, c.laddr.port)
        for c in process.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_the_local_cluster_listens_on_loopback_only(
    tmp_path: Path, csv_folder: Path, mlflow_template: Path
) -> None:
    """`--task-runner dask` with no --host: every socket the run opens listens on 127.0.0.1."""
    process = psutil.Process()
    before = _listening(process)
    seen: set[tuple[str, int]] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(_listening(process) - before)
            done.wait(0.05)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = tiny_config(new_home(tmp_path, mlflow_template), f"csv:{csv_folder}", ["AAA", "BBB"])
    try:
        nightly.with_options(task_runner=task_runner("dask", None))(config)
    finally:
        done.set()
        watcher.join()
    assert seen, "the cluster opened no listening socket: the watch saw nothing"
    assert {ip for ip, _ in seen} == {"127.0.0.1"}, seen


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])
def test_host_moves_the_dashboards_and_their_link(host: str) -> None:
    """--host picks where the dashboards listen; the link names loopback, not the LAN address."""
    kwargs = local_cluster_kwargs(host)
    assert kwargs["dashboard_address"] == f"{host}:8787"
    assert kwargs["worker_dashboard_address"] == f"{host}:0"
    task_runner("dask", None, host)
    expected = {"127.0.0.1": "http://127.0.0.1:{port}/status", "0.0.0.0": DEFAULT_LINK}
    assert dask.config.get("distributed.dashboard.link") == expected[host]
