"""Is the nightly healthy? The last nightly, the session it should cover, the champion.

`closecast status` reads the tracking store and the reports folder only; the
logic lives here as plain functions so that tests pass an explicit `now`.
"""

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from core.calendar import session_on_or_before
from core.config import EXPERIMENT, MODEL_NAME
from tasks.aliases import CHAMPION, alias_history, current_aliases

NEW_YORK = ZoneInfo("America/New_York")
NIGHTLY_SLOT = time(18, 30)  # the nightly deployment's schedule, New York time
LIVE_METRICS = (
    "live_rmse_20d",
    "live_naive_rmse_20d",
    "live_coverage_80_20d",
    "live_coverage_95_20d",
)
CHAMPION_SINCE_TAG = "champion_since"
SEARCHED_RUNS = 200


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

    @property
    def healthy(self) -> bool:
        return not self.problems

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "healthy": self.healthy}, sort_keys=True)


def expected_session(now: datetime) -> date:
    """The last XNYS session whose 18:30 New York slot has passed at `now` (naive = UTC)."""
    local = (now if now.tzinfo else now.replace(tzinfo=UTC)).astimezone(NEW_YORK)
    session = session_on_or_before(local.date())
    if session == local.date() and local.time() < NIGHTLY_SLOT:
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
    """The champion's version and since when: the `champion_since` tag, else the alias history."""
    version = current_aliases(client).get(CHAMPION)
    if version is None:
        return None, None
    try:
        since = client.get_registered_model(MODEL_NAME).tags.get(CHAMPION_SINCE_TAG)
    except MlflowException:
        since = None
    if since is None:
        moves = [m for m in alias_history(client) if m.alias == CHAMPION and m.version == version]
        since = moves[-1].at.isoformat(timespec="seconds") if moves else None
    return version, since


def last_report(reports_dir: Path) -> tuple[str | None, list[dict[str, str]]]:
    """The newest report's as_of and its rows whose status is not `ok`."""
    paths = sorted(reports_dir.glob("predictions_*.csv")) if reports_dir.is_dir() else []
    if not paths:
        return None, []
    report = pd.read_csv(paths[-1], dtype=str, keep_default_na=False)
    as_of = paths[-1].stem.removeprefix("predictions_")
    bad = report[report.get("status", pd.Series(dtype=str)) != "ok"]
    rows = [
        {
            "ticker": r.get("ticker", ""),
            "status": r.get("status", ""),
            "message": r.get("message", ""),
        }
        for r in bad.to_dict("records")
    ]
    return as_of, rows


def nightly_health(
    client: MlflowClient, reports_dir: Path, now: datetime, experiment: str = EXPERIMENT
) -> Health:
    """The health of the nightly at `now`: what ran last, what should have, and the champion."""
    expected = expected_session(now)
    run = last_nightly(client, experiment)
    problems: list[str] = []
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
        if nightly.status in ("FAILED", "KILLED"):
            problems.append(f"last nightly {nightly.run_id} is {nightly.status}")
        if nightly.as_of is None or nightly.as_of < expected.isoformat():
            problems.append(
                f"last nightly covers as_of {nightly.as_of or '?'}, "
                f"expected session {expected.isoformat()}"
            )
    version, since = champion(client)
    report_as_of, not_ok = last_report(reports_dir)
    return Health(
        expected.isoformat(), nightly, version, since, live, report_as_of, not_ok, problems
    )


def never_run(now: datetime, problem: str) -> Health:
    """The health of a home where nothing has run: no store, no nightly, no champion."""
    return Health(expected_session(now).isoformat(), None, None, None, {}, None, [], [problem])


def render(health: Health) -> str:
    """One screen of text: verdict first, then the facts behind it."""
    lines = [f"status: {'healthy' if health.healthy else 'UNHEALTHY'}"]
    lines += [f"  problem: {p}" for p in health.problems]
    n = health.nightly
    if n is None:
        lines.append("last nightly: none")
    else:
        lines.append(f"last nightly: as_of {n.as_of or '?'}  {n.status}  run {n.run_id}")
        lines.append(f"  started {n.started}  ({n.name})")
    lines.append(f"expected session: {health.expected_session} (18:30 New York slot passed)")
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
