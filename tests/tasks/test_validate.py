import numpy as np
import pandas as pd
import pytest

from closecast.core.statuses import INVALID_DATA
from closecast.tasks.data.validate import REASONS, bad_row_reasons, validate_frame, validate_prices


def _clean(n: int = 8) -> pd.DataFrame:
    """n good daily bars: close 100, 101, ...; high/low bracket open and close."""
    close = 100.0 + np.arange(n)
    return pd.DataFrame(
        {
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "adj_close": close * 0.99,
            "volume": np.full(n, 1000.0),
        },
        index=pd.date_range("2020-01-06", periods=n, freq="B", name="date"),
    )


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("open", np.nan, "non_finite_price"),
        ("adj_close", np.inf, "non_finite_price"),
        ("close", 0.0, "non_positive_price"),
        ("low", -1.0, "non_positive_price"),
        ("volume", -5.0, "bad_volume"),
        ("volume", np.nan, "bad_volume"),
        ("high", 100.0, "inconsistent_ohlc"),  # below that day's close of 103
        ("low", 104.0, "inconsistent_ohlc"),  # above that day's open of 102.5
        ("close", 140.0, "price_spike"),  # 103 -> 140 -> 104 (and high/low fixed below)
    ],
)
def test_each_rule_drops_the_row_and_counts_it(column: str, value: float, reason: str) -> None:
    """A row breaking one rule is dropped and counted under that rule's name."""
    frame = _clean()
    frame.loc[frame.index[3], column] = value
    if reason == "price_spike":
        frame.loc[frame.index[3], ["open", "high", "low", "adj_close"]] = [140, 141, 139, 140]
    clean, counts = validate_frame(frame)
    assert counts == {reason: 1}
    assert frame.index[3] not in clean.index
    assert len(clean) == len(frame) - 1


def test_zero_volume_is_kept() -> None:
    """Volume 0 (a halted day) is valid: the rule is volume >= 0."""
    frame = _clean()
    frame.loc[frame.index[2], "volume"] = 0.0
    clean, counts = validate_frame(frame)
    assert counts == {} and len(clean) == len(frame)


def test_bar_copied_from_the_next_day_is_a_repeated_bar() -> None:
    """A bar with the next bar's open, high, low and close (volume differs) is dropped."""
    frame = _clean()
    frame.iloc[4, :4] = frame.iloc[5, :4].to_numpy()
    clean, counts = validate_frame(frame)
    assert counts == {"repeated_bar": 1}
    assert frame.index[4] not in clean.index and frame.index[5] in clean.index


def test_lasting_jump_is_not_a_spike() -> None:
    """A 60% drop that stays (a spin-off) is real data, not a bad tick."""
    frame = _clean()
    frame.iloc[4:, :5] = frame.iloc[4:, :5] * 0.4
    assert not bad_row_reasons(frame)["price_spike"].any()
    assert validate_frame(frame)[1] == {}


def test_a_row_counts_once_under_its_first_rule() -> None:
    """A row that breaks several rules counts once, under the first in REASONS order."""
    frame = _clean()
    frame.loc[frame.index[1], ["open", "volume"]] = [np.nan, -1.0]
    _, counts = validate_frame(frame)
    assert counts == {"non_finite_price": 1}
    assert REASONS.index("non_finite_price") < REASONS.index("bad_volume")


def test_validate_all_tables_counts_and_flags_empty_tickers() -> None:
    """Per (ticker, reason) counts; a ticker with no valid row left is invalid_data."""
    good, bad = _clean(), _clean(3)
    good.loc[good.index[[1, 2]], "close"] = np.nan
    bad["volume"] = -1.0
    result = validate_prices({"GOOD": good, "BAD": bad})
    assert result.rows_dropped == 5
    table = result.dropped.set_index(["ticker", "reason"])["rows"].to_dict()
    assert table == {("GOOD", "non_finite_price"): 2, ("BAD", "bad_volume"): 3}
    assert set(result.frames) == {"GOOD"}
    assert result.issues["BAD"][0] == INVALID_DATA
    assert result.issues["BAD"][1] == "all 3 price rows failed validation: 3 bad_volume"


def test_clean_data_drops_nothing() -> None:
    """Good data passes whole, with an empty count table."""
    result = validate_prices({"A": _clean()})
    assert result.rows_dropped == 0 and len(result.frames["A"]) == 8


def test_sp500_faults_are_counted_by_reason(sp500_frames: dict[str, pd.DataFrame]) -> None:
    """The shared S&P file's faults: NaN opens, a next-day copy, a bad tick, a wrong bar."""
    result = validate_prices({t: sp500_frames[t] for t in ["DHR", "LNT", "NWL", "ABT"]})
    table = result.dropped.set_index(["ticker", "reason"])["rows"].to_dict()
    assert table[("DHR", "non_finite_price")] == 2  # 2015-07-17 and 2016-01-12, volume 0
    assert table[("LNT", "inconsistent_ohlc")] == 1  # 2016-05-19 close 17.87, open 35.19
    assert table[("NWL", "price_spike")] == 1  # 2017-09-14 whole bar ~31 between ~44 and ~43
    assert table[("ABT", "repeated_bar")] == 2  # 2014-07-17 and 2014-08-01
    assert pd.Timestamp("2017-09-14") not in result.frames["NWL"].index
    assert pd.Timestamp("2016-05-19") not in result.frames["LNT"].index
    for frame in result.frames.values():
        assert frame.index.is_unique and frame.index.is_monotonic_increasing
        assert np.isfinite(frame.to_numpy()).all()
