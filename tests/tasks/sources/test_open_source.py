from pathlib import Path

import pytest

from closecast.core.errors import InputError
from closecast.core.sources import SOURCES
from closecast.tasks.data.sources import (
    OPENERS,
    CsvSource,
    SampleSource,
    YFinanceSource,
    open_source,
)


@pytest.mark.parametrize(
    ("spec", "kind"), [("yfinance", YFinanceSource), ("sample", SampleSource), ("csv:", CsvSource)]
)
def test_open_source_opens_the_source_its_spec_names(tmp_path: Path, spec: str, kind: type) -> None:
    """`yfinance`, `sample` and `csv:PATH` open their own source; csv keeps its path."""
    source = open_source(spec + (str(tmp_path) if spec == "csv:" else ""))
    assert isinstance(source, kind) and source.name == spec.rstrip(":")
    if isinstance(source, CsvSource):
        assert source.path == tmp_path


def test_every_source_name_opens_a_source_and_every_source_has_a_name(tmp_path: Path) -> None:
    """The names core/sources.py accepts are the sources OPENERS builds, one for one, and
    each spec opens the source of its name."""
    assert [source.name for source in SOURCES] == list(OPENERS)
    for source in SOURCES:
        spec = f"{source.name}:{tmp_path}" if source.takes_path else source.name
        assert open_source(spec).name == source.name


def test_open_source_rejects_unknown_spec() -> None:
    """An unknown source spec is an InputError naming it and the specs it could be."""
    with pytest.raises(InputError, match=r"'ftp': expected yfinance, sample or csv:PATH$"):
        open_source("ftp")


@pytest.mark.parametrize("name", ["missing_folder", "missing.csv"])
def test_csv_missing_path_names_it(tmp_path: Path, name: str) -> None:
    """A CSV source path that does not exist is an InputError naming the path."""
    with pytest.raises(InputError, match=name):
        open_source(f"csv:{tmp_path / name}")
