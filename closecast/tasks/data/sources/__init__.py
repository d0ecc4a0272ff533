"""Price sources: yfinance, sample and csv, behind one protocol.

Every source returns canonical frames (see `closecast.tasks.data.store.normalize_prices`)
for the tickers it has, and a one-line reason for those it has not. A new
source is its module here, an entry in `OPENERS`, and its name in
`closecast.core.sources.SOURCES` (what the config, the run form and `--source` accept).
"""

from collections.abc import Callable
from pathlib import Path

from closecast.core.errors import InputError
from closecast.core.sources import split_source
from closecast.tasks.data.sources.base import (
    FetchResult,
    PriceSource,
    RateLimitError,
    TransientFetchError,
)
from closecast.tasks.data.sources.csv import CsvSource
from closecast.tasks.data.sources.sample import SampleSource
from closecast.tasks.data.sources.yfinance import YFinanceSource

__all__ = [
    "OPENERS",
    "CsvSource",
    "FetchResult",
    "PriceSource",
    "RateLimitError",
    "SampleSource",
    "TransientFetchError",
    "YFinanceSource",
    "open_source",
]

# Each name in closecast.core.sources.SOURCES -> its source, given the spec's PATH ("" if none).
OPENERS: dict[str, Callable[[str], PriceSource]] = {
    "yfinance": lambda _: YFinanceSource(),
    "sample": lambda _: SampleSource(),
    "csv": lambda path: CsvSource(Path(path).expanduser()),
}


def open_source(spec: str) -> PriceSource:
    """The source a `--source` spec names.

    Raises:
        InputError: a spec that names no source (naming it and the valid ones), or a CSV
            path that does not exist.
    """
    try:
        source, path = split_source(spec)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    return OPENERS[source.name](path)
