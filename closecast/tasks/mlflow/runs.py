"""One MLflow run per pipeline run: its params, source and tags, and runs left by killed
processes marked KILLED by the next run on their host."""

import logging
import os
import posixpath
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag, SourceType
from mlflow.exceptions import MlflowException
from mlflow.utils.mlflow_tags import (
    MLFLOW_GIT_COMMIT,
    MLFLOW_RUN_NOTE,
    MLFLOW_SOURCE_NAME,
    MLFLOW_SOURCE_TYPE,
)
from prefect.exceptions import ExternalSignal

from closecast.core.config import PipelineConfig
from closecast.tasks.mlflow.auth import refusal_status, refusals_as_errors, refused_request
from closecast.tasks.mlflow.connection import connect_mlflow, ensure_experiment

logger = logging.getLogger(__name__)

MAX_PARAM_LENGTH = 6000


# Who runs a run: a RUNNING run whose process is gone was killed (see mark_killed_runs).
PID_TAG = "closecast.pid"


HOST_TAG = "closecast.host"


KILLED_TAG = "closecast.killed_reason"


_OPEN_RUNS: set[str] = set()  # runs open in this process


PROJECT_ROOT = Path(__file__).resolve().parents[3]  # a git checkout when not installed


def flatten_params(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> dotted MLflow params (`train.epochs`), lists joined by commas."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif isinstance(value, list):
            flat[name] = ",".join(map(str, value))[:MAX_PARAM_LENGTH]
        else:
            flat[name] = str(value)[:MAX_PARAM_LENGTH]
    return flat


def artifact_location(config: PipelineConfig) -> str | None:
    """Artifacts under `<home>/mlartifacts` for a local SQLite store; None otherwise.

    With a tracking server (`http://...`) or a shared database the server's
    own default artifact root applies (with `--serve-artifacts` that is
    `mlflow-artifacts:/`, proxied by the server): a path on this machine
    would mean nothing to another client.
    """
    if config.mlflow_uri.startswith("sqlite:"):
        return config.artifacts_dir.absolute().as_uri()
    return None


def git_commit(root: Path = PROJECT_ROOT) -> str | None:
    """`git rev-parse HEAD` of `root`; None when it is no git checkout or git cannot say."""
    if not (root / ".git").exists():  # a directory, or a file in a worktree
        return None
    try:
        done = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None


def source_tags() -> dict[str, str]:
    """What ran the run, for the UI's Source and Version columns.

    The source is the Prefect flow's entrypoint (`closecast/flows/nightly.py:nightly`),
    `closecast` outside a flow, as a JOB; the version is the commit of the
    checkout the code runs from, left out when it is none.
    """
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    name = "closecast"
    if context is not None and context.flow is not None:
        fn = context.flow.fn
        name = f"{fn.__module__.replace('.', '/')}.py:{fn.__name__}"
    tags = {MLFLOW_SOURCE_NAME: name, MLFLOW_SOURCE_TYPE: SourceType.to_string(SourceType.JOB)}
    commit = git_commit()
    return tags | ({MLFLOW_GIT_COMMIT: commit} if commit else {})


def _create_run(
    client: MlflowClient,
    config: PipelineConfig,
    run_name: str,
    tags: dict[str, str],
    required: bool,
) -> tuple[str, str] | None:
    """The experiment id and the id of a new run tagged with its owner.

    None when the run is not `required` and the server refuses to create it (403).
    """
    experiment_id = ensure_experiment(client, config.experiment, artifact_location(config))
    owner = {PID_TAG: str(os.getpid()), HOST_TAG: socket.gethostname()}
    run_tags = {**source_tags(), **tags, **owner}
    try:
        run = client.create_run(experiment_id, run_name=run_name, tags=run_tags)
    except MlflowException as exc:
        if required or refusal_status(exc) != 403:
            raise
        refusal = refused_request(config.mlflow_uri, exc, config.experiment)
        logger.warning("%s; going on without an MLflow run", refusal)
        return None
    return experiment_id, run.info.run_id


@contextmanager
def tracking_run(
    config: PipelineConfig, run_name: str, tags: dict[str, str], *, required: bool = True
) -> Iterator[str]:
    """Open an MLflow run for the block; FINISHED when it ends, FAILED if it raises,
    KILLED if a signal stopped it (Ctrl-C, SIGTERM).

    The run carries the full configuration twice: as dotted params (to
    compare runs) and as the exact `config.json` artifact, its source and git
    commit (`source_tags`), and the pid and host of its process, so a later
    run can tell it was killed. A run that is not `required` (a prediction,
    which trains and registers nothing) is left out, with a warning, when
    the server lets the user read the experiment but not log to it: the
    block then gets "" for a run id.

    Raises:
        PipelineError: when MLflow cannot be reached (before anything is trained), or
            refuses a request of the run or of the block (401, 403: `refused_request`).
    """
    client = connect_mlflow(config.mlflow_uri)
    with refusals_as_errors(config.mlflow_uri, config.experiment):
        created = _create_run(client, config, run_name, tags, required)
        if created is None:
            yield ""
            return
        experiment_id, run_id = created
        _OPEN_RUNS.add(run_id)
        try:
            mark_killed_runs(client, experiment_id, run_id)
            exact = config.model_dump(mode="json")
            params = [Param(k, v) for k, v in flatten_params(exact).items()]
            client.log_batch(run_id, params=params)
            client.log_dict(run_id, exact, "config.json")
            yield run_id
        except BaseException as exc:
            client.set_terminated(run_id, ended_status(exc))
            raise
        else:
            client.set_terminated(run_id, "FINISHED")
        finally:
            _OPEN_RUNS.discard(run_id)


def ended_status(exc: BaseException) -> str:
    """The MLflow status of a run that `exc` ended: KILLED for a stop asked from outside
    (Ctrl-C, Prefect's TerminationSignal for SIGTERM), FAILED for a failure."""
    return "KILLED" if isinstance(exc, KeyboardInterrupt | ExternalSignal) else "FAILED"


def process_gone(pid: int) -> bool:
    """Whether no process `pid` exists on this host (one of another user's counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def mark_killed_runs(client: MlflowClient, experiment_id: str, by_run_id: str) -> list[str]:
    """Mark KILLED the RUNNING runs of the experiment whose process is gone; their ids.

    A run killed with `kill -9` (or a lost machine) never ends itself. A run
    is judged only by its own `closecast.pid`/`closecast.host` tags and only
    on the host that started it: a run whose process still exists (another
    run going on right now) or that runs elsewhere is left alone. The
    process's own pid counts as gone unless the run is open in this process:
    in a container every run may get the same pid.
    """
    host = socket.gethostname()
    killed = []
    running = client.search_runs(
        [experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000
    )
    for run in running:
        run_id, tags = run.info.run_id, run.data.tags
        pid = tags.get(PID_TAG, "")
        if run_id in _OPEN_RUNS or tags.get(HOST_TAG) != host or not pid.isdigit():
            continue
        if int(pid) != os.getpid() and not process_gone(int(pid)):
            continue
        reason = f"found RUNNING by run {by_run_id}: its process {pid} on {host} no longer exists"
        note = {} if MLFLOW_RUN_NOTE in tags else {MLFLOW_RUN_NOTE: reason}
        set_tags(client, run_id, {KILLED_TAG: reason, **note})
        client.set_terminated(run_id, "KILLED")
        logger.warning("marked MLflow run %s KILLED: %s", run_id, reason)
        killed.append(run_id)
    return killed


def log_metrics(
    client: MlflowClient, run_id: str, metrics: dict[str, float], step: int = 0
) -> None:
    """Log a flat dict of metrics in one call."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])


def set_tags(client: MlflowClient, run_id: str, tags: dict[str, str]) -> None:
    """Set several run tags in one call."""
    client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


def log_bytes(client: MlflowClient, run_id: str, content: bytes, artifact_file: str) -> None:
    """Log `content` as the run's artifact `artifact_file` (e.g. `plots/tomorrow.png`): an
    image already rendered is stored as it is, not drawn again as `log_figure` would."""
    folder, name = posixpath.split(artifact_file)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / name
        local.write_bytes(content)
        client.log_artifact(run_id, str(local), folder or None)
