"""Is the nightly healthy? The last nightly, the session it should cover, the champion.

`closecast status` reads the tracking store and the reports folder only; the
logic lives here as plain functions so that tests pass an explicit `now`.
A session is covered by a nightly that did not fail and whose report is
there to read: a nightly killed with `kill -9` leaves its MLflow run RUNNING
and no report, which counts as running for the late window the alerts use
(closecast/cli/alerts.py LATE_WITHIN), and as killed after it.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from sqlalchemy.exc import SQLAlchemyError

from closecast.core.calendar import session_on_or_before
from closecast.core.config import EXPERIMENT, MODEL_NAME
from closecast.core.errors import PipelineError
from closecast.core.schedule import NIGHTLY_SLOT
from closecast.tasks.mlflow.auth import refusals_as_errors
from closecast.tasks.mlflow.connection import connect_mlflow, unreadable_store
from closecast.tasks.registry.aliases import (
    CHAMPION,
    alias_history,
    current_aliases,
    reconcile_aliases,
)
from closecast.tasks.reporting.report import report_path
from closecast.tasks.reporting.scorecard import UnreadableReport, read_report

LIVE_METRICS = (
    "live_rmse_20d",
    "live_naive_rmse_20d",
    "live_coverage_80_20d",
    "live_coverage_95_20d",
)
CHAMPION_SINCE_TAG = "champion_since"
SEARCHED_RUNS = 200
FAILED_RUN_STATUSES = ("FAILED", "KILLED")


@dataclass(frozen=True)
class Nightly:
    """The newest nightly run: its as_of tag, MLflow status, id and start (UTC, ISO)."""

    run_id: str
    name: str
    status: str
    as_of: str | None
    started: str


@dataclass(frozen=True)
class Health:
    """Everything `closecast status` shows; `problems` empty means healthy."""

    expected_session: str
    nightly: Nightly | None
    champion_version: str | None
    champion_since: str | None
    live: dict[str, float]
    report_as_of: str | None
    not_ok: list[dict[str, str]]
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # facts behind the verdict, not problems

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "healthy": self.healthy}, sort_keys=True)


def expected_session(now: datetime) -> date:
    """The last XNYS session whose nightly slot (core/schedule.py) has passed at `now`
    (naive = UTC)."""
    local = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(NIGHTLY_SLOT.zone)
    session = session_on_or_before(local.date())
    if session == local.date() and local.time() < NIGHTLY_SLOT.time:
        session = session_on_or_before(local.date() - timedelta(days=1))
    return session


def _is_nightly(run: Run) -> bool:
    tags = run.data.tags
    if tags.get("kind") == "predict":
        return False
    return (run.info.run_name or "").startswith("nightly") or "as_of" in tags


def last_nightly(client: MlflowClient, experiment: str = EXPERIMENT) -> Run | None:
    """The newest run of `experiment` that is a nightly (not a `kind=predict` run)."""
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id], order_by=["attributes.start_time DESC"], max_results=SEARCHED_RUNS
    )
    return next((run for run in runs if _is_nightly(run)), None)


def champion(client: MlflowClient) -> tuple[str | None, str | None]:
    """The champion's version and since when: a move made outside closecast found now, else
    the `champion_since` tag, else the alias history."""
    noticed = [m for m in reconcile_aliases(client) if m.alias == CHAMPION]
    version = current_aliases(client).get(CHAMPION)
    if version is None:
        return None, None
    if noticed:  # recorded now, or (a user who may not write) only found: the same time
        return version, noticed[-1].at.isoformat(timespec="seconds")
    try:
        since = client.get_registered_model(MODEL_NAME).tags.get(CHAMPION_SINCE_TAG)
    except MlflowException:
        since = None
    if since is None:
        moves = [m for m in alias_history(client) if m.alias == CHAMPION and m.version == version]
        since = moves[-1].at.isoformat(timespec="seconds") if moves else None
    return version, since


def last_report(reports_dir: Path) -> tuple[str | None, list[dict[str, str]], list[str]]:
    """The newest readable report's as_of, its rows not `ok`, and the newer files skipped.

    A file the scorecard would skip (`read_report`: binary, malformed, not a
    report) is skipped here too, naming it and why, so one bad file neither
    crashes `status` nor hides the reports before it.
    """
    paths = sorted(reports_dir.glob("predictions_*.csv")) if reports_dir.is_dir() else []
    skipped = []
    for path in reversed(paths):
        try:
            report = read_report(path)
        except UnreadableReport as exc:
            skipped.append(f"skipped report {path.name}: {exc}")
            continue
        bad = report[report["status"] != "ok"]
        rows = [
            {key: str(r.get(key, "")) for key in ("ticker", "status", "message")}
            for r in bad.to_dict("records")
        ]
        return path.stem.removeprefix("predictions_"), rows, skipped
    return None, [], skipped


def uncovered(
    nightly: Nightly, reports_dir: Path, now: datetime, late_within: timedelta
) -> tuple[str | None, str | None]:
    """Why `nightly`, current and not failed, does not cover its as_of: (problem, note).

    Covered means its report is there to read. A RUNNING nightly without one
    is still running while it started within `late_within` (a note), and was
    killed (`kill -9`, out of memory, a power cut) after that (a problem).
    """
    try:
        path = report_path(reports_dir, date.fromisoformat(nightly.as_of or ""))
    except ValueError:
        return f"last nightly {nightly.run_id} has as_of {nightly.as_of!r}: no session", None
    try:
        read_report(path)
        return None, None
    except UnreadableReport as exc:
        why = f"no file {path}" if not path.exists() else f"{path.name} {exc}"
    if nightly.status != "RUNNING":
        return f"last nightly {nightly.run_id} is {nightly.status} but {why}", None
    started = datetime.fromisoformat(nightly.started)
    if now - started <= late_within:
        late = (started + late_within).isoformat(timespec="seconds")
        return None, f"nightly {nightly.run_id} running, no report yet (late after {late})"
    return (
        f"run {nightly.run_id} RUNNING since {nightly.started} "
        f"and no report for {nightly.as_of}: killed?"
    ), None


def nightly_health(
    client: MlflowClient,
    reports_dir: Path,
    now: datetime,
    experiment: str = EXPERIMENT,
    *,
    late_within: timedelta,
) -> Health:
    """The health of the nightly at `now`: what ran last, what should have, and the champion.

    `late_within` is how long a nightly may run before it counts as killed
    (the `nightly late` alert's window).
    """
    now = now if now.tzinfo else now.replace(tzinfo=UTC)
    expected = expected_session(now)
    run = last_nightly(client, experiment)
    problems: list[str] = []
    notes: list[str] = []
    nightly, live = None, {}
    if run is None:
        problems.append(f"no nightly run in MLflow experiment {experiment!r}")
    else:
        started = datetime.fromtimestamp(run.info.start_time / 1000, tz=UTC)
        nightly = Nightly(
            run_id=run.info.run_id,
            name=run.info.run_name or "",
            status=run.info.status,
            as_of=run.data.tags.get("as_of"),
            started=started.isoformat(timespec="seconds"),
        )
        live = {k: run.data.metrics[k] for k in LIVE_METRICS if k in run.data.metrics}
        if nightly.status in FAILED_RUN_STATUSES:
            problems.append(f"last nightly {nightly.run_id} is {nightly.status}")
        if nightly.as_of is None or nightly.as_of < expected.isoformat():
            problems.append(
                f"last nightly covers as_of {nightly.as_of or '?'}, "
                f"expected session {expected.isoformat()}"
            )
        elif nightly.status not in FAILED_RUN_STATUSES:
            problem, note = uncovered(nightly, reports_dir, now, late_within)
            problems += [problem] if problem else []
            notes += [note] if note else []
    version, since = champion(client)
    report_as_of, not_ok, skipped = last_report(reports_dir)
    return Health(
        expected.isoformat(),
        nightly,
        version,
        since,
        live,
        report_as_of,
        not_ok,
        problems,
        notes + skipped,
    )


def store_health(
    tracking_uri: str,
    reports_dir: Path,
    now: datetime,
    experiment: str = EXPERIMENT,
    *,
    late_within: timedelta,
) -> Health:
    """`nightly_health` of the tracking store at `tracking_uri`.

    Raises:
        PipelineError: one line when the store cannot be read: a damaged
            database, a server that is down or refuses the credentials (401)
            or the reading (403).
    """
    client = connect_mlflow(tracking_uri)
    try:
        with refusals_as_errors(tracking_uri, experiment):
            return nightly_health(client, reports_dir, now, experiment, late_within=late_within)
    except SQLAlchemyError as exc:  # damage past the pages the first request read
        raise unreadable_store(tracking_uri, exc) from None
    except MlflowException as exc:
        line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PipelineError(f"MLflow at {tracking_uri} cannot be read: {line}") from None


def without_store(now: datetime, problem: str) -> Health:
    """The health of a home whose store says nothing (none yet, or unreadable): `problem`."""
    return Health(expected_session(now).isoformat(), None, None, None, {}, None, [], [problem])


def render(health: Health) -> str:
    """One screen of text: verdict first, then the facts behind it."""
    lines = [f"status: {'healthy' if health.healthy else 'UNHEALTHY'}"]
    lines += [f"  problem: {p}" for p in health.problems]
    lines += [f"  note: {n}" for n in health.notes]
    n = health.nightly
    if n is None:
        lines.append("last nightly: none")
    else:
        lines.append(f"last nightly: as_of {n.as_of or '?'}  {n.status}  run {n.run_id}")
        lines.append(f"  started {n.started}  ({n.name})")
    lines.append(f"expected session: {health.expected_session} ({NIGHTLY_SLOT.at()} slot passed)")
    if health.champion_version is None:
        lines.append(f"champion: none ({MODEL_NAME})")
    else:
        since = f" since {health.champion_since}" if health.champion_since else ""
        lines.append(f"champion: {MODEL_NAME} v{health.champion_version}{since}")
    if health.live:
        lines.append("live (20d): " + "  ".join(f"{k}={v:.4g}" for k, v in health.live.items()))
    else:
        lines.append("live (20d): no live metrics yet")
    if health.report_as_of is None:
        lines.append("last report: none")
    else:
        lines.append(f"last report: {health.report_as_of}, {len(health.not_ok)} ticker(s) not ok")
        lines += [
            f"  {r['ticker']}: {r['status']}" + (f" ({r['message']})" if r["message"] else "")
            for r in health.not_ok
        ]
    return "\n".join(lines)
