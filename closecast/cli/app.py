"""The `closecast` command line: the app, its commands, and the exit codes.

The commands live beside this module: those that run a flow in
pipeline_commands.py, those of the model registry in registry_commands.py;
their options come from the config models through options.py.
"""

import logging
import os
import sys
from collections.abc import Sequence
from importlib import metadata
from typing import Annotated

import typer
from typer.exceptions import TyperException

from closecast import __version__
from closecast.cli.exits import INTERRUPTED, exit_now, quiet_interrupts
from closecast.cli.pipeline_commands import alerts, backfill, fetch, predict, run, serve
from closecast.cli.registry_commands import models, promote, status
from closecast.core.errors import (
    InputError,
    NoTracebackForExpected,
    PipelineError,
    log_expected_failures_in_one_line,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="closecast: nightly LSTM forecasts of tomorrow's closes (Prefect + MLflow).",
)
for command in (run, fetch, predict, backfill, serve, alerts, models, promote, status):
    app.command()(command)


def package_version() -> str:
    """closecast's version as installed, else (a checkout on PYTHONPATH) the source's."""
    try:
        return metadata.version("closecast")
    except metadata.PackageNotFoundError:
        return __version__


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"closecast {package_version()}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The options before the command."""


def check_usage(argv: Sequence[str]) -> None:
    """Parse the command line as the app will, before anything starts or is imported.

    An unknown flag, a missing option or a value of the wrong type is a
    usage error at once, and --help and --version print: none waits for
    Prefect's import or a temporary Prefect API. The values themselves
    (a ticker, a date, a home) are the command's to check.

    Raises:
        typer's click exceptions: UsageError (exit 2), Exit (--help, --version).
    """
    group = typer.main.get_command(app)
    with group.make_context("closecast", list(argv)) as ctx:
        words = [*ctx._protected_args, *ctx.args]  # the command and its own arguments
        if words:
            name, command, rest = group.resolve_command(ctx, words)  # type: ignore[attr-defined]
            if command is not None:
                command.make_context(name, rest, parent=ctx)


class _DropLocked(logging.Filter):
    """Prefect's ephemeral SQLite server logs harmless lock contention."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "database is locked" not in record.getMessage()


def _refused(exc: BaseException) -> PipelineError | None:
    """closecast's line for a request an MLflow tracking server refused (401, 403), else None."""
    if "mlflow" not in sys.modules:  # nothing has talked to MLflow
        return None
    import mlflow

    from closecast.tasks.mlflow.auth import refused_request

    return refused_request(mlflow.get_tracking_uri(), exc)


class _NoTracebackForExpected(NoTracebackForExpected):
    """Expected failures, and a request the tracking server refused (401, 403), get one
    line, not a traceback."""

    def expected(self, error: BaseException) -> bool:
        return super().expected(error) or _refused(error) is not None


_DROP_LOCKED, _NO_TRACEBACK = _DropLocked(), _NoTracebackForExpected()


def _quiet_noise() -> None:
    """Keep output readable: no lock noise, no tracebacks for expected errors."""
    for name in ("prefect", "prefect.server", "uvicorn.error", "sqlalchemy", "alembic"):
        logging.getLogger(name).addFilter(_DROP_LOCKED)
    log_expected_failures_in_one_line(filter_=_NO_TRACEBACK)
    logging.getLogger("alembic").setLevel(logging.WARNING)


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    """Entry point: exit 0 success, 1 pipeline failure, 2 bad usage or input.

    With no `argv` this is the program itself (the `closecast` script,
    `python -m closecast.cli.app`): it reads sys.argv and ends the process
    (`exits.exit_now`). Given `argv`, it returns the exit code to its caller.
    """
    code = run_command(argv)
    if argv is None:
        exit_now(code)
    return code


def run_command(argv: list[str] | None) -> int:
    """Run the command line `argv` (None: sys.argv); its exit code."""
    # No telemetry from the embedded Prefect server: this runs unattended, often offline.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    _quiet_noise()
    from closecast.cli.prefect_api import temporary_api

    args = sys.argv[1:] if argv is None else argv
    try:
        with quiet_interrupts():
            check_usage(args)
            with temporary_api(args):  # dies with us, even on kill -9
                code = app(args=argv, standalone_mode=False)  # click returns a typer.Exit's code
    except KeyboardInterrupt:  # before or after the command (Typer returns 130 for one in it)
        code = INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    except typer.Abort:
        print("closecast: aborted", file=sys.stderr)
        return 1
    except TyperException as exc:  # click's usage errors, as Typer vendors click
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        print(f"closecast: error: {_one_line(Exception(message))}", file=sys.stderr)
        return int(getattr(exc, "exit_code", 2))
    except InputError as exc:
        print(f"closecast: error: {exc}", file=sys.stderr)
        return 2
    except PipelineError as exc:
        print(f"closecast: pipeline failed: {_one_line(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        if (refusal := _refused(exc)) is not None:
            print(f"closecast: pipeline failed: {_one_line(refusal)}", file=sys.stderr)
            return 1
        print(
            f"closecast: pipeline failed: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr
        )
        return 1
    if code == INTERRUPTED:
        print("closecast: interrupted", file=sys.stderr)
    return code if isinstance(code, int) and not isinstance(code, bool) else 0


if __name__ == "__main__":
    sys.exit(main())
