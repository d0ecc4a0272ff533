"""The sample source: real daily index prices shipped with the `arch` package."""

from dataclasses import dataclass
from datetime import date
from functools import cached_property

import pandas as pd

from closecast.core.config import SAMPLE_TICKERS
from closecast.tasks.data.sources.base import YAHOO_COLUMNS, FetchResult, select_local
from closecast.tasks.data.store import normalize_prices


@dataclass
class SampleSource:
    """Real daily index OHLCV shipped in the `arch` package: ^GSPC and ^IXIC, 1999-2018."""

    name: str = "sample"
    live: bool = False

    @cached_property
    def _frames(self) -> dict[str, pd.DataFrame]:
        from arch.data import nasdaq, sp500

        loaders = {"^GSPC": sp500.load, "^IXIC": nasdaq.load}
        assert set(loaders) == set(SAMPLE_TICKERS)
        return {
            t: normalize_prices(load().rename(columns=YAHOO_COLUMNS)) for t, load in loaders.items()
        }

    def download(self, tickers: list[str], start: date | None, end: date | None) -> FetchResult:
        return select_local(self._frames, tickers, start, end)
