"""Registers tests/fixtures.py (the suite's fixtures and collection order) in the processes
that collect and run tests: each xdist worker, or the one process under `-n 0`.

The xdist controller only hands out files and prints results: importing the fixtures there
(Prefect, MLflow, torch and closecast, ~9 CPU-s) would only compete with the workers. It
starts the making of the Prefect template database, which the workers wait for otherwise
(tests/prefect_template.py)."""

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE_MAKER = pytest.StashKey[subprocess.Popen[bytes]]()


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that distributes tests to xdist workers (as xdist decides it:
    a distribution mode and workers to send to, and more than collecting)."""
    if hasattr(config, "workerinput"):
        return False
    distributing = config.getoption("dist", "no") != "no" and bool(config.getoption("tx", []))
    return distributing and not config.getoption("collectonly")


@pytest.hookimpl(trylast=True)  # after the tmp_path plugin's, which sets the base temp
def pytest_configure(config: pytest.Config) -> None:
    if not _xdist_controller(config):
        from tests import fixtures

        config.pluginmanager.register(fixtures, "closecast-fixtures")
        return
    # The workers' base temps are folders of the controller's (xdist's own choice).
    shared = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    with (shared / "prefect-template.log").open("wb") as log:
        config.stash[TEMPLATE_MAKER] = subprocess.Popen(
            [sys.executable, "-m", "tests.prefect_template", str(shared)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run that ends before the template is made (an error, Ctrl-C) leaves no process: the
    maker and its migration lead their own process group."""
    if (maker := config.stash.get(TEMPLATE_MAKER, None)) is not None:
        if maker.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(maker.pid, signal.SIGTERM)
        maker.wait(timeout=30)
