import tracemalloc
from datetime import date

import numpy as np
import pandas as pd
import pytest

from closecast.core.config import WindowConfig
from closecast.core.errors import PipelineError
from closecast.core.statuses import INSUFFICIENT_HISTORY, STALE_DATA
from closecast.tasks.modeling.windows import (
    WindowArray,
    WindowSet,
    build_windows,
    make_windows,
    split_boundaries,
    window_columns,
)


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


def test_the_splits_read_windows_from_one_copy_of_the_rows() -> None:
    """30 tickers' windows cost their rows, not rows x window: the splits share one (R, C)
    array, hold what make_windows would cut, and keep ticker-then-date order."""
    features = {f"T{i:02}": _frame(400, offset=i) for i in range(30)}
    config = WindowConfig(window=10, features=["close", "volume"])
    tracemalloc.start()
    dataset = build_windows(features, config, as_of=features["T00"].index[-1].date())
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    splits = (dataset.train, dataset.validation, dataset.test)
    assert list(dataset.latest.tickers) == sorted(features)
    dense = 30 * 390 * 10 * 4 * 8  # every window, float64, as one array would hold them
    assert sum(len(s) for s in splits) == 30 * 390
    assert peak < 0.5 * dense
    assert len({id(s.windows.rows) for s in (*splits, dataset.latest)}) == 1
    first = features["T00"][window_columns(config.features)].to_numpy(np.float64)
    cut = make_windows(first[:-1], 10)
    mine = np.concatenate([s.windows[s.tickers == "T00"] for s in splits])
    np.testing.assert_array_equal(mine, cut)
    np.testing.assert_array_equal(dataset.latest.windows[0], first[-10:])
    for split in splits:
        assert list(dict.fromkeys(split.tickers)) == sorted(features)  # each ticker's run, in order
    for split in splits:
        for ticker in features:
            dates = split.target_dates[split.tickers == ticker]
            assert (np.diff(dates) > np.timedelta64(0)).all()


def test_window_array_indexes_like_the_dense_array() -> None:
    """Every index form the pipeline uses gives what the dense (N, T, C) array gives."""
    dense = np.arange(6 * 4 * 3, dtype=np.float64).reshape(6, 4, 3)
    lazy = WindowArray.from_dense(dense)
    assert lazy.shape == dense.shape and len(lazy) == 6
    mask = np.array([True, False, True, False, False, True])
    for key in (
        2,
        slice(1, 4),
        mask,
        np.array([5, 0]),
        (slice(None), -1, 0),
        (slice(None), slice(None), [0, 2]),
        (mask, slice(-2, None), 1),
    ):
        np.testing.assert_array_equal(lazy[key], dense[key])
    np.testing.assert_array_equal(np.asarray(lazy), dense)
    np.testing.assert_array_equal(lazy.take(mask)[:, 0], dense[mask][:, 0])
    np.testing.assert_array_equal(lazy.last(2, [2, 0])[:], dense[:, -2:, [2, 0]])
    with pytest.raises(IndexError, match="at most"):
        lazy[..., 0]


def test_sample_draws_a_seeded_subset_in_order() -> None:
    dense = np.arange(100 * 2 * 1, dtype=np.float64).reshape(100, 2, 1)
    every = WindowSet(
        dense,
        np.arange(100.0),
        np.array(["A"] * 100, dtype=object),
        np.arange(100).astype("datetime64[D]").astype("datetime64[ns]"),
        np.ones(100),
    )
    assert every.sample(None, 0) is every and every.sample(100, 0) is every
    drawn = every.sample(30, 7)
    assert len(drawn) == 30 and (np.diff(drawn.next_close) > 0).all()
    np.testing.assert_array_equal(drawn.windows[:, 0, 0], 2 * drawn.next_close)
    np.testing.assert_array_equal(every.sample(30, 7).next_close, drawn.next_close)
    assert not np.array_equal(every.sample(30, 8).next_close, drawn.next_close)
    assert [len(b) for b in every.batches(40)] == [40, 40, 20]
