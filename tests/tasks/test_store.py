import os
import stat
import threading
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from filelock import Timeout

from closecast.core.errors import PipelineError
from closecast.core.statuses import INSUFFICIENT_HISTORY, INVALID_DATA
from closecast.tasks.data.store import (
    PRICE_COLUMNS,
    CorruptStoreFile,
    is_canonical,
    load_prices,
    merge_prices,
    normalize_prices,
    price_path,
    read_prices,
    read_store,
    save_prices,
    store_lock,
    write_atomic,
    write_prices,
)
from tests.fakes import yahoo_frame


def _prices(n: int, start: str = "2020-01-02", seed: int = 0) -> pd.DataFrame:
    """n canonical rows on consecutive XNYS sessions from `start`."""
    frame = yahoo_frame(n, start=start, seed=seed).rename(
        columns={"Adj Close": "adj_close", **{c: c.lower() for c in ["Open", "High", "Low"]}}
    )
    return normalize_prices(frame.rename(columns={"Close": "close", "Volume": "volume"}))


def test_normalize_gives_unique_ascending_naive_dates() -> None:
    """tz-aware, unsorted, duplicated input -> naive ascending unique dates; last duplicate wins."""
    frame = yahoo_frame(4).rename(columns=str.lower).drop(columns=["adj close"])
    shuffled = pd.concat([frame.iloc[[2, 0, 1, 3]], frame.iloc[[1]].assign(close=1.0)])
    out = normalize_prices(shuffled)
    assert list(out.columns) == PRICE_COLUMNS
    assert out.index.tz is None and out.index.name == "date"
    assert out.index.is_unique and out.index.is_monotonic_increasing
    assert out.index[0] == pd.Timestamp("2020-01-02")
    assert out["close"].iloc[1] == 1.0
    np.testing.assert_allclose(out["adj_close"], out["close"])  # missing adj_close = close


