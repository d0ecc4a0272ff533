"""Errors the command line maps to exit codes."""


class InputError(ValueError):
    """Bad usage or input (exit 2): the message names the bad value."""


class PipelineError(RuntimeError):
    """The pipeline could not produce a usable result (exit 1)."""
