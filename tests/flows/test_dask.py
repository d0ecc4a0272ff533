from pathlib import Path

import pandas as pd
import pytest
from distributed import LocalCluster
from prefect_dask import DaskTaskRunner

from flows.nightly import nightly
from tests.conftest import read_report, tiny_config
from tests.mlflow_fixtures import new_home

pytestmark = pytest.mark.usefixtures("prefect_harness")


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
