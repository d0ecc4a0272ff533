"""The price sources by name: what `--source`, the config and Prefect's run form accept.

A source is one entry here (its name, whether its spec carries a path, one
line on what it is) and one in `OPENERS` of closecast/tasks/data/sources/,
beside the module that implements it: core/ imports nothing from tasks/, so
the names live here and the classes there, and
tests/tasks/sources/test_open_source.py keeps the two lists the same. Config
validation, the run form's pattern, the `--source` help and `open_source`
all read `SOURCES`.
"""

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class SourceName:
    """A source as a spec names it: `name`, or `name:PATH` when it takes a path."""

    name: str
    description: str  # one line, for the help and the run form
    takes_path: bool = False

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):  # a plain word in the pattern too
            raise ValueError(f"source name {self.name!r}: expected a lower-case word")

    @property
    def spec(self) -> str:
        """How a spec names it: `yfinance`, `csv:PATH`."""
        return f"{self.name}:PATH" if self.takes_path else self.name


SOURCES = (
    SourceName("yfinance", "Yahoo Finance, live"),
    SourceName("sample", "offline index prices, 1999-2018"),
    SourceName("csv", "a folder of TICKER.csv files or one long file", takes_path=True),
)
# The same rule as `split_source`, as a JSON-schema pattern: Prefect's run form refuses a typo.
SOURCE_PATTERN = "^(" + "|".join(s.name + (":.+" if s.takes_path else "") for s in SOURCES) + ")$"
# `yfinance (Yahoo Finance, live), sample (...), or csv:PATH (...)`
SOURCE_HELP = ", ".join(f"{s.spec} ({s.description})" for s in SOURCES[:-1])
SOURCE_HELP += f", or {SOURCES[-1].spec} ({SOURCES[-1].description})"
_EXPECTED = ", ".join(s.spec for s in SOURCES[:-1]) + f" or {SOURCES[-1].spec}"


def split_source(spec: str) -> tuple[SourceName, str]:
    """The source a spec names, and its path ("" for a source that takes none).

    Raises:
        ValueError: the spec names no source, naming it and listing the valid ones.
    """
    name, colon, path = spec.partition(":")
    for source in SOURCES:
        if source.name == name and (path if source.takes_path else not colon):
            return source, path
    raise ValueError(f"invalid source {spec!r}: expected {_EXPECTED}")


def check_source(spec: str) -> str:
    """Validate a source spec (`yfinance`, `sample`, `csv:PATH`, ...) and return it."""
    split_source(spec)
    return spec
