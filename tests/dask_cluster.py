"""A real Dask cluster on loopback for tests: `dask scheduler` and `dask worker` processes.

Each process leads its own process group and is killed with it at the end, dead or alive,
so that no scheduler or worker outlives the test. The workers import
closecast from this checkout (PYTHONPATH) and load tests/dask_worker_preload.py, which
records every task they run and, on the cue a test writes (`DaskCluster.arm`), kills them
mid-task.
"""

import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.dask_worker_preload import KILL, RECORD, claim_marker
from tests.mlflow_fixtures import free_port
from tests.waiting import fail_unstarted, wait_for

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 180  # generous, for a loaded machine; a cluster not up by then fails the test
WORKERS = ("w1", "w2")


@dataclass
class DaskCluster:
    """A started cluster: its scheduler's address, its folder, and its processes."""

    address: str
    folder: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def record(self) -> Path:
        """What the workers ran: one `WORKER<TAB>TASK_RUN_NAME` line per task run started."""
        return self.folder / "record.tsv"

    @property
    def cue(self) -> Path:
        """What the workers do on starting a validation: see tests/dask_worker_preload.py."""
        return self.folder / "kill-cue"

    @property
    def kill_marker(self) -> Path:
        """Created by the one worker that kills itself on the "once" cue."""
        return Path(claim_marker(self.cue))

    def arm(self, kill: str | None) -> None:
        """None: workers run every task; "once": the first worker to start a validate-prices
        task run SIGKILLs itself (one death in the cluster); "always": every worker does.
        Also forgets what ran and died before: `ran` and `killed` then tell of what follows."""
        for path in (self.record, self.kill_marker):
            path.unlink(missing_ok=True)
        if kill is None:
            self.cue.unlink(missing_ok=True)
        else:
            self.cue.write_text(kill, encoding="utf-8")

    def killed(self) -> tuple[str, str] | None:
        """(worker, task run name) of the death the "once" cue caused, if it happened."""
        if not self.kill_marker.exists():
            return None
        worker, name = self.kill_marker.read_text(encoding="utf-8").split("\t", 1)
        return worker, name

    def ran(self) -> list[tuple[str, str]]:
        """(worker, task run name) for every task run a worker started, in order."""
        if not self.record.exists():
            return []
        lines = self.record.read_text(encoding="utf-8").splitlines()
        return [(worker, name) for worker, name in (line.split("\t", 1) for line in lines)]

    def alive(self, name: str) -> bool:
        return self.processes[name].poll() is None

    def whole(self) -> bool:
        """Whether the scheduler and both workers still run."""
        return all(process.poll() is None for process in self.processes.values())

    def log(self, name: str) -> Path:
        return self.folder / f"{name}.log"


def _start(
    name: str, command: list[str], cluster: DaskCluster, env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    with cluster.log(name).open("wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=dict(env), stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    cluster.processes[name] = process
    return process


def _registered(cluster: DaskCluster) -> set[str]:
    """The workers the scheduler's log says registered."""
    text = cluster.log("scheduler").read_text(errors="replace")
    return {n for n in WORKERS if re.search(rf"Register worker addr: \S+ name: {n}$", text, re.M)}


def _kill_all(cluster: DaskCluster) -> None:
    for process in cluster.processes.values():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_dask_cluster(folder: Path) -> Iterator[DaskCluster]:
    """A scheduler and two one-thread workers (w1, w2) on free loopback ports, no dashboards.

    Args:
        folder: where the logs, the record and the workers' scratch space go.

    The workers run without a nanny, so a killed worker stays dead (a nanny would start
    it again: a task that kills every worker then ends the same way, after more deaths).
    """
    folder.mkdir(parents=True, exist_ok=True)
    cluster = DaskCluster(f"tcp://127.0.0.1:{free_port()}", folder)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "DASK_"))}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PREFECT_HOME"] = str(folder / "prefect")  # never the user's ~/.prefect
    dask = [sys.executable, "-m", "dask"]
    port = cluster.address.rsplit(":", 1)[1]
    try:
        _start("scheduler", [*dask, "scheduler", "--host", "127.0.0.1", "--port", port,
                             "--no-dashboard"], cluster, env)  # fmt: skip
        cluster.arm(None)
        worker_env = {**env, RECORD: str(cluster.record), KILL: str(cluster.cue)}
        for name in WORKERS:
            command = [*dask, "worker", cluster.address, "--name", name, "--nthreads", "1",
                       "--host", "127.0.0.1", "--no-dashboard", "--no-nanny",
                       "--local-directory", str(folder / name),
                       "--preload", "tests.dask_worker_preload"]  # fmt: skip
            _start(name, command, cluster, worker_env)
        up = wait_for(
            lambda: _registered(cluster) == set(WORKERS),
            alive=cluster.whole,
            hang_s=START_TIMEOUT_S,
        )
        if not up:
            down = next(
                (n for n, p in cluster.processes.items() if p.poll() is not None), "scheduler"
            )
            fail_unstarted(
                f"dask {down}", cluster.processes[down], START_TIMEOUT_S, cluster.log(down)
            )
        yield cluster
    finally:
        _kill_all(cluster)
