"""The runner of `--task-runner dask`, without a cluster: its timeout, its copies, its pickle,
its one-line errors.

The runner on a real cluster (a worker killed, none left) is in
tests/integration/test_dask_cluster.py.
"""

import pickle
from types import SimpleNamespace
from uuid import uuid4

import dask
import pytest
from distributed import KilledWorker
from distributed.client import FutureCancelledError

from closecast.cli.dask_runner import (
    NO_WORKERS,
    NO_WORKERS_TIMEOUT_S,
    ClusterFuture,
    ClusterTaskRunner,
    no_workers_timeout_s,
)
from closecast.cli.pipeline_commands import task_runner
from closecast.core.errors import InputError, PipelineError


@pytest.mark.parametrize(
    ("setting", "seconds"),
    [(None, NO_WORKERS_TIMEOUT_S), ("90s", 90.0), ("2 minutes", 120.0), (45, 45.0)],
)
def test_the_no_workers_timeout_is_dasks_own_setting(
    setting: str | int | None, seconds: float
) -> None:
    """distributed.scheduler.no-workers-timeout of the flow machine's Dask config, in
    seconds; unset (Dask's default), closecast's default."""
    with dask.config.set({"distributed.scheduler.no-workers-timeout": setting}):
        assert no_workers_timeout_s() == seconds
        runner = task_runner("dask", "tcp://127.0.0.1:8786")
    assert isinstance(runner, ClusterTaskRunner)
    assert runner.no_workers_timeout_s == seconds


@pytest.mark.parametrize("setting", ["soon", "0s", "-5s"])
def test_a_bad_no_workers_timeout_is_bad_input_naming_it(setting: str) -> None:
    """A value that is no positive duration: InputError (exit 2) naming the value."""
    with (
        dask.config.set({"distributed.scheduler.no-workers-timeout": setting}),
        pytest.raises(
            InputError, match=f"invalid distributed.scheduler.no-workers-timeout '{setting}'"
        ),
    ):
        task_runner("dask", "tcp://127.0.0.1:8786")


def test_the_runner_pickles_and_copies_with_its_timeout() -> None:
    """The flow carries its runner to the workers, pickled; Prefect starts a copy of it."""
    runner = ClusterTaskRunner(address="tcp://127.0.0.1:8786", no_workers_timeout_s=7.0)
    copy = pickle.loads(pickle.dumps(runner.duplicate()))
    assert isinstance(copy, ClusterTaskRunner)
    assert (copy.address, copy.no_workers_timeout_s) == ("tcp://127.0.0.1:8786", 7.0)


class _Failing:
    """A distributed future whose result raises `error`."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def result(self, timeout: float | None = None) -> None:
        raise self.error


def _future(error: BaseException) -> ClusterFuture:
    return ClusterFuture("validate-prices", wrapped_future=_Failing(error), task_run_id=uuid4())


def test_a_task_dask_gave_up_on_is_a_one_line_pipeline_error() -> None:
    """KilledWorker (the task killed allowed-failures + 1 workers): PipelineError naming the
    step, the deaths and the last worker."""
    killed = KilledWorker("validate_prices-1f2e", SimpleNamespace(address="tcp://10.0.0.7:4001"), 3)
    with pytest.raises(PipelineError) as failed:
        _future(killed).result()
    assert str(failed.value) == (
        "validate-prices: the Dask workers running it died 4 time(s), more than "
        "distributed.scheduler.allowed-failures (3); the last was tcp://10.0.0.7:4001: see its log"
    )


def test_only_the_watchs_cancellation_becomes_a_pipeline_error() -> None:
    """Cancelled by the no-workers watch: PipelineError with its message; cancelled for any
    other reason: the cancellation itself."""
    ours = FutureCancelledError("validate_prices-1f2e", NO_WORKERS, "no worker for 2 s")
    with pytest.raises(PipelineError, match=r"^validate-prices: no worker for 2 s$"):
        _future(ours).result()
    theirs = FutureCancelledError("validate_prices-1f2e", "client-closed")
    with pytest.raises(FutureCancelledError, match="client-closed"):
        _future(theirs).result()
