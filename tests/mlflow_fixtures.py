"""Registry test helpers: a migrated MLflow SQLite file made once and copied, broken models.

Creating MLflow's tables takes seconds; copying a migrated empty database
takes milliseconds, and the copy is a real MLflow store like any other.
"""

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

import closecast.tasks.modeling.training
from closecast.cli.serve import _healthy, stop_process_group
from closecast.models.lstm import LSTMConfig
from closecast.tasks.modeling.training import TrainedModel
from closecast.tasks.modeling.windows import Dataset
from tests.waiting import fail_unstarted, wait_for

# Generous, for a loaded machine. A server that exits or is not up by then fails the test:
# a broken server must not pass as a skip.
SERVER_START_TIMEOUT_S = 180


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, fully migrated MLflow SQLite database."""
    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def new_home(folder: Path, template: Path) -> Path:
    """A closecast home whose `mlflow.db` is a copy of the migrated template."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, folder / "mlflow.db")
    return folder


@pytest.fixture
def mlflow_home(tmp_path: Path, mlflow_template: Path) -> Path:
    """A fresh home with an empty MLflow database in it."""
    return new_home(tmp_path / "home", mlflow_template)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spoil_training(value: float) -> Callable[..., TrainedModel]:
    """Real training, then every weight set to `value`: a model that is bad (or NaN) for sure."""
    real = closecast.tasks.modeling.training.train_model

    def train(*args: object, **kwargs: object) -> TrainedModel:
        trained = real(*args, **kwargs)  # type: ignore[arg-type]
        with torch.no_grad():
            for parameter in trained.forecaster.module.parameters():
                parameter.fill_(value)
        return trained

    return train


def point_only_training() -> Callable[..., TrainedModel]:
    """Real training of a point head without intervals: a model as they were before
    intervals (and the distributional heads, which need them) existed."""
    real = closecast.tasks.modeling.training.train_model

    def train(dataset: Dataset, lstm: LSTMConfig, *args: object, **kwargs: object) -> TrainedModel:
        point = replace(lstm, distribution="none")
        trained = real(dataset, point, *args, **kwargs)  # type: ignore[arg-type]
        trained.forecaster.intervals = None
        return trained

    return train


@contextmanager
def running_mlflow_server(
    root: Path, template: Path, *options: str, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """`mlflow server` on a free loopback port over a copy of the template, its URL.

    SQLite backend in `root`, served artifacts under `root/artifacts`, its
    output in `root/server.log`. Fails the test, with the log's last lines, if the
    server exits or is not up within SERVER_START_TIMEOUT_S. Without MLflow's job
    execution, which closecast never uses, as README.md advises (unless `env` sets it):
    its 8 job consumers took 12 of a start's 16 CPU-s.
    """
    shutil.copyfile(template, root / "mlflow.db")
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        sys.executable, "-m", "mlflow", "server", *options,
        "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1],
        "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", **(env or {})},
            start_new_session=True,
        )
    try:
        up = wait_for(
            lambda: _healthy(url),
            alive=lambda: server.poll() is None,
            hang_s=SERVER_START_TIMEOUT_S,
        )
        if not up:
            fail_unstarted("mlflow server", server, SERVER_START_TIMEOUT_S, log_path)
        yield url
    finally:
        stop_process_group(server, grace_s=3.0)
