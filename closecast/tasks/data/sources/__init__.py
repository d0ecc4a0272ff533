"""Price sources: yfinance, sample and csv, behind one protocol.

Every source returns canonical frames (see `closecast.tasks.data.store.normalize_prices`)
for the tickers it has, and a one-line reason for those it has not.
"""

from pathlib import Path

from closecast.core.errors import InputError
from closecast.tasks.data.sources.base import FetchResult, PriceSource, TransientFetchError
from closecast.tasks.data.sources.csv import CsvSource
from closecast.tasks.data.sources.sample import SampleSource
from closecast.tasks.data.sources.yfinance import YFinanceSource

__all__ = [
    "CsvSource",
    "FetchResult",
    "PriceSource",
    "SampleSource",
    "TransientFetchError",
    "YFinanceSource",
    "open_source",
]


def open_source(spec: str) -> PriceSource:
    """The source a `--source` spec names; InputError for a missing CSV path."""
    if spec == "yfinance":
        return YFinanceSource()
    if spec == "sample":
        return SampleSource()
    if spec.startswith("csv:"):
        return CsvSource(Path(spec.removeprefix("csv:")).expanduser())
    raise InputError(f"invalid source {spec!r}: expected yfinance, sample or csv:PATH")
