"""The ways a closecast process ends (closecast/cli/exits.py), each in a child process."""

import signal
import subprocess
import sys
import textwrap

import pytest

from closecast.cli.exits import INTERRUPTED


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )


EXIT_NOW = """
    import atexit, threading, time
    from closecast.cli.exits import exit_now

    atexit.register(lambda: print("atexit ran", flush=True))
    threading.Thread(target=lambda: (time.sleep({sleep}), print("thread done"))).start()
    print("last line", end="")  # unflushed: exit_now flushes it
    exit_now({code})
"""


def test_exit_now_joins_threads_runs_atexit_and_flushes_before_it_ends() -> None:
    """exit_now(code): the non-daemon thread finishes, the atexit handlers run, stdout is
    flushed, and the process ends with `code`."""
    done = _run(EXIT_NOW.format(code=3, sleep=0.2))
    assert done.returncode == 3, done.stderr
    assert done.stdout == "last linethread done\natexit ran\n"


def test_an_interrupted_exit_waits_for_no_thread_and_runs_no_atexit_handler() -> None:
    """exit_now(INTERRUPTED) ends at once, its worker thread still asleep: only what was
    printed is flushed."""
    done = _run(EXIT_NOW.format(code=INTERRUPTED, sleep=30))
    assert done.returncode == INTERRUPTED, done.stderr
    assert done.stdout == "last line"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_interrupt_on_signals_unwinds_on_sigterm_and_an_ignored_sigint(sig: int) -> None:
    """After interrupt_on_signals, SIGTERM and SIGINT (even one ignored before) raise
    KeyboardInterrupt, so `finally` blocks run."""
    done = _run(f"""
        import os, signal
        from closecast.cli.exits import interrupt_on_signals

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # as in a background job
        interrupt_on_signals()
        try:
            os.kill(os.getpid(), {int(sig)})
            signal.pause()
        except KeyboardInterrupt:
            print("unwound")
    """)
    assert done.stdout == "unwound\n", done.stderr
