from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mlflow import MlflowClient

from closecast.cli.alerts import LATE_WITHIN
from closecast.cli.health import Health, expected_session, nightly_health, render
from closecast.core.config import EXPERIMENT, MODEL_NAME
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.aliases import move_alias

NY = ZoneInfo("America/New_York")
LIVE = {
    "live_rmse_20d": 0.0123,
    "live_naive_rmse_20d": 0.0150,
    "live_coverage_80_20d": 0.8,
    "live_coverage_95_20d": 0.95,
}
HEADER = "as_of,target_date,ticker,last_close,predicted_close,status,message\n"
# Files named like a report that the scorecard skips: binary, and a CSV whose quote never ends.
UNREADABLE = {
    "binary": bytes(range(256)) * 8,
    "malformed": (HEADER + '2021-03-11,2021-03-12,AAPL,1.0,"2.0,ok,\n').encode(),
}


def nightly(
    client: MlflowClient,
    as_of: str,
    status: str = "FINISHED",
    started: datetime | None = None,
    **tags: str,
) -> str:
    """A nightly run as the flow leaves it: named, tagged as_of, with live metrics.

    RUNNING leaves it open, as a nightly killed with `kill -9` does.
    """
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(
        experiment_id,
        start_time=int(started.timestamp() * 1000) if started else None,
        run_name=f"nightly {as_of} · v1 champion",
        tags={"as_of": as_of, **tags},
    )
    for key, value in LIVE.items():
        client.log_metric(run.info.run_id, key, value)
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def health_at(home: Path, now: datetime) -> Health:
    """`nightly_health` of `home` at `now`, with the alerts' late window."""
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    return nightly_health(client, home / "reports", now, late_within=LATE_WITHIN)


def store(
    home: Path, as_of: str = "2021-03-10", status: str = "FINISHED", started: datetime | None = None
) -> MlflowClient:
    """A registry with v1 champion since a known time, one nightly, one report with a bad row."""
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, source=str(home / "model"))
    move_alias(client, "champion", "1", "nightly run a", "first version")
    client.set_registered_model_tag(MODEL_NAME, "champion_since", "2021-03-09T23:40:00+00:00")
    nightly(client, as_of, status, started)
    reports = home / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "predictions_2021-03-09.csv").write_text(HEADER)
    (reports / f"predictions_{as_of}.csv").write_text(
        HEADER + f"{as_of},2021-03-11,AAPL,120.5,121.0,ok,\n"
        f"{as_of},2021-03-11,ZZZZ,,,fetch_failed,no rows from yfinance\n"
    )
    return client


@pytest.mark.parametrize(
    ("local", "expected"),
    [
        (datetime(2024, 7, 2, 18, 29, tzinfo=NY), date(2024, 7, 1)),  # Tuesday, before the slot
        (datetime(2024, 7, 2, 18, 30, tzinfo=NY), date(2024, 7, 2)),  # Tuesday, at the slot
        (datetime(2024, 7, 6, 12, 0, tzinfo=NY), date(2024, 7, 5)),  # Saturday: Friday's session
        (datetime(2024, 7, 4, 20, 0, tzinfo=NY), date(2024, 7, 3)),  # holiday: the day before
        (datetime(2024, 7, 3, 23, 0, tzinfo=UTC), date(2024, 7, 3)),  # 19:00 New York, in UTC
        (datetime(2024, 7, 3, 22, 0, tzinfo=UTC), date(2024, 7, 2)),  # 18:00 New York, in UTC
    ],
)
def test_expected_session_is_the_last_whose_slot_has_passed(
    local: datetime, expected: date
) -> None:
    """The session the nightly should cover is the last one whose 18:30 New York slot passed."""
    assert expected_session(local) == expected


def test_healthy_store(mlflow_home: Path) -> None:
    """A finished nightly for the expected session is healthy; the screen shows every fact."""
    store(mlflow_home)
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.healthy and health.exit_code == 0
    assert health.expected_session == "2021-03-10"
    assert health.nightly is not None and health.nightly.status == "FINISHED"
    assert health.nightly.as_of == "2021-03-10"
    assert (health.champion_version, health.champion_since) == ("1", "2021-03-09T23:40:00+00:00")
    assert health.live == LIVE
    assert health.report_as_of == "2021-03-10"
    assert health.not_ok == [
        {"ticker": "ZZZZ", "status": "fetch_failed", "message": "no rows from yfinance"}
    ]
    screen = render(health)
    assert screen.splitlines()[0] == "status: healthy"
    for text in (health.nightly.run_id, "as_of 2021-03-10", "v1 since 2021-03-09", "ZZZZ: fetch"):
        assert text in screen


def test_stale_as_of_names_the_expected_session(mlflow_home: Path) -> None:
    """Two sessions later the same nightly is stale, and the problem names the session due."""
    store(mlflow_home)
    health = health_at(mlflow_home, datetime(2021, 3, 12, 19, tzinfo=NY))
    assert health.exit_code == 1
    assert health.problems == ["last nightly covers as_of 2021-03-10, expected session 2021-03-12"]


