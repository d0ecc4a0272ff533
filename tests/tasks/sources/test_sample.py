"""The `sample` source: real ^GSPC and ^IXIC daily rows shipped with `arch`, read offline."""

from datetime import date

import numpy as np
import pandas as pd
import pytest

from closecast.core.calendar import sessions_between
from closecast.tasks.data.sources.sample import SampleSource
from closecast.tasks.data.store import PRICE_COLUMNS


@pytest.fixture(scope="module")
def everything() -> dict[str, pd.DataFrame]:
    return SampleSource().download(["^GSPC", "^IXIC"], None, None).frames


def test_it_is_a_local_source_named_sample() -> None:
    """Its data ends where the file ends, so it is not live (as_of = its last row)."""
    source = SampleSource()
    assert (source.name, source.live) == ("sample", False)


def test_it_serves_real_index_closes(everything: dict[str, pd.DataFrame]) -> None:
    """The rows are the real indexes: 2008-09-29, the day the S&P 500 fell 8.8%."""
    gspc, ixic = everything["^GSPC"], everything["^IXIC"]
    day, before = pd.Timestamp("2008-09-29"), pd.Timestamp("2008-09-26")
    assert gspc.at[day, "close"] == pytest.approx(1106.42, abs=0.01)
    assert ixic.at[day, "close"] == pytest.approx(1983.73, abs=0.01)
    assert gspc.at[day, "close"] / gspc.at[before, "close"] - 1 == pytest.approx(-0.088, abs=1e-3)


def test_both_indexes_hold_every_session_of_1999_to_2018_in_store_columns(
    everything: dict[str, pd.DataFrame],
) -> None:
    """Each XNYS session 1999-01-04 … 2018-12-31 once, float columns as the store keeps them."""
    assert sorted(everything) == ["^GSPC", "^IXIC"]
    for frame in everything.values():
        assert list(frame.columns) == PRICE_COLUMNS
        assert (frame.dtypes == np.float64).all()
        assert frame.index.name == "date" and frame.index.tz is None
        assert frame.index.is_unique and frame.index.is_monotonic_increasing
        assert list(frame.index.date) == sessions_between(date(1999, 1, 4), date(2018, 12, 31))
        assert frame.notna().all().all()
        assert (frame["low"] <= frame[["open", "close"]].min(axis=1)).all()
        assert (frame[["open", "close"]].max(axis=1) <= frame["high"]).all()
    pd.testing.assert_index_equal(everything["^GSPC"].index, everything["^IXIC"].index)


def test_start_and_end_are_inclusive() -> None:
    """2010-01-04 … 2010-01-08 is that week's five sessions, both ends included."""
    result = SampleSource().download(["^GSPC"], date(2010, 1, 4), date(2010, 1, 8))
    assert list(result.frames["^GSPC"].index.strftime("%Y-%m-%d")) == [
        "2010-01-04",
        "2010-01-05",
        "2010-01-06",
        "2010-01-07",
        "2010-01-08",
    ]
    assert result.failures == {}


def test_other_tickers_and_dates_past_2018_fail_with_a_reason() -> None:
    """A ticker it does not hold, or a range after its last row: one line each, no frame."""
    result = SampleSource().download(["AAPL", "^IXIC"], date(2030, 1, 1), None)
    assert result.frames == {}
    assert result.failures == {
        "AAPL": "ticker AAPL is not in the source",
        "^IXIC": "the source has no rows for ^IXIC from 2030-01-01 on",
    }
