"""Backfill planning: which sessions still need a report, and which of them retrain."""

from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from closecast.core.calendar import sessions_between
from closecast.core.errors import PipelineError
from closecast.tasks.reporting.report import is_complete_report, report_path


@dataclass(frozen=True)
class PlannedSession:
    """One session of a backfill and whether it trains a new model."""

    as_of: date
    retrain: bool


@dataclass(frozen=True)
class BackfillPlan:
    """The sessions to run, those already reported, and those the store has no data for yet."""

    sessions: list[PlannedSession]
    done: list[date]
    waiting: list[date] = field(default_factory=list)  # after the last stored date: not run
    last_stored: date | None = None


def plan_sessions(
    sessions: list[date], done: set[date], retrain_every: int
) -> list[PlannedSession]:
    """Sessions without a complete report, each marked for retraining or not.

    Session i of the range retrains when i is a multiple of `retrain_every`;
    the first session left to run always retrains, since a re-run starts
    with no model in memory.

    Raises:
        ValueError: when retrain_every is below 1.
    """
    if retrain_every < 1:
        raise ValueError(f"retrain_every must be >= 1, got {retrain_every}")
    planned: list[PlannedSession] = []
    for i, session in enumerate(sessions):
        if session in done:
            continue
        planned.append(PlannedSession(session, retrain=not planned or i % retrain_every == 0))
    return planned


def plan_backfill(
    reports_dir: Path,
    tickers: list[str],
    start: date,
    end: date,
    retrain_every: int,
    last_stored: date | None,
) -> BackfillPlan:
    """The XNYS sessions in [start, end] that have no complete report yet.

    Sessions after `last_stored` (the last date with data in the store) are
    left waiting, never run: each would report stale_data for every ticker,
    and a rerun once the data has arrived fills them.

    Raises:
        ValueError: when start is after end or the range holds no session.
        PipelineError: when no session of the range has data in the store.
    """
    if start > end:
        raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
    sessions = sessions_between(start, end)
    if not sessions:
        raise ValueError(f"no XNYS session between {start.isoformat()} and {end.isoformat()}")
    if last_stored is None or sessions[0] > last_stored:
        stored = f"ends {last_stored.isoformat()}" if last_stored else "holds none"
        raise PipelineError(
            f"no stored prices for {start.isoformat()}..{end.isoformat()}: the store {stored}"
            f" for {', '.join(tickers)}; rerun when the data has arrived"
        )
    waiting = [s for s in sessions if s > last_stored]
    sessions = [s for s in sessions if s <= last_stored]
    done = {s for s in sessions if is_complete_report(report_path(reports_dir, s), tickers, s)}
    planned = plan_sessions(sessions, done, retrain_every)
    return BackfillPlan(planned, sorted(done), waiting, last_stored)


def waiting_message(plan: BackfillPlan) -> str:
    """The line that names the sessions left waiting for data; '' when there are none."""
    if not plan.waiting or plan.last_stored is None:
        return ""
    days = ", ".join(d.isoformat() for d in plan.waiting)
    return (
        f"no data after {plan.last_stored.isoformat()} yet, not run: {days}; "
        "rerun the backfill when the data has arrived"
    )