def _shift_one_date(frame: pd.DataFrame, by: pd.Timedelta) -> pd.DataFrame:
    index = frame.index.to_numpy().copy()
    index[1] = index[1] + by
    return frame.set_axis(pd.DatetimeIndex(index, name="date"))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda f: f.tz_localize("UTC"), "tz-aware"),
        (lambda f: _shift_one_date(f, pd.Timedelta(hours=16)), "a time of day"),
        (lambda f: _shift_one_date(f, -pd.Timedelta(days=1)), "a duplicate date"),
        (lambda f: f.iloc[::-1], "descending"),
        (lambda f: f.rename_axis("Date"), "another index name"),
        (lambda f: f.drop(columns="adj_close"), "a missing column"),
        (lambda f: f[PRICE_COLUMNS[::-1]], "columns out of order"),
        (lambda f: f.astype({"volume": "int64"}), "an int column"),
        (lambda f: f.set_axis(f.index.astype("datetime64[s]")), "second resolution"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_only_a_canonical_frame_skips_normalizing(change, why: str) -> None:  # type: ignore[no-untyped-def]
    """A canonical frame (a stored file read back) is copied as is; any deviation from it
    is not canonical, and normalizing makes it so again."""
    canonical = _prices(5)
    assert is_canonical(canonical)
    again = normalize_prices(canonical)
    pd.testing.assert_frame_equal(again, canonical)
    again.iloc[0, 0] = -1.0
    assert canonical.iloc[0, 0] != -1.0  # a copy, not a view
    changed = change(canonical)
    assert not is_canonical(changed), why
    assert is_canonical(normalize_prices(changed)), why


@pytest.mark.parametrize("ticker", ["../x", "..", "."])
def test_price_path_refuses_to_leave_the_folder(tmp_path: Path, ticker: str) -> None:
    """A ticker that would put a file outside the prices folder is refused."""
    with pytest.raises(ValueError, match="invalid ticker"):
        price_path(tmp_path / "prices", ticker)


def test_write_and_read_round_trip(tmp_path: Path) -> None:
    """What is written is read back equal, and no temporary file is left behind."""
    frame = _prices(20)
    path = write_prices(tmp_path, "AAA", frame)
    pd.testing.assert_frame_equal(read_prices(tmp_path, "AAA"), frame)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
    assert read_prices(tmp_path, "NONE") is None


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    """An exception in the middle of a write leaves the old file whole and no temp file."""
    path = write_prices(tmp_path, "AAA", _prices(20))
    before = path.read_bytes()

    def write_half_then_fail(tmp: Path) -> None:
        tmp.write_bytes(before[: len(before) // 2])
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, write_half_then_fail)
    assert path.read_bytes() == before
    assert list(tmp_path.iterdir()) == [path]


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_the_umask_gives(tmp_path: Path, umask: int, mode: int) -> None:
    """A file written atomically has 0o666 less the umask, like any other new file."""
    previous = os.umask(umask)
    try:
        written = write_prices(tmp_path, "AAA", _prices(5))
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(written.stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == mode


def test_unreadable_file_is_named(tmp_path: Path) -> None:
    """A corrupt parquet file raises CorruptStoreFile naming the file."""
    (tmp_path / "AAA.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(CorruptStoreFile, match=r"AAA\.parquet"):
        read_prices(tmp_path, "AAA")


def test_merge_appends_only_newer_rows() -> None:
    """A longer source extends the store; overlapping rows are not duplicated."""
    full = _prices(30)
    merged = merge_prices(full.iloc[:20], full.iloc[15:])
    assert not merged.rebased and merged.added == 10
    pd.testing.assert_frame_equal(merged.frame, full)


def test_merge_of_the_same_rows_changes_nothing() -> None:
    """Fetching what is already stored adds nothing."""
    stored = _prices(20)
    merged = merge_prices(stored, stored.iloc[-5:].copy())
    assert merged.added == 0 and not merged.rebased
    pd.testing.assert_frame_equal(merged.frame, stored)


@pytest.mark.parametrize("column", ["close", "adj_close"])
def test_merge_flags_a_rebased_overlap(column: str) -> None:
    """A split (close) or dividend (adj_close) re-basing the overlap is flagged, not merged."""
    full = _prices(30)
    fetched = full.iloc[15:].copy()
    fetched[column] *= 0.5 if column == "close" else 0.99
    merged = merge_prices(full.iloc[:20], fetched)
    assert merged.rebased and merged.added == 0
    pd.testing.assert_frame_equal(merged.frame, full.iloc[:20])


def test_save_fetched_writes_only_what_changed(tmp_path: Path) -> None:
    """New rows are written; an unchanged ticker's file is not rewritten; re-based ones come back."""
    full = _prices(30)
    for ticker in ["NEW", "SAME", "REBASED"]:
        write_prices(tmp_path, ticker, full.iloc[:20])
    (tmp_path / "NEW.parquet").unlink()
    same_mtime = (tmp_path / "SAME.parquet").stat().st_mtime_ns
    rebased = full.iloc[15:].assign(adj_close=full["adj_close"].iloc[15:] * 0.9)
    update = save_prices(
        tmp_path,
        {"NEW": None, "SAME": full.iloc[:20], "REBASED": full.iloc[:20]},
        {"NEW": full, "SAME": full.iloc[15:20], "REBASED": rebased},
    )
    assert update.added == {"NEW": 30}
    assert update.rebased == ["REBASED"]
    assert (tmp_path / "SAME.parquet").stat().st_mtime_ns == same_mtime
    assert len(read_prices(tmp_path, "REBASED")) == 20
    replaced = save_prices(tmp_path, {"REBASED": None}, {"REBASED": rebased}, replace=True)
    assert replaced.added == {"REBASED": 15}
    pd.testing.assert_frame_equal(read_prices(tmp_path, "REBASED"), rebased, check_freq=False)


def test_many_files_are_read_and_written_in_threads_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """40 tickers, written and read IO_THREADS at a time: each frame lands under its own
    ticker, in the order asked, and a corrupt file among them is named and read as None.
    A write that fails raises, after the other writes have completed (each atomic)."""
    tickers = [f"T{i:02d}" for i in range(40)]
    frames = {t: _prices(10 + i, seed=i) for i, t in enumerate(tickers)}
    update = save_prices(tmp_path, dict.fromkeys(tickers), frames)
    assert update.added == {t: len(f) for t, f in frames.items()}
    (tmp_path / "T07.parquet").write_bytes(b"PAR1 not really")
    asked = tickers[::-1]
    stored, unreadable = read_store(tmp_path, asked)
    assert list(stored) == asked and list(unreadable) == ["T07"]
    assert "T07.parquet" in unreadable["T07"] and stored["T07"] is None
    for ticker in set(tickers) - {"T07"}:
        pd.testing.assert_frame_equal(stored[ticker], frames[ticker], check_freq=False)

    real = pd.DataFrame.to_parquet

    def fail_for_t03(self: pd.DataFrame, path: Path, *args: object, **kwargs: object) -> None:
        if len(self) == len(frames["T03"]) + 1:
            raise OSError("disk full")
        real(self, path, *args, **kwargs)

    grown = {t: _prices(len(f) + 1, seed=int(t[1:])) for t, f in frames.items()}
    monkeypatch.setattr(pd.DataFrame, "to_parquet", fail_for_t03)
    with pytest.raises(OSError, match="disk full"):
        save_prices(tmp_path, dict.fromkeys(tickers), grown, replace=True)
    monkeypatch.undo()
    assert len(read_prices(tmp_path, "T03")) == len(frames["T03"])  # the old file, whole
    assert len(read_prices(tmp_path, "T39")) == len(grown["T39"])  # the others written
    assert not list(tmp_path.glob(".*.tmp"))


def test_store_lock_excludes_a_second_holder(tmp_path: Path) -> None:
    """While one run holds a home's lock, another cannot take it."""
    acquired: list[bool] = []

    def try_lock() -> None:
        try:
            with store_lock(tmp_path).acquire(timeout=0.2):
                acquired.append(True)
        except Timeout:
            acquired.append(False)

    with store_lock(tmp_path):
        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join()
    try_lock()
    assert acquired == [False, True]


# --- point in time ------------------------------------------------------------


@pytest.fixture
def store_2018(tmp_path: Path) -> Path:
    """AAA: every session of 2018 H2 from 2018-06-01; OLD stops at 2018-06-29; CUT is corrupt."""
    prices_dir = tmp_path / "prices"
    full = _prices(150, start="2018-06-01")
    write_prices(prices_dir, "AAA", full)
    write_prices(prices_dir, "OLD", full[full.index <= "2018-06-29"])
    (prices_dir / "CUT.parquet").write_bytes(b"garbage")
    return prices_dir


@pytest.mark.parametrize(
    ("as_of", "session", "target"),
    [
        (date(2018, 12, 31), date(2018, 12, 31), date(2019, 1, 2)),  # New Year's Day
        (date(2018, 7, 3), date(2018, 7, 3), date(2018, 7, 5)),  # Independence Day
        (date(2018, 7, 4), date(2018, 7, 3), date(2018, 7, 5)),  # a holiday as_of
        (date(2018, 9, 2), date(2018, 8, 31), date(2018, 9, 4)),  # Sunday before Labor Day
    ],
)
def test_point_in_time_uses_sessions(
    store_2018: Path, as_of: date, session: date, target: date
) -> None:
    """as_of is the last XNYS session on or before D; target_date the next session."""
    loaded = load_prices(store_2018, ["AAA"], as_of)
    assert (loaded.as_of, loaded.target_date) == (session, target)
    assert loaded.frames["AAA"].index[-1] == pd.Timestamp(session)


def test_point_in_time_drops_rows_after_as_of(store_2018: Path) -> None:
    """Rows dated after as_of are never returned, whatever the store holds."""
    loaded = load_prices(store_2018, ["AAA", "OLD"], date(2018, 7, 20))
    assert loaded.frames["AAA"].index.max() == pd.Timestamp("2018-07-20")
    assert loaded.frames["OLD"].index.max() == pd.Timestamp("2018-06-29")
    full = read_prices(store_2018, "AAA")
    pd.testing.assert_frame_equal(loaded.frames["AAA"], full[full.index <= "2018-07-20"])


def test_point_in_time_without_as_of_uses_the_last_stored_date(store_2018: Path) -> None:
    """No as_of: the last date any ticker has."""
    loaded = load_prices(store_2018, ["AAA", "OLD"], None)
    assert loaded.as_of == read_prices(store_2018, "AAA").index[-1].date()


def test_point_in_time_says_why_a_ticker_has_no_rows(store_2018: Path) -> None:
    """Nothing stored or nothing before as_of: insufficient_history; unreadable: invalid_data."""
    loaded = load_prices(store_2018, ["AAA", "CUT", "NONE", "OLD"], date(2018, 6, 15))
    assert set(loaded.frames) == {"AAA", "OLD"}
    issues = loaded.issues
    assert set(issues) == {"CUT", "NONE"}
    assert issues["NONE"] == (INSUFFICIENT_HISTORY, "no stored price on or before 2018-06-15")
    assert issues["CUT"][0] == INVALID_DATA and "CUT.parquet" in issues["CUT"][1]

    before_any = load_prices(store_2018, ["AAA"], date(2018, 5, 1))
    assert before_any.frames == {}
    assert before_any.issues["AAA"][0] == INSUFFICIENT_HISTORY


def test_point_in_time_with_nothing_stored_fails(tmp_path: Path) -> None:
    """No stored prices for any ticker is a PipelineError naming them."""
    with pytest.raises(PipelineError, match="AAA"):
        load_prices(tmp_path, ["AAA"], None)
