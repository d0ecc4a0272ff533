import io
import logging
import re

import pytest
from rich.console import Console

from closecast.core.progress import progress


class Terminal(io.StringIO):
    """A stream that says it is a terminal, as a person's shell would."""

    def isatty(self) -> bool:
        return True


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "closecast.core.progress"]


def test_where_nobody_watches_it_logs_a_line_per_tenth(caplog: pytest.LogCaptureFixture) -> None:
    """Not a terminal: 25 chunks of 4 tickers log one line each time another 10% is done,
    not one per chunk, and draw nothing."""
    stream = io.StringIO()
    caplog.set_level(logging.INFO, "closecast.core.progress")
    with progress(100, "fetch yfinance", unit="tickers", stream=stream) as advance:
        for _ in range(25):
            advance(4)
    crossed = [12, 20, 32, 40, 52, 60, 72, 80, 92, 100]  # a chunk that passes each tenth
    assert _lines(caplog) == [f"fetch yfinance: {n}/100 tickers ({n}%)" for n in crossed]
    assert stream.getvalue() == ""


@pytest.mark.parametrize(("total", "lines"), [(3, 3), (1000, 10), (7, 2)])
def test_it_logs_at_most_lines_lines(
    total: int, lines: int, caplog: pytest.LogCaptureFixture
) -> None:
    """One step at a time, `lines` lines at most, the last at the total."""
    caplog.set_level(logging.INFO, "closecast.core.progress")
    with progress(total, "train", unit="epochs", lines=lines, stream=io.StringIO()) as advance:
        for _ in range(total):
            advance()
    logged = _lines(caplog)
    assert len(logged) <= lines and logged[-1] == f"train: {total:,}/{total:,} epochs (100%)"


def test_a_job_that_stops_short_says_where(caplog: pytest.LogCaptureFixture) -> None:
    """Early stopping (or an error) ends the block before the total: one line says where."""
    log = logging.getLogger("tests.training")
    caplog.set_level(logging.INFO, "tests.training")
    with pytest.raises(RuntimeError), progress(50, "train", unit="epochs", log=log) as advance:
        advance(12)
        raise RuntimeError("stopped")
    messages = [r.getMessage() for r in caplog.records if r.name == "tests.training"]
    assert messages[-1] == "train: stopped at 12/50 epochs (24%)"


def test_a_job_that_logs_its_own_steps_gets_no_lines(caplog: pytest.LogCaptureFixture) -> None:
    """lines=0 (training, which logs every epoch itself): nothing logged, not even when it
    stops short, and nothing drawn where nobody watches."""
    stream = io.StringIO()
    caplog.set_level(logging.INFO, "closecast.core.progress")
    with progress(20, "train", unit="epochs", lines=0, stream=stream) as advance:
        for _ in range(7):
            advance()
    assert _lines(caplog) == [] and stream.getvalue() == ""


class ConsoleHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler that prints through a rich Console of its own, as Prefect's console does."""

    def __init__(self, stream: io.StringIO) -> None:
        super().__init__(stream)
        self.console = Console(file=stream)

    def emit(self, record: logging.LogRecord) -> None:
        self.console.print(self.format(record), soft_wrap=True)


@pytest.mark.parametrize("kind", [logging.StreamHandler, ConsoleHandler])
def test_on_a_terminal_it_draws_a_bar_and_logs_print_above_it(
    kind: type, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A terminal gets rich's bar (done/total and the unit) and no progress lines; a log
    handler writing to the same terminal (plainly, or through a rich Console like Prefect's)
    prints on a line of its own above the bar meanwhile, not after the bar's text, and
    writes to the terminal itself again afterwards."""
    monkeypatch.setenv("TERM", "xterm-256color")  # not `dumb`, whatever runs the tests
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    terminal = Terminal()
    handler = kind(terminal)
    other = logging.getLogger("tests.progress.other")
    other.addHandler(handler)
    caplog.set_level(logging.INFO, "closecast.core.progress")
    try:
        with progress(4, "fetch yfinance", unit="tickers", stream=terminal) as advance:
            advance(2)
            other.warning("chunk 1 stored")
            advance(2)
        other.warning("done")
    finally:
        other.removeHandler(handler)
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())  # colours aside
    assert "fetch yfinance" in drawn and "4/4" in drawn and "tickers" in drawn
    assert "\r\x1b[2Kchunk 1 stored\n" in drawn, repr(drawn)  # the bar's line cleared first
    assert drawn.endswith("done\n") and handler.stream is terminal
    assert _lines(caplog) == []
