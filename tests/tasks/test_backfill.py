from datetime import date
from pathlib import Path

import pytest

from tasks.backfill import make_plan, plan_sessions

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
    plan = make_plan(tmp_path, ["AAA", "BBB"], date(2024, 1, 1), date(2024, 1, 5), 1)
    assert plan.done == [date(2024, 1, 2)]
    assert [s.as_of for s in plan.sessions] == [date(2024, 1, d) for d in (3, 4, 5)]


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
        make_plan(tmp_path, ["AAA"], start, end, 1)
