"""A `dask worker --preload` for tests: record each Prefect task a worker runs, and die on cue.

Loaded in a worker process (`dask worker ... --preload tests.dask_worker_preload`), it
wraps the step of Prefect's task engine that calls a task's function, after the task run
has been set Running, so that:

- `CLOSECAST_DASK_RECORD=FILE`: the worker appends `WORKER_NAME<TAB>TASK_RUN_NAME` to
  FILE for every task run it starts (the proof that a task ran on this worker, not in the
  flow's own threads);
- `CLOSECAST_DASK_KILL=CUE_FILE`: a worker about to run a task named
  `CLOSECAST_DASK_KILL_TASK` (default `validate-prices`) reads CUE_FILE, which the test
  writes when it wants a death (so a cluster outlives a test that kills none): missing,
  nothing happens; `always`, the worker SIGKILLs its own process, the way a machine that
  loses power or the OOM killer ends it; `once`, only the first worker to create
  `CUE_FILE.claimed` does (created atomically, so exactly one death for the whole cluster),
  after writing `WORKER_NAME<TAB>TASK_RUN_NAME` into it. The death is mid-run for Prefect
  (the task run is Running) and mid-task for Dask (the task is processing on this worker).
"""

import os
import signal
from typing import Any

from prefect.task_engine import SyncTaskRunEngine

RECORD = "CLOSECAST_DASK_RECORD"
KILL = "CLOSECAST_DASK_KILL"
KILL_TASK = "CLOSECAST_DASK_KILL_TASK"

_worker_name = "?"
_call_task_fn = SyncTaskRunEngine.call_task_fn


def claim_marker(cue_file: str | os.PathLike[str]) -> str:
    """The file the one worker that dies on a `once` cue creates."""
    return f"{os.fspath(cue_file)}.claimed"


def _first_to_claim(marker: str, task_run_name: str) -> bool:
    """Create `marker` holding `WORKER<TAB>TASK_RUN_NAME`, unless another worker has."""
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(f"{_worker_name}\t{task_run_name}")
    return True


def _should_die(task_name: str, task_run_name: str) -> bool:
    cue_file = os.environ.get(KILL)
    if not cue_file or task_name != os.environ.get(KILL_TASK, "validate-prices"):
        return False
    try:
        with open(cue_file, encoding="utf-8") as text:
            cue = text.read().strip()
    except FileNotFoundError:
        return False
    return cue == "always" or (
        cue == "once" and _first_to_claim(claim_marker(cue_file), task_run_name)
    )


def _call_task_fn_on_cue(self: Any, *args: Any, **kwargs: Any) -> Any:
    if record := os.environ.get(RECORD):
        with open(record, "a", encoding="utf-8") as out:
            out.write(f"{_worker_name}\t{self.task_run.name}\n")
    if _should_die(self.task.name, self.task_run.name):
        os.kill(os.getpid(), signal.SIGKILL)
    return _call_task_fn(self, *args, **kwargs)


def dask_setup(worker: Any) -> None:
    """Dask's preload hook: remember the worker's name and wrap the engine's call."""
    global _worker_name
    _worker_name = str(worker.name)
    SyncTaskRunEngine.call_task_fn = _call_task_fn_on_cue  # type: ignore[method-assign]
