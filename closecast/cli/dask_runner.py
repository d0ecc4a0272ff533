"""The task runner of `--task-runner dask`: prefect-dask's, ending in one line when a cluster
cannot finish a task.

A Dask worker that dies while it runs a task is Dask's to handle: the
scheduler runs the task again on another worker, and the flow never sees it.
Two ends are not, and prefect-dask leaves both to the flow:

- **A task that keeps killing workers.** After `distributed.scheduler.allowed-failures`
  deaths (3) the scheduler gives up on it: `KilledWorker`, which Prefect logs
  with its traceback. Here it is a `PipelineError` naming the step and the
  last worker, so the command ends in one line (exit 1).
- **No worker left.** A scheduler whose workers are all gone keeps its tasks
  waiting for new ones, and the flow waits with them: for ever, unless the
  scheduler has `distributed.scheduler.no-workers-timeout` set. Here the client
  watches: once the cluster has had no worker for that long (read from the
  flow machine's Dask config, NO_WORKERS_TIMEOUT_S when it is unset) while a task of
  this flow waits, the waiting tasks are cancelled and the flow fails in one line.
  The default is long enough for an adaptive cluster (dask-kubernetes) to start
  its first pods.
"""

import threading
import time
from typing import Any

import dask
import distributed
from dask.utils import parse_timedelta
from distributed.client import FutureCancelledError
from prefect_dask import DaskTaskRunner
from prefect_dask.task_runners import PrefectDaskFuture

from closecast.core.errors import InputError, PipelineError

NO_WORKERS_TIMEOUT_S = 300.0  # an adaptive cluster scaled to zero starts its pods in minutes
WATCH_EVERY_S = 1.0
NO_WORKERS = "closecast-no-workers"  # the reason the watch cancels a task with
_STARTING = threading.Lock()  # one watch per runner, whichever thread submits first


def no_workers_timeout_s() -> float:
    """`distributed.scheduler.no-workers-timeout` of this machine's Dask config, in seconds
    (NO_WORKERS_TIMEOUT_S when unset)."""
    value = dask.config.get("distributed.scheduler.no-workers-timeout", None)
    if value is None:
        return NO_WORKERS_TIMEOUT_S
    try:
        seconds = float(parse_timedelta(value))
    except (KeyError, TypeError, ValueError):  # dask says KeyError for an unknown unit
        seconds = -1.0
    if seconds <= 0:
        raise InputError(
            f"invalid distributed.scheduler.no-workers-timeout {value!r} in the Dask config: "
            "expected a duration such as 60s"
        )
    return seconds


class ClusterFuture(PrefectDaskFuture[Any]):
    """A task's future whose result is a one-line PipelineError where the cluster gave up."""

    def __init__(self, step: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.step = step  # the task's name, e.g. validate-prices

    def result(self, timeout: float | None = None, raise_on_failure: bool = True) -> Any:
        try:
            return super().result(timeout=timeout, raise_on_failure=raise_on_failure)
        except distributed.KilledWorker as exc:
            deaths, allowed = exc.allowed_failures + 1, exc.allowed_failures
            raise PipelineError(
                f"{self.step}: the Dask workers running it died {deaths} time(s), more than "
                f"distributed.scheduler.allowed-failures ({allowed}); the last was "
                f"{exc.last_worker.address}: see its log"
            ) from exc
        except FutureCancelledError as exc:
            if exc.reason != NO_WORKERS:
                raise
            raise PipelineError(f"{self.step}: {exc.msg}") from exc


class NoWorkersWatch:
    """A thread that cancels the waiting futures once the client's cluster has had no worker
    for `timeout_s`, with a one-line reason (NO_WORKERS)."""

    def __init__(self, client: distributed.Client, timeout_s: float) -> None:
        self.client, self.timeout_s = client, timeout_s
        self._waiting: list[distributed.Future] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="dask-workers-watch", daemon=True)
        self._thread.start()

    def add(self, future: distributed.Future) -> None:
        with self._lock:
            self._waiting.append(future)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _still_waiting(self) -> list[distributed.Future]:
        with self._lock:
            self._waiting = [f for f in self._waiting if not f.done()]
            return list(self._waiting)

    def _watch(self) -> None:
        alone_since: float | None = None
        while not self._stop.wait(WATCH_EVERY_S):
            waiting = self._still_waiting()
            try:
                alone = bool(waiting) and not self.client.nthreads()
            except Exception:  # the client is closing, or lost its scheduler: not ours to say
                continue
            if not alone:
                alone_since = None
                continue
            alone_since = alone_since or time.monotonic()
            if time.monotonic() - alone_since < self.timeout_s:
                continue
            message = (
                f"the Dask cluster at {self.client.scheduler.address} has had no worker "
                f"for {self.timeout_s:g} s (distributed.scheduler.no-workers-timeout) "
                f"with {len(waiting)} task(s) of this run waiting: its workers died or left"
            )
            self.client.cancel(waiting, reason=NO_WORKERS, msg=message)
            alone_since = None


class ClusterTaskRunner(DaskTaskRunner):  # type: ignore[misc]
    """DaskTaskRunner whose futures fail in one line, and that stops waiting on a cluster
    left without workers (see the module's docstring).

    The flow carries its runner to the workers, pickled: the watch (a thread, a lock) is
    made when the runner first submits, never before.
    """

    def __init__(self, *, no_workers_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.no_workers_timeout_s = no_workers_timeout_s
        self._watch: NoWorkersWatch | None = None

    def duplicate(self) -> "ClusterTaskRunner":
        return type(self)(
            no_workers_timeout_s=self.no_workers_timeout_s,
            address=self.address,
            cluster_class=self.cluster_class,
            cluster_kwargs=self.cluster_kwargs,
            adapt_kwargs=self.adapt_kwargs,
            client_kwargs=self.client_kwargs,
            performance_report_path=self.performance_report_path,
        )

    def submit(self, task: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        submitted = super().submit(task, parameters, *args, **kwargs)
        with _STARTING:
            if self._watch is None:
                self._watch = NoWorkersWatch(self.client, self.no_workers_timeout_s)
        self._watch.add(submitted.wrapped_future)
        return ClusterFuture(
            task.name, wrapped_future=submitted.wrapped_future, task_run_id=submitted.task_run_id
        )

    def __exit__(self, *args: Any) -> None:
        if self._watch is not None:
            self._watch.stop()
            self._watch = None
        super().__exit__(*args)
