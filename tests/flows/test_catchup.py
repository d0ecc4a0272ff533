"""Late runs catch up: scheduled slots missed while the machine was down run one at a time,
oldest first, each computing the session of its own slot (point-in-time)."""

import json
import signal
import subprocess
import urllib.error
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from closecast.core.calendar import NEW_YORK, next_session
from tests.fixtures import read_report, tiny_config, write_ticker_csvs
from tests.prefect_server import api_post as _api
from tests.prefect_server import serve_process
from tests.waiting import wait_for

SESSIONS = [date(2021, 3, 9), date(2021, 3, 10)]  # the data runs to 03-11
ENDED = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _served_nightly(api: str, home: Path) -> dict[str, Any] | None:
    """The `nightly/nightly` deployment once serve has written this test's config into it."""
    body = {
        "deployments": {"name": {"any_": ["nightly"]}},
        "flows": {"name": {"any_": ["nightly"]}},
    }
    for deployment in _api(api, "/deployments/filter", body):
        if deployment["parameters"].get("config", {}).get("home") == str(home):
            return dict(deployment)
    return None


def _slot_runs(api: str, deployment_id: str) -> list[dict[str, Any]]:
    """The deployment's runs that the schedule created for slots before now, oldest slot first."""
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    runs = _api(api, "/flow_runs/filter", body)
    now = pd.Timestamp.now(tz="UTC")
    return [r for r in runs if r["auto_scheduled"] and pd.Timestamp(r["expected_start_time"]) < now]


def _when(stamp: str) -> pd.Timestamp:
    return pd.Timestamp(stamp)


def _state_names(api: str, flow_run_id: str) -> list[str]:
    url = f"{api}/flow_run_states/?flow_run_id={flow_run_id}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return [state["name"] for state in json.load(response)]


def _running(serve: subprocess.Popen[bytes]) -> bool:
    return serve.poll() is None


def _wait_for_nightly(api: str, home: Path, serve: subprocess.Popen[bytes], log: Path) -> dict:
    """The served nightly of `home`, once serve has deployed it (serve still running)."""
    deployment = wait_for(lambda: _served_nightly(api, home), alive=lambda: _running(serve))
    assert deployment is not None and _running(serve), log.read_text()[-3000:]
    return deployment


def _all_ended_or_one_failed(runs: list[dict[str, Any]], count: int) -> bool:
    states = {r["state_type"] for r in runs}
    all_ended = len(runs) >= count and states <= ENDED
    return all_ended or bool(states & {"FAILED", "CRASHED"})


def _wait_for_runs(
    api: str, deployment_id: str, count: int, serve: subprocess.Popen[bytes], log: Path
) -> list[dict[str, Any]]:
    """The slot runs, oldest first, once `count` of them have ended (or one has failed, or
    serve has exited); `count` of them, all COMPLETED."""
    runs = wait_for(
        lambda: _slot_runs(api, deployment_id),
        lambda runs: _all_ended_or_one_failed(runs, count),
        alive=lambda: _running(serve),
        every_s=1,
    )
    states = [r["state_type"] for r in runs]
    assert states == ["COMPLETED"] * count, log.read_text()[-3000:]
    return runs


def _stop(serve: subprocess.Popen[bytes]) -> None:
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=60)


@pytest.mark.slow
def test_a_clean_stop_keeps_the_schedule_and_missed_slots_run_oldest_first_point_in_time(
    serve_api: str, mlflow_home: Path, tmp_path: Path
) -> None:
    """SIGTERM (a reboot, Ctrl-C) leaves the nightly active with its scheduled runs in place
    (was: deployments paused, scheduled runs deleted, the nights lost). Two slots missed
    while serve was down then give two reports after the restart, for the two slot
    sessions, run in slot order and never two at once."""
    api = serve_api
    csv = write_ticker_csvs(tmp_path / "csv", {"AAA": 300, "BBB": 300})
    config = tiny_config(mlflow_home, f"csv:{csv}", ["AAA", "BBB"])
    log_path = tmp_path / "serve.log"
    serve = serve_process(config, api, log_path)
    try:
        deployment = _wait_for_nightly(api, mlflow_home, serve, log_path)
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        # Stopped once the scheduler has placed the coming slots and serve's runner is
        # polling (a runner not yet started exits at once, pausing nothing).
        ready = wait_for(
            lambda: (
                bool(_deployment_runs(api, deployment["id"]))
                and _served_nightly(api, mlflow_home)["status"] == "READY"
            ),
            alive=lambda: _running(serve),
        )
        assert ready and _running(serve), log_path.read_text()[-3000:]
    finally:
        _stop(serve)

    body = {"deployments": {"id": {"any_": [deployment["id"]]}}}
    (stored,) = _api(api, "/deployments/filter", body)
    assert stored["paused"] is False
    (schedule,) = stored["schedules"]
    assert schedule["active"] is True
    coming = _deployment_runs(api, deployment["id"])
    assert coming and {r["state_type"] for r in coming} == {"SCHEDULED"}
    # What Prefect's scheduler placed for the nights the machine was down: the auto-scheduled
    # runs of two weeknight slots, now late (the server's own scheduling of a range).
    window = {
        "start_time": datetime(2021, 3, 9, tzinfo=NEW_YORK).isoformat(),
        "end_time": datetime(2021, 3, 10, 23, tzinfo=NEW_YORK).isoformat(),
        "max_runs": len(SESSIONS),
    }
    _api(api, f"/deployments/{deployment['id']}/schedule", window)

    serve = serve_process(config, api, log_path)
    try:
        runs = _wait_for_runs(api, deployment["id"], len(SESSIONS), serve, log_path)
    finally:
        _stop(serve)

    slots = [_when(r["expected_start_time"]).tz_convert(NEW_YORK) for r in runs]
    assert [(s.date(), s.hour, s.minute) for s in slots] == [(d, 18, 30) for d in SESSIONS]
    # Each run renamed after its outcome, for the session of its slot (flows/naming.py).
    assert [r["name"].split(" · ")[0] for r in runs] == [f"nightly {d}" for d in SESSIONS]
    starts = [_when(r["start_time"]) for r in runs]
    ends = [_when(r["end_time"]) for r in runs]
    assert starts == sorted(starts)  # oldest slot first
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))  # one at a time
    for run in runs:  # each waited its turn in the runner; none raced another for the slot
        assert "AwaitingConcurrencySlot" not in _state_names(api, run["id"])

    reports = sorted((mlflow_home / "reports").glob("predictions_*.csv"))
    assert [p.name for p in reports] == [f"predictions_{d}.csv" for d in SESSIONS]
    closes = pd.read_csv(csv / "AAA.csv", index_col="Date", parse_dates=True)["Close"]
    for path, session in zip(reports, SESSIONS, strict=True):
        report = read_report(path).set_index("ticker")
        assert set(report["as_of"]) == {session.isoformat()}
        assert set(report["target_date"]) == {next_session(session).isoformat()}
        assert list(report["status"]) == ["ok", "ok"]
        # the close of the slot's session, not of the last day in the store (03-11)
        assert report.loc["AAA", "last_close"] == pytest.approx(closes[pd.Timestamp(session)])


def _deployment_runs(api: str, deployment_id: str) -> list[dict[str, Any]]:
    body = {
        "flow_runs": {"deployment_id": {"any_": [deployment_id]}},
        "sort": "EXPECTED_START_TIME_ASC",
    }
    return list(_api(api, "/flow_runs/filter", body))
