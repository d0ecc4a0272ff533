import re

import pytest

from closecast.core.config import DataConfig
from closecast.core.sources import (
    SOURCE_HELP,
    SOURCE_PATTERN,
    SOURCES,
    SourceName,
    check_source,
    split_source,
)

SPECS = ["yfinance", "sample", "csv:/d", "csv:a:b", "csv:", "csv", "sample:", "yfinance:x", "ftp"]


@pytest.mark.parametrize("spec", SPECS)
def test_the_run_forms_pattern_accepts_what_split_source_accepts(spec: str) -> None:
    """SOURCE_PATTERN (Prefect's run form) and split_source (the config) agree on a spec."""
    try:
        split_source(spec)
        valid = True
    except ValueError:
        valid = False
    assert bool(re.fullmatch(SOURCE_PATTERN, spec)) is valid


@pytest.mark.parametrize(
    ("spec", "name", "path"),
    [
        ("yfinance", "yfinance", ""),
        ("sample", "sample", ""),
        ("csv:/data/x.csv", "csv", "/data/x.csv"),
    ],
)
def test_split_source_names_the_source_and_its_path(spec: str, name: str, path: str) -> None:
    """A spec is a name, or `name:PATH` for a source that takes a path."""
    source, found = split_source(spec)
    assert (source.name, found) == (name, path)


@pytest.mark.parametrize("spec", ["ftp", "csv:", "sample:"])
def test_a_bad_source_names_itself_and_the_valid_specs(spec: str) -> None:
    """The message names the bad spec and lists every valid one."""
    with pytest.raises(ValueError, match=r"expected yfinance, sample or csv:PATH$") as error:
        check_source(spec)
    assert str(error.value).startswith(f"invalid source {spec!r}: ")


def test_the_help_and_the_config_describe_every_source() -> None:
    """`--source`'s help and the config field's description list each source's spec and line."""
    description = DataConfig.model_fields["source"].description or ""
    for source in SOURCES:
        assert f"{source.spec} ({source.description})" in SOURCE_HELP
    assert SOURCE_HELP in description


def test_a_source_name_is_a_plain_word() -> None:
    """A name that would not read as itself in the run form's pattern is refused."""
    with pytest.raises(ValueError, match=r"'c\.v'"):
        SourceName("c.v", "dotted")
