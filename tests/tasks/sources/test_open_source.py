from pathlib import Path

import pytest

from closecast.core.errors import InputError
from closecast.tasks.data.sources import CsvSource, SampleSource, YFinanceSource, open_source


@pytest.mark.parametrize(
    ("spec", "kind"), [("yfinance", YFinanceSource), ("sample", SampleSource), ("csv:", CsvSource)]
)
def test_open_source_opens_the_source_its_spec_names(tmp_path: Path, spec: str, kind: type) -> None:
    """`yfinance`, `sample` and `csv:PATH` open their own source; csv keeps its path."""
    source = open_source(spec + (str(tmp_path) if spec == "csv:" else ""))
    assert isinstance(source, kind) and source.name == spec.rstrip(":")
    if isinstance(source, CsvSource):
        assert source.path == tmp_path


def test_open_source_rejects_unknown_spec() -> None:
    """An unknown source spec is an InputError naming it."""
    with pytest.raises(InputError, match="'ftp'"):
        open_source("ftp")


@pytest.mark.parametrize("name", ["missing_folder", "missing.csv"])
def test_csv_missing_path_names_it(tmp_path: Path, name: str) -> None:
    """A CSV source path that does not exist is an InputError naming the path."""
    with pytest.raises(InputError, match=name):
        open_source(f"csv:{tmp_path / name}")
