"""`closecast run --task-runner dask --dask-address` on a real Dask cluster on loopback.

A `dask scheduler` and two `dask worker` processes (tests/dask_cluster.py): the run gives
the default runner's report, its per-ticker steps run on the workers (and its training
does not), a worker killed mid-task is replaced by the other, and a cluster that cannot
finish a task ends the run in one line. A test that kills no worker leaves its cluster to
the next test (`clusters`).
"""

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import dask
import pandas as pd
import pytest
from mlflow import MlflowClient

from closecast.cli.app import main
from tests.dask_cluster import DaskCluster, running_dask_cluster
from tests.fixtures import read_report
from tests.mlflow_fixtures import new_home

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

TICKERS = ["^GSPC", "^IXIC"]  # the sample source's two series
# Run identity: the one column that differs between two runs of the same nightly.
RUN_IDENTITY = ["run_id"]
PER_TICKER = {"validate-prices", "build-features"}  # the steps the flow fans out


def _run(home: Path, *options: str) -> list[str]:
    return ["run", "--source", "sample", "--home", str(home),
            "--epochs", "2", "--hidden", "8", *options]  # fmt: skip


def _on(cluster: DaskCluster) -> list[str]:
    return ["--task-runner", "dask", "--dask-address", cluster.address]


@pytest.fixture(scope="module")
def default_report(
    tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path, prefect_harness: None
) -> pd.DataFrame:
    """The report of the same run on the default runner (the flow's thread pool)."""
    home = new_home(tmp_path_factory.mktemp("default"), mlflow_template)
    assert main(_run(home)) == 0
    [path] = (home / "reports").glob("predictions_*.csv")
    return read_report(path)


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], DaskCluster]]:
    """Gives a test a whole cluster with nothing armed: the last one again while its
    scheduler and both workers run (a cluster's three processes cost ~16 s of CPU to start),
    a new one after a test killed a worker. All are stopped after the module."""
    with ExitStack() as started:
        last: list[DaskCluster] = []

        def cluster() -> DaskCluster:
            if not last or not last[-1].whole():
                folder = tmp_path_factory.mktemp("cluster")
                last.append(started.enter_context(running_dask_cluster(folder)))
            last[-1].arm(None)
            return last[-1]

        yield cluster


def _report(home: Path) -> pd.DataFrame:
    [path] = (home / "reports").glob("predictions_*.csv")
    return read_report(path)


def _assert_same_report(report: pd.DataFrame, default: pd.DataFrame) -> None:
    assert list(report["ticker"]) == TICKERS and list(report["status"]) == ["ok", "ok"]
    assert list(report.columns) == list(default.columns)
    pd.testing.assert_frame_equal(report.drop(columns=RUN_IDENTITY),
                                  default.drop(columns=RUN_IDENTITY))  # fmt: skip
    assert report["run_id"].nunique() == 1 and set(report["run_id"]) != set(default["run_id"])


def test_a_run_on_a_dask_cluster_gives_the_default_runners_report(
    tmp_path: Path,
    mlflow_template: Path,
    default_report: pd.DataFrame,
    clusters: Callable[[], DaskCluster],
) -> None:
    """The same report, bar the run id; each ticker's validation and features ran on one of
    the cluster's workers, and nothing else did (training stays on the flow's machine)."""
    home, cluster = new_home(tmp_path / "home", mlflow_template), clusters()
    assert main(_run(home, *_on(cluster))) == 0
    ran = cluster.ran()
    _assert_same_report(_report(home), default_report)
    expected = {f"{step} {ticker}" for step in PER_TICKER for ticker in TICKERS}
    assert sorted(name for _, name in ran) == sorted(expected), ran
    assert {worker for worker, _ in ran} <= {"w1", "w2"}


def test_a_worker_killed_mid_task_is_replaced_by_the_other(
    tmp_path: Path,
    mlflow_template: Path,
    default_report: pd.DataFrame,
    clusters: Callable[[], DaskCluster],
) -> None:
    """The first worker to start a validation dies (SIGKILL, no nanny to restart it): Dask runs
    the task again on the other worker, and the run completes with the same report."""
    home, cluster = new_home(tmp_path / "home", mlflow_template), clusters()
    cluster.arm("once")
    assert main(_run(home, *_on(cluster))) == 0
    ran = cluster.ran()
    died = [name for name in ("w1", "w2") if not cluster.alive(name)]
    killed = cluster.killed()
    assert killed is not None and died == [killed[0]], (killed, died, ran)
    dead, killed_task = killed
    assert killed_task.startswith("validate-prices ")
    survivor = {"w1": "w2", "w2": "w1"}[dead]
    assert (survivor, killed_task) in ran  # the same task run, again, on the other worker
    assert {w for w, n in ran if n.startswith("build-features")} == {survivor}
    _assert_same_report(_report(home), default_report)


def test_a_cluster_left_without_workers_fails_the_run_in_one_line(
    tmp_path: Path,
    mlflow_template: Path,
    capfd: pytest.CaptureFixture[str],
    clusters: Callable[[], DaskCluster],
) -> None:
    """Every worker dies running validation (no nanny restarts them): none is left, and the
    run stops waiting after the no-workers timeout instead of never. Exit 1, one line, no
    traceback; nothing registered, no report. (A task that Dask gives up on, KilledWorker,
    ends the same way: tests/test_dask_runner.py.)"""
    home, cluster = new_home(tmp_path / "home", mlflow_template), clusters()
    cluster.arm("always")
    with dask.config.set({"distributed.scheduler.no-workers-timeout": "2s"}):
        capfd.readouterr()
        code = main(_run(home, *_on(cluster)))
        out, err = capfd.readouterr()
    assert code == 1, err
    assert "Traceback" not in out + err
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(
        rf"closecast: pipeline failed: validate-prices: the Dask cluster at "
        rf"{re.escape(cluster.address)} has had no worker for 2 s "
        r"\(distributed.scheduler.no-workers-timeout\) with 2 task\(s\) of this run waiting: "
        r"its workers died or left",
        last,
    ), last
    assert {name for _, name in cluster.ran()} == {f"validate-prices {t}" for t in TICKERS}
    assert not cluster.alive("w1") and not cluster.alive("w2")
    assert not list(home.glob("reports/*"))
    assert MlflowClient(f"sqlite:///{home / 'mlflow.db'}").search_registered_models() == []
