from datetime import UTC, date, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from mlflow import MlflowClient

from core.config import EXPERIMENT, MODEL_NAME
from tasks.aliases import move_alias
from tasks.health import expected_session, nightly_health, render
from tasks.mlflow_connection import configure_mlflow

NY = ZoneInfo("America/New_York")
LIVE = {
    "live_rmse_20d": 0.0123,
    "live_naive_rmse_20d": 0.0150,
    "live_coverage_80_20d": 0.8,
    "live_coverage_95_20d": 0.95,
}


def nightly(client: MlflowClient, as_of: str, status: str = "FINISHED", **tags: str) -> str:
    """A nightly run as the flow leaves it: named, tagged as_of, with live metrics."""
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(
        experiment_id, run_name=f"nightly {as_of} · v1 champion", tags={"as_of": as_of, **tags}
    )
    for key, value in LIVE.items():
        client.log_metric(run.info.run_id, key, value)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def store(home: Path, as_of: str = "2021-03-10", status: str = "FINISHED") -> MlflowClient:
    """A registry with v1 champion since a known time, one nightly, one report with a bad row."""
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    client.create_model_version(MODEL_NAME, source=str(home / "model"))
    move_alias(client, "champion", "1", "nightly run a", "first version")
    client.set_registered_model_tag(MODEL_NAME, "champion_since", "2021-03-09T23:40:00+00:00")
    nightly(client, as_of, status)
    reports = home / "reports"
    reports.mkdir(exist_ok=True)
    (reports / "predictions_2021-03-09.csv").write_text("as_of,ticker,status,message\n")
    (reports / f"predictions_{as_of}.csv").write_text(
        "as_of,ticker,status,message\n"
        f"{as_of},AAPL,ok,\n"
        f"{as_of},ZZZZ,fetch_failed,no rows from yfinance\n"
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
    client = store(mlflow_home)
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 11, 12, tzinfo=NY))
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
    client = store(mlflow_home)
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 12, 19, tzinfo=NY))
    assert health.exit_code == 1
    assert health.problems == ["last nightly covers as_of 2021-03-10, expected session 2021-03-12"]


def test_failed_last_nightly_is_unhealthy(mlflow_home: Path) -> None:
    """A FAILED newest nightly is unhealthy even when its as_of is current."""
    client = store(mlflow_home, status="FAILED")
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1
    assert health.problems == [f"last nightly {health.nightly.run_id} is FAILED"]  # type: ignore[union-attr]


def test_predict_runs_are_not_nightlies(mlflow_home: Path) -> None:
    """A newer `kind=predict` run does not count as the last nightly."""
    client = store(mlflow_home, status="FAILED")
    nightly(client, "2021-03-11", kind="predict")
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.nightly is not None and health.nightly.status == "FAILED"


def test_no_nightly_is_unhealthy(mlflow_home: Path) -> None:
    """An empty store has no nightly: unhealthy, and no champion, no report."""
    client = configure_mlflow(f"sqlite:///{mlflow_home / 'mlflow.db'}")
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 11, 12, tzinfo=NY))
    assert health.exit_code == 1 and health.nightly is None
    assert health.problems == [f"no nightly run in MLflow experiment {EXPERIMENT!r}"]
    assert (health.champion_version, health.report_as_of) == (None, None)
    assert "last nightly: none" in render(health)


def test_champion_since_falls_back_to_the_alias_history(mlflow_home: Path) -> None:
    """Without a `champion_since` tag, the champion's last recorded move says since when."""
    client = store(mlflow_home)
    client.delete_registered_model_tag(MODEL_NAME, "champion_since")
    health = nightly_health(client, mlflow_home / "reports", datetime(2021, 3, 11, 12, tzinfo=NY))
    moved = datetime.fromisoformat(health.champion_since or "")
    assert health.champion_version == "1"
    assert abs((datetime.now(UTC) - moved).total_seconds()) < 60
