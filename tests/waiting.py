"""Waiting on another process in a test: until something happens, never against a clock.

A test asserts what happened (which runs, in what order, how many), not how fast it
happened: a loaded machine makes everything slower, and a test that then fails says
nothing about the code. So a wait ends when its condition holds or the process it waits
on has exited, and the test asserts what it found. HANG_S only ends a wait that would
otherwise never end (a hung process); it is far beyond what a loaded machine needs, and
reaching it is reported as what was found, not as a time.
"""

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest

T = TypeVar("T")

# The whole catch-up test, its three waits and more, took 126 s at load 6-8 on 2 cores.
HANG_S = 600.0


def always() -> bool:
    return True


def wait_for(
    get: Callable[[], T],
    until: Callable[[T], bool] = bool,
    *,
    alive: Callable[[], bool] = always,
    every_s: float = 0.5,
    hang_s: float = HANG_S,
) -> T:
    """The value of `get()` once `until` holds for it; its last value if `alive()` turns
    false first (the process waited on has exited) or after `hang_s`."""
    give_up = time.monotonic() + hang_s
    value = get()
    while not until(value) and alive() and time.monotonic() < give_up:
        time.sleep(every_s)
        value = get()
    return value


def fail_unstarted(
    name: str, server: subprocess.Popen[Any], start_timeout_s: float, log: Path
) -> NoReturn:
    """Fail the test (never skip it) for a server that did not come up, with its log's end."""
    exited = server.poll()
    why = (
        f"exited with code {exited} before answering"
        if exited is not None
        else f"did not answer within {start_timeout_s:.0f} s"
    )
    tail = "\n".join(log.read_text(errors="replace").strip().splitlines()[-5:])
    pytest.fail(f"{name} {why} ({log}):\n{tail}", pytrace=False)
