"""How a closecast process ends: every trick that reaches past Python's own exit.

Each one is here, so that a Python or Prefect upgrade has one module to check.

- **`exit_now`: Python's exit, minus freeing every module.** The program
  (`closecast`, `python -m closecast.cli.app`) ends through it. Python's own
  exit waits for the threads that are not daemons, runs the atexit handlers
  (Prefect sends its last logs and events, MLflow ends its runs, logging
  flushes), flushes stdout and stderr, and then frees every module and object
  one by one: 2.5-3 s with torch, MLflow, Prefect and pandas loaded, for
  memory the process is about to hand back anyway. `exit_now` does the first
  part with CPython's own, undocumented, functions (`threading._shutdown`,
  `atexit._run_exitfuncs`: what the interpreter calls when it finalizes) and
  skips the last with `os._exit`. Without the first part the last logs and
  events of a run would be lost and its MLflow run left RUNNING; without
  `os._exit` every command would end seconds after its last line. The two
  functions are CPython-only: a Python without them fails every command at
  its end (AttributeError), which tests/test_exits.py and every CLI test that
  runs a subprocess would show.
- **An interrupted command (`INTERRUPTED`) skips the first part too.** It
  does not wait for a task still running in a worker thread (a training
  cannot be interrupted; joining it would hold the process until the
  training ends), nor send the logs and events that task made since to a
  Prefect API that has already stopped.
- **`quiet_interrupts`: the first Ctrl-C unwinds, the second ends at once.**
  The first raises KeyboardInterrupt in the main thread: the unwinding marks
  the MLflow run KILLED, rolls back what the run registered and tells Prefect
  the flow run crashed, with logging off from then on, so that closecast's one
  line ("interrupted") is not buried under Prefect's "Crash detected!" and the
  traceback of the task still running in a worker thread. The unwinding may
  wait for that thread; a second Ctrl-C ends the process with `os._exit`,
  rather than leave `kill -9` as the only way out. It is only installed where Python's own
  handler is (the main thread; not a command started in the background,
  whose SIGINT is ignored).
- **`interrupt_on_signals`: serve stops the same way on Ctrl-C and SIGTERM.**
  SIGINT gets Python's handler back (a non-interactive shell starts a
  background job with SIGINT ignored) and SIGTERM raises KeyboardInterrupt
  too, so the `finally` blocks of serve run and stop the Prefect server it
  started. By default SIGTERM ends the process without unwinding, and that
  server would be left to its own watch (below).
- **`watch_parent`: a child server dies with its parent, even after `kill -9`.**
  The temporary Prefect API of a flow command (prefect_api.py) and serve's
  Prefect server (local_server.py) run in a child process. A daemon thread in
  the child polls its parent id: once the parent is gone (the child has been
  re-parented), it sends the child SIGTERM, uvicorn's graceful shutdown, and
  after GRACE_S ends it with `os._exit` should that shutdown hang. The
  standard library has no portable "die with the parent" (Linux's
  PR_SET_PDEATHSIG is not exposed); without the watch, each killed command
  would leave its server running, holding its port and its database.

Not here, because they concern a start, not an end: the collector switched
off and the heap frozen while heavy modules import (imports.py), and the
listening socket that prefect_api.py binds and hands to the temporary API's
child.
"""

import atexit
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import NoReturn

INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command stopped by Ctrl-C
GRACE_S = 5.0  # how long an orphaned child server may take to shut down gracefully
WATCH_INTERVAL_S = 0.5


def exit_now(code: int) -> NoReturn:
    """End this process with `code` the way Python ends it, minus freeing every module.

    The atexit handlers run and the threads that are not daemons are joined
    first, unless the command was interrupted (`INTERRUPTED`).
    """
    if code != INTERRUPTED:
        threading._shutdown()  # type: ignore[attr-defined]  # joins non-daemon threads
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe: nothing left to say
            stream.flush()
    os._exit(code)


def _interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C: unwind as KeyboardInterrupt, quietly; a second one ends it at once."""
    signal.signal(signal.SIGINT, _interrupt_again)
    logging.disable(logging.CRITICAL)
    raise KeyboardInterrupt


def _interrupt_again(signum: int, frame: object) -> None:
    print("closecast: interrupted", file=sys.stderr, flush=True)
    os._exit(INTERRUPTED)


@contextlib.contextmanager
def quiet_interrupts() -> Iterator[None]:
    """Ctrl-C handled by `_interrupt` inside the block, when Python's own handler is in place
    (not when SIGINT is ignored, as for a command started in the background)."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return
    signal.signal(signal.SIGINT, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        logging.disable(logging.NOTSET)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def interrupt_on_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt from here on, even in a background job."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _raise_interrupt)


def watch_parent(parent: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM this process once `parent` is gone (the child is then re-parented), and end
    it `grace_s` later should the graceful shutdown hang."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(WATCH_INTERVAL_S)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(1)  # the graceful shutdown hung

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
