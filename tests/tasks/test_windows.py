import tracemalloc
from datetime import date

import numpy as np
import pandas as pd
import pytest

from closecast.core.config import WindowConfig
from closecast.core.errors import PipelineError
from closecast.core.statuses import INSUFFICIENT_HISTORY, STALE_DATA
from closecast.tasks.modeling.windows import build_windows, make_windows, split_boundaries


def test_make_windows_on_arange() -> None:
    """Row i of the result holds rows i .. i+window-1 of the series."""
    values = np.arange(12, dtype=float).reshape(6, 2)  # 6 rows, 2 features
    windows = make_windows(values, 3)
    assert windows.shape == (4, 3, 2)
    np.testing.assert_array_equal(windows[0], [[0, 1], [2, 3], [4, 5]])
    np.testing.assert_array_equal(windows[3], [[6, 7], [8, 9], [10, 11]])


def test_make_windows_exact_length_gives_one_window() -> None:
    """A series exactly as long as the window gives one window."""
    assert make_windows(np.arange(5.0)[:, None], 5).shape == (1, 5, 1)


@pytest.mark.parametrize("n", [0, 1, 9])
def test_make_windows_too_short_says_what_to_do(n: int) -> None:
    """A series shorter than the window raises an error naming both lengths."""
    with pytest.raises(ValueError, match=rf"{n} rows, fewer than the window of 10.*--window"):
        make_windows(np.zeros((n, 3)), 10)


def test_split_boundaries_are_dates_in_time_order() -> None:
    """10% test and 10% validation are the last dates; train is everything before."""
    dates = pd.date_range("2020-01-01", periods=100, freq="D").to_numpy()
    val_start, test_start = split_boundaries(dates, 0.1, 0.1)
    assert val_start == pd.Timestamp("2020-03-21")
    assert test_start == pd.Timestamp("2020-03-31")


def test_split_boundaries_refuse_too_few_dates() -> None:
    with pytest.raises(PipelineError, match="only 2 dates"):
        split_boundaries(pd.date_range("2020-01-01", periods=2).to_numpy(), 0.4, 0.4)


def _frame(n: int, start: str = "2020-01-01", offset: float = 0.0) -> pd.DataFrame:
    index = pd.bdate_range(start, periods=n, name="date")
    close = 100.0 + offset + np.arange(n, dtype=float)
    frame = {"close": close, "volume": 1e6 + np.arange(n), "high": close + 1, "low": close - 1}
    return pd.DataFrame(frame, index=index)


def test_dataset_splits_every_ticker_at_the_same_dates() -> None:
    """Windows are assigned to train/val/test by the date of the close they predict."""
    features = {"A": _frame(100), "B": _frame(100, offset=50)}
    config = WindowConfig(window=5, features=["close", "volume"])
    dataset = build_windows(features, config, as_of=date(2020, 5, 19))
    assert np.all(dataset.train.target_dates < np.datetime64(dataset.val_start))
    assert np.all(dataset.validation.target_dates >= np.datetime64(dataset.val_start))
    assert np.all(dataset.validation.target_dates < np.datetime64(dataset.test_start))
    assert np.all(dataset.test.target_dates >= np.datetime64(dataset.test_start))
    assert len(dataset.train) + len(dataset.validation) + len(dataset.test) == 2 * 95
    # Each window's next_close is the close right after its last row.
    np.testing.assert_array_equal(dataset.train.next_close, dataset.train.last_close + 1)
    assert sorted(dataset.latest.tickers) == ["A", "B"]
    np.testing.assert_array_equal(dataset.latest.windows[0, :, 0], 100 + np.arange(95, 100))


def test_dataset_flags_short_and_stale_tickers() -> None:
    """A short ticker is insufficient_history; one ending before as_of is stale_data."""
    features = {"A": _frame(100), "OLD": _frame(90), "TINY": _frame(8, start="2020-05-01")}
    config = WindowConfig(window=5, features=["close", "volume"])
    dataset = build_windows(features, config, as_of=date(2020, 5, 19))
    assert dataset.issues["TINY"][0] == INSUFFICIENT_HISTORY
    assert dataset.issues["OLD"][0] == STALE_DATA
    assert "OLD" in dataset.train.tickers  # a stale ticker still trains
    assert list(dataset.latest.tickers) == ["A"]


@pytest.mark.parametrize(
    ("rows", "start", "message"),
    [
        # Too short for one window and the test span: the count and the need are both rows.
        (12, "2021-02-08", "only 12 rows of valid history; the model needs 35 (window 5 + test span 30)"),
        # Long enough, but it starts after the training dates: it has no row to train on.
        (50, "2020-12-16", "its 50 rows of valid history start on 2020-12-16, after training ends: the model needs rows before 2020-12-02, where validation starts"),
    ],
)  # fmt: skip
def test_insufficient_history_counts_what_it_needs(rows: int, start: str, message: str) -> None:
    """The message counts the same thing it says the model needs (never "only 50 rows; the
    model needs 35")."""
    features = {"A": _frame(300), "LATE": _frame(rows, start=start)}
    config = WindowConfig(window=5, features=["close", "volume"])
    dataset = build_windows(features, config, as_of=date(2021, 2, 23))
    assert dataset.issues["LATE"] == (INSUFFICIENT_HISTORY, message)
    assert "LATE" not in dataset.tickers


def test_training_inputs_ignore_values_after_the_boundary() -> None:
    """A huge value planted after the train boundary leaves the training windows unchanged."""
    config = WindowConfig(window=5, features=["close", "volume"], target="minmax_close")
    clean = build_windows({"A": _frame(100)}, config, as_of=date(2020, 5, 19))
    planted = _frame(100)
    planted.loc[planted.index >= clean.val_start, "close"] = 1e9
    dirty = build_windows({"A": planted}, config, as_of=date(2020, 5, 19))
    np.testing.assert_array_equal(clean.train.windows, dirty.train.windows)
    np.testing.assert_array_equal(clean.train.next_close, dirty.train.next_close)
    assert clean.bounds == dirty.bounds  # MinMax fitted on the training span only


def test_the_splits_are_copied_once_from_the_tickers_values() -> None:
    """Building 30 tickers' windows allocates little beyond the split arrays it returns
    (no whole-universe array of every window before the split), in ticker and date order."""
    features = {f"T{i:02}": _frame(400, offset=i) for i in range(30)}
    config = WindowConfig(window=10, features=["close", "volume"])
    tracemalloc.start()
    dataset = build_windows(features, config, as_of=date(2021, 7, 30))
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    splits = (dataset.train, dataset.validation, dataset.test)
    windows = sum(s.windows.nbytes for s in splits)
    assert windows == 30 * 390 * 10 * 4 * 8  # every window, float64
    assert peak < 1.5 * windows
    for split in splits:
        assert list(dict.fromkeys(split.tickers)) == sorted(features)  # each ticker's run, in order
    for split in splits:
        for ticker in features:
            dates = split.target_dates[split.tickers == ticker]
            assert (np.diff(dates) > np.timedelta64(0)).all()