def test_failed_last_nightly_is_unhealthy(mlflow_home: Path) -> None:
    """A FAILED newest nightly is unhealthy even when its as_of is current."""
    store(mlflow_home, status="FAILED")
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1
    assert health.problems == [f"last nightly {health.nightly.run_id} is FAILED"]  # type: ignore[union-attr]


def test_predict_runs_are_not_nightlies(mlflow_home: Path) -> None:
    """A newer `kind=predict` run does not count as the last nightly."""
    client = store(mlflow_home, status="FAILED")
    nightly(client, "2021-03-11", kind="predict")
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.nightly is not None and health.nightly.status == "FAILED"


def test_no_nightly_is_unhealthy(mlflow_home: Path) -> None:
    """An empty store has no nightly: unhealthy, and no champion, no report."""
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1 and health.nightly is None
    assert health.problems == [f"no nightly run in MLflow experiment {EXPERIMENT!r}"]
    assert (health.champion_version, health.report_as_of) == (None, None)
    assert "last nightly: none" in render(health)


def test_champion_since_falls_back_to_the_alias_history(mlflow_home: Path) -> None:
    """Without a `champion_since` tag, the champion's last recorded move says since when."""
    client = store(mlflow_home)
    client.delete_registered_model_tag(MODEL_NAME, "champion_since")
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    moved = datetime.fromisoformat(health.champion_since or "")
    assert health.champion_version == "1"
    assert abs((datetime.now(UTC) - moved).total_seconds()) < 60


def test_a_killed_nightly_is_running_within_the_late_window_then_unhealthy(
    mlflow_home: Path,
) -> None:
    """A nightly left RUNNING (`kill -9`) with no report for its session: running, not a
    problem, until the alerts' late window has passed; then unhealthy, naming the run."""
    client = store(mlflow_home, as_of="2021-03-09", started=datetime(2021, 3, 9, 18, 31, tzinfo=NY))
    started = datetime(2021, 3, 10, 18, 31, tzinfo=NY)
    run_id = nightly(client, "2021-03-10", status="RUNNING", started=started)

    running = health_at(mlflow_home, started + LATE_WITHIN)
    assert running.healthy and running.nightly is not None
    assert running.nightly.status == "RUNNING" and running.report_as_of == "2021-03-09"
    assert running.notes == [
        f"nightly {run_id} running, no report yet (late after 2021-03-11T03:01:00+00:00)"
    ]
    assert "  note: nightly" in render(running)

    killed = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert killed.exit_code == 1
    assert killed.problems == [
        f"run {run_id} RUNNING since 2021-03-10T23:31:00+00:00 "
        "and no report for 2021-03-10: killed?"
    ]
    assert render(killed).splitlines()[:2] == [
        "status: UNHEALTHY",
        f"  problem: {killed.problems[0]}",
    ]


def test_a_finished_nightly_whose_report_is_gone_is_unhealthy(mlflow_home: Path) -> None:
    """The expected session counts as covered only with its report there to read."""
    store(mlflow_home)
    report = mlflow_home / "reports" / "predictions_2021-03-10.csv"
    report.unlink()
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1 and health.report_as_of == "2021-03-09"
    assert health.problems == [
        f"last nightly {health.nightly.run_id} is FINISHED but no file {report}"  # type: ignore[union-attr]
    ]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_newer_report_is_skipped_naming_it(mlflow_home: Path, kind: str) -> None:
    """A binary or malformed predictions_*.csv newer than the last report: skipped as `run`'s
    scorecard skips it, with a note naming the file and why; the report before it is shown."""
    store(mlflow_home)
    (mlflow_home / "reports" / "predictions_2021-03-11.csv").write_bytes(UNREADABLE[kind])
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.healthy and health.report_as_of == "2021-03-10"
    assert [t["ticker"] for t in health.not_ok] == ["ZZZZ"]
    [note] = health.notes
    assert note.startswith("skipped report predictions_2021-03-11.csv: unreadable (")
    assert f"  note: {note}" in render(health)


@pytest.mark.parametrize("kind", UNREADABLE)
def test_an_unreadable_report_of_the_expected_session_is_unhealthy(
    mlflow_home: Path, kind: str
) -> None:
    """The nightly's own report unreadable: the session is not covered; why is named."""
    store(mlflow_home)
    (mlflow_home / "reports" / "predictions_2021-03-10.csv").write_bytes(UNREADABLE[kind])
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1 and health.report_as_of == "2021-03-09"
    [problem] = health.problems
    assert problem.startswith(
        f"last nightly {health.nightly.run_id} is FINISHED but "  # type: ignore[union-attr]
        "predictions_2021-03-10.csv unreadable ("
    )


def test_a_csv_that_is_no_report_is_skipped_not_a_crash(mlflow_home: Path) -> None:
    """A CSV without a report's columns (pandas' IndexingError before) is skipped, naming them."""
    store(mlflow_home)
    (mlflow_home / "reports" / "predictions_2021-03-11.csv").write_text("a,b\n1,2\n")
    health = health_at(mlflow_home, datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.healthy and health.report_as_of == "2021-03-10"
    assert health.notes == [
        "skipped report predictions_2021-03-11.csv: not a predictions report "
        "(missing as_of, target_date, ticker, last_close, predicted_close, status)"
    ]
