"""Errors the command line maps to exit codes, and the log filter that keeps them one line."""

import logging


class InputError(ValueError):
    """Bad usage or input (exit 2): the message names the bad value."""


class PipelineError(RuntimeError):
    """The pipeline could not produce a usable result (exit 1)."""


class NoTracebackForExpected(logging.Filter):
    """Expected failures (bad input, a failed pipeline) get one line, not a traceback.

    Prefect logs a failed run's exception with its traceback on the task-run,
    flow-run and engine loggers; for these errors the message says it all.
    """

    def expected(self, error: BaseException) -> bool:
        """Whether `error` is one closecast raises on purpose."""
        return isinstance(error, InputError | PipelineError)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and self.expected(error):
            record.exc_info, record.exc_text = None, None
        return True


# The loggers a failed flow run logs its exception on: the task's, the flow's and the engine's.
RUN_LOGGERS = ("prefect.flow_runs", "prefect.task_runs", "prefect.engine")


def log_expected_failures_in_one_line(
    loggers: tuple[str, ...] = RUN_LOGGERS, filter_: logging.Filter | None = None
) -> None:
    """Put the filter on the run loggers (once: a logger keeps one of each filter)."""
    filter_ = filter_ or _NO_TRACEBACK
    for name in loggers:
        logging.getLogger(name).addFilter(filter_)


_NO_TRACEBACK = NoTracebackForExpected()
