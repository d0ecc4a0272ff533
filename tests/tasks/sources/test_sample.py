from datetime import date

import pandas as pd

from tasks.sources import SampleSource
from tasks.store import PRICE_COLUMNS


def test_sample_serves_its_two_indices_between_the_dates_asked() -> None:
    """^GSPC comes back canonical and clipped to [start, end]; a ticker it lacks fails by name."""
    result = SampleSource().download(["^GSPC", "AAPL"], date(2018, 1, 2), date(2018, 1, 31))

    gspc = result.frames["^GSPC"]
    assert list(gspc.columns) == PRICE_COLUMNS
    assert (gspc.index[0], gspc.index[-1]) == (
        pd.Timestamp("2018-01-02"),
        pd.Timestamp("2018-01-31"),
    )
    assert len(gspc) == 21  # NYSE sessions in January 2018
    assert (gspc["low"] <= gspc["close"]).all() and (gspc["close"] <= gspc["high"]).all()
    assert result.failures == {"AAPL": "ticker AAPL is not in the source"}
