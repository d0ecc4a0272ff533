"""Progress a person can watch: a bar on a terminal, else a log line now and then.

    with progress(len(plans), "fetch yfinance", unit="chunks", log=logger) as advance:
        for plan in plans:
            ...
            advance(1)

On a terminal (the stream is interactive, as rich judges it) the bar is rich's,
drawn on stderr, and log lines written to that stream meanwhile print above
it instead of through it. Anywhere else (tests, CI, a scheduled run, output
piped to a file) it logs at most `lines` lines, one each time another
`total / lines` steps are done, so a long job neither spams its log nor goes
silent.
"""

import io
import logging
import math
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TextIO

if TYPE_CHECKING:
    from rich.file_proxy import FileProxy

LINES = 10  # log lines a job that nobody watches writes, at most, besides a stop


class Advance(Protocol):
    """What `progress` yields: call it with the steps just done (default 1)."""

    def __call__(self, steps: int = 1) -> None: ...


Log = logging.Logger | logging.LoggerAdapter[Any]


@contextmanager
def progress(
    total: int,
    description: str,
    *,
    unit: str = "",
    log: Log | None = None,
    lines: int = LINES,
    stream: TextIO | None = None,
) -> Iterator[Advance]:
    """A bar on a terminal, else log lines, for `total` steps; yields `advance(steps=1)`.

    Args:
        total: the steps the job has (chunks, tickers, epochs).
        description: what the job is, e.g. "fetch yfinance"; it starts each line.
        unit: what a step is, e.g. "tickers".
        log: where the lines go when nobody watches (default: this module's logger).
        lines: at most this many lines, besides one when the job stops short of `total`;
            0: none at all (the caller logs each step itself, only a terminal gets a bar).
        stream: where the bar is drawn (default: stderr, read when entered).
    """
    stream = stream if stream is not None else sys.stderr
    if total > 0 and _watched(stream):
        with _bar(total, description, unit, stream) as advance:
            yield advance
    else:
        with _log_lines(total, description, unit, log or logger, lines) as advance:
            yield advance


logger = logging.getLogger(__name__)


def _watched(stream: TextIO) -> bool:
    """Whether a person is watching `stream`: a terminal that understands a redrawn line."""
    from rich.console import Console

    return Console(file=stream).is_interactive


@contextmanager
def _log_lines(total: int, description: str, unit: str, log: Log, lines: int) -> Iterator[Advance]:
    """Log a line each time another total/lines steps are done, and when the job stops short."""
    if lines <= 0:
        yield _no_lines
        return
    every = max(1, math.ceil(total / lines))
    lock = threading.Lock()
    done = 0

    def advance(steps: int = 1) -> None:
        nonlocal done
        with lock:
            before, done = done, done + steps
            count = done
        if count // every > before // every or (count >= total > before):
            log.info("%s: %s", description, _counted(count, total, unit))

    try:
        yield advance
    finally:
        if done < total:
            log.info("%s: stopped at %s", description, _counted(done, total, unit))


def _no_lines(steps: int = 1) -> None:
    """The advance of a job that logs its own lines."""


def _counted(done: int, total: int, unit: str) -> str:
    """`300/1,000 tickers (30%)`."""
    share = f" ({100 * done // total}%)" if total > 0 else ""
    return f"{done:,}/{total:,}{' ' + unit if unit else ''}{share}"


@contextmanager
def _bar(total: int, description: str, unit: str, stream: TextIO) -> Iterator[Advance]:
    """rich's bar on `stream`; the log handlers writing there print above it meanwhile."""
    from rich.console import Console
    from rich.file_proxy import FileProxy
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=Console(file=stream),
    )
    task = bar.add_task(description, total=total)

    def advance(steps: int = 1) -> None:
        bar.advance(task, steps)  # rich's Progress takes its own lock

    with bar, _handlers_write_to(stream, _Above(FileProxy(bar.console, stream))):
        yield advance


class _Above(io.TextIOBase):
    """A file whose lines rich prints above its bar (through `FileProxy`), and which rich does
    not see through: a Console given a FileProxy itself writes to the file behind it."""

    def __init__(self, proxy: "FileProxy") -> None:
        self._proxy = proxy

    def write(self, text: str) -> int:
        return self._proxy.write(text)

    def flush(self) -> None:
        self._proxy.flush()

    def isatty(self) -> bool:
        return self._proxy.isatty()


@contextmanager
def _handlers_write_to(stream: TextIO, proxy: io.TextIOBase) -> Iterator[None]:
    """Point every logging handler that writes to `stream` at `proxy` inside the block.

    A handler keeps the stream it was made with (sys.stderr when logging was
    configured), so rich's own redirection of sys.stderr misses it. Prefect's
    console handler prints through a rich Console of its own: its file is
    swapped too.
    """
    swapped: list[logging.StreamHandler[Any]] = []
    consoles: list[Any] = []
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for each in loggers:
        for handler in getattr(each, "handlers", ()):
            if isinstance(handler, logging.StreamHandler) and handler.stream is stream:
                if handler not in swapped:
                    handler.setStream(proxy)
                    swapped.append(handler)
                console = getattr(handler, "console", None)
                if console is not None and getattr(console, "file", None) is stream:
                    console.file = proxy
                    consoles.append(console)
    try:
        yield
    finally:
        for handler in swapped:
            handler.setStream(stream)
        for console in consoles:
            console.file = stream
