"""Backfill planning: which sessions still need a report, and which of them retrain."""

from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, model_serializer

from core.calendar import sessions_between
from models.forecaster import Forecaster
from tasks.report import is_complete_report, report_path


@dataclass(frozen=True)
class PlannedSession:
    """One session of a backfill and whether it trains a new model."""

    as_of: date
    retrain: bool


@dataclass(frozen=True)
class BackfillPlan:
    """The sessions to run, and those already reported by an earlier backfill or run."""

    sessions: list[PlannedSession]
    done: list[date]


class ModelInUse(BaseModel):
    """The model a backfill predicts with until it retrains, held in memory.

    Passed from one session's flow run to the next; Prefect records only its
    label, never the weights.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    forecaster: Forecaster
    version: str  # registry version, or run:<mlflow run id> when nothing is registered
    metrics: dict[str, float]
    decision: str

    @model_serializer
    def _label(self) -> dict[str, Any]:
        return {"version": self.version, "decision": self.decision}


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


def make_plan(
    reports_dir: Path, tickers: list[str], start: date, end: date, retrain_every: int
) -> BackfillPlan:
    """The XNYS sessions in [start, end] that have no complete report yet.

    Raises:
        ValueError: when start is after end or the range holds no session.
    """
    if start > end:
        raise ValueError(f"start {start.isoformat()} is after end {end.isoformat()}")
    sessions = sessions_between(start, end)
    if not sessions:
        raise ValueError(f"no XNYS session between {start.isoformat()} and {end.isoformat()}")
    done = {s for s in sessions if is_complete_report(report_path(reports_dir, s), tickers, s)}
    return BackfillPlan(plan_sessions(sessions, done, retrain_every), sorted(done))


@task(name="plan-backfill", cache_policy=NO_CACHE, task_run_name="plan-backfill {start}..{end}")
def plan_backfill(
    reports_dir: Path, tickers: list[str], start: date, end: date, retrain_every: int
) -> BackfillPlan:
    """Plan the backfill; sessions already reported are skipped, not run again."""
    plan = make_plan(reports_dir, tickers, start, end, retrain_every)
    get_run_logger().info(
        "%d sessions to run (%d retrain), %d already reported",
        len(plan.sessions),
        sum(s.retrain for s in plan.sessions),
        len(plan.done),
    )
    return plan
