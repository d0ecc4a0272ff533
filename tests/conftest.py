"""Registers tests/fixtures.py (the suite's fixtures and collection order) in the processes
that collect and run tests: each xdist worker, or the one process under `-n 0`.

The xdist controller only hands out files and prints results: importing the fixtures there
(Prefect, MLflow, torch and closecast, ~9 CPU-s) would only compete with the workers."""

import pytest


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that distributes tests to xdist workers (as xdist decides it:
    a distribution mode and workers to send to, and more than collecting)."""
    if hasattr(config, "workerinput"):
        return False
    distributing = config.getoption("dist", "no") != "no" and bool(config.getoption("tx", []))
    return distributing and not config.getoption("collectonly")


def pytest_configure(config: pytest.Config) -> None:
    if not _xdist_controller(config):
        from tests import fixtures

        config.pluginmanager.register(fixtures, "closecast-fixtures")
