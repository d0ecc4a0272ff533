from datetime import date
from pathlib import Path

import pytest

from closecast.core.errors import PipelineError
from closecast.tasks.reporting.backfill import plan_backfill, plan_sessions, waiting_message
from closecast.tasks.reporting.report import POINT_ONLY_COLUMNS, REPORT_COLUMNS

DAYS = [date(2024, 1, d) for d in (2, 3, 4, 5, 8)]


@pytest.mark.parametrize(
    ("every", "done", "expected"),
    [
        (1, set(), [(d, True) for d in DAYS]),
        (2, set(), [(DAYS[0], True), (DAYS[1], False), (DAYS[2], True), (DAYS[3], False), (DAYS[4], True)]),
        # A re-run after the first two sessions: the first one left always retrains.
        (2, set(DAYS[:2]), [(DAYS[2], True), (DAYS[3], False), (DAYS[4], True)]),
        (3, set(DAYS[:2]), [(DAYS[2], True), (DAYS[3], True), (DAYS[4], False)]),
        (1, set(DAYS), []),
    ],
)  # fmt: skip
def test_plan_sessions_skips_done_and_marks_retraining(
    every: int, done: set[date], expected: list[tuple[date, bool]]
) -> None:
    """Done sessions are skipped; session i retrains when i % every == 0, or when first."""
    planned = plan_sessions(DAYS, done, every)
    assert [(s.as_of, s.retrain) for s in planned] == expected


def test_plan_sessions_refuses_retrain_every_below_one() -> None:
    """retrain_every 0 is an error naming the value."""
    with pytest.raises(ValueError, match="got 0"):
        plan_sessions(DAYS, set(), 0)


def test_make_plan_counts_only_complete_reports_as_done(tmp_path: Path) -> None:
    """A report for other tickers (or a foreign file) does not mark its session done."""
    columns = "as_of,target_date,ticker,last_close,predicted_close,predicted_return,model_name,model_version,run_id,status,message"
    (tmp_path / "predictions_2024-01-02.csv").write_text(
        f"{columns}\n2024-01-02,2024-01-03,AAA,1,1,0,m,1,r,ok,\n"
        "2024-01-02,2024-01-03,BBB,1,1,0,m,1,r,ok,\n"
    )
    (tmp_path / "predictions_2024-01-03.csv").write_text(
        f"{columns}\n2024-01-03,2024-01-04,AAA,1,1,0,m,1,r,ok,\n"
    )
    (tmp_path / "predictions_2024-01-04.csv").write_text("not,a,report\n")
    # Written before the session's prices arrived (an older version): every row stale_data.
    (tmp_path / "predictions_2024-01-05.csv").write_text(
        f"{columns}\n2024-01-05,2024-01-08,AAA,1,,,m,1,r,stale_data,old\n"
        "2024-01-05,2024-01-08,BBB,1,,,m,1,r,stale_data,old\n"
    )
    end = date(2024, 1, 5)
    plan = plan_backfill(tmp_path, ["AAA", "BBB"], date(2024, 1, 1), end, 1, last_stored=end)
    assert plan.done == [date(2024, 1, 2)]
    assert [s.as_of for s in plan.sessions] == [date(2024, 1, d) for d in (3, 4, 5)]
    assert plan.waiting == []
    assert waiting_message(plan) == ""


def test_a_report_with_a_column_added_later_or_none_of_the_intervals_stays_done(
    tmp_path: Path,
) -> None:
    """Readers match columns by name: a report written by an older version (no interval
    columns) or a newer one (a column added, in any position) is done; one that lacks a
    column every report has had is not a report."""
    rows = {
        "as_of": "2024-01-02", "target_date": "2024-01-03", "last_close": "1",
        "predicted_close": "1", "predicted_return": "0", "lower_80": "0.9", "upper_80": "1.1",
        "lower_95": "0.8", "upper_95": "1.2", "model_name": "m", "model_version": "1",
        "run_id": "r", "status": "ok", "message": "",
    }  # fmt: skip

    def write(day: int, columns: list[str]) -> None:
        lines = [",".join(columns)]
        for ticker in ("AAA", "BBB"):
            values = rows | {"ticker": ticker, "as_of": f"2024-01-0{day}", "new_score": "0.5"}
            lines.append(",".join(values[c] for c in columns))
        (tmp_path / f"predictions_2024-01-0{day}.csv").write_text("\n".join(lines) + "\n")

    write(2, REPORT_COLUMNS)  # today's
    write(3, POINT_ONLY_COLUMNS)  # before the intervals
    write(4, [*REPORT_COLUMNS[:5], "new_score", *REPORT_COLUMNS[5:]])  # a column added
    write(5, [c for c in REPORT_COLUMNS if c != "message"])  # not a report
    end = date(2024, 1, 5)
    plan = plan_backfill(tmp_path, ["AAA", "BBB"], date(2024, 1, 1), end, 1, last_stored=end)
    assert plan.done == [date(2024, 1, d) for d in (2, 3, 4)]
    assert [s.as_of for s in plan.sessions] == [end]


def test_make_plan_leaves_sessions_after_the_last_stored_date_waiting(tmp_path: Path) -> None:
    """Sessions after the store's last date are not run, and the message names them."""
    plan = plan_backfill(tmp_path, ["AAA"], date(2024, 1, 2), date(2024, 1, 8), 2, date(2024, 1, 3))
    assert [(s.as_of, s.retrain) for s in plan.sessions] == [(DAYS[0], True), (DAYS[1], False)]
    assert plan.waiting == DAYS[2:]
    assert waiting_message(plan) == (
        "no data after 2024-01-03 yet, not run: 2024-01-04, 2024-01-05, 2024-01-08; "
        "rerun the backfill when the data has arrived"
    )


@pytest.mark.parametrize(
    ("last_stored", "message"),
    [
        (date(2024, 1, 1), r"2024-01-02\.\.2024-01-08: the store ends 2024-01-01 for AAA; rerun"),
        (None, r"2024-01-02\.\.2024-01-08: the store holds none for AAA; rerun"),
    ],
)
def test_make_plan_fails_when_no_session_has_data(
    tmp_path: Path, last_stored: date | None, message: str
) -> None:
    """A range wholly after the store's last date fails in one line naming that date."""
    with pytest.raises(PipelineError, match=message):
        plan_backfill(tmp_path, ["AAA"], date(2024, 1, 2), date(2024, 1, 8), 1, last_stored)


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        (date(2024, 1, 5), date(2024, 1, 2), "after end"),
        (date(2024, 1, 6), date(2024, 1, 7), "no XNYS session"),  # a weekend
    ],
)
def test_make_plan_rejects_empty_ranges(
    tmp_path: Path, start: date, end: date, message: str
) -> None:
    """A reversed range, or one without a session, is a clear error."""
    with pytest.raises(ValueError, match=message):
        plan_backfill(tmp_path, ["AAA"], start, end, 1, last_stored=end)
