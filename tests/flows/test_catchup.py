"""Late runs catch up: scheduled slots missed while the machine was down run one at a time,
oldest first, each computing the session of its own slot (point-in-time)."""

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import date, datetime
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from core.calendar import NEW_YORK, next_session
from tests.conftest import read_report, tiny_config, write_ticker_csvs

ROOT = Path(__file__).resolve().parents[2]
SESSIONS = [date(2021, 3, 8), date(2021, 3, 9), date(2021, 3, 10)]  # the data runs to 03-11
WAIT_S = 240.0  # ~40 s on an idle machine, ~100 s with 2 cores loaded 4x
BUSY_TRIES = 20
# `closecast serve`'s own code path on an existing API, with a config the CLI cannot make
# (hidden 8, 2 epochs).
SERVE = (
    "import sys; from core.config import PipelineConfig; "
    "from closecast.serve import serve_deployments; "
    "serve_deployments(PipelineConfig.model_validate_json(sys.argv[1]), port=0)"
)


def _api(api: str, path: str, body: dict[str, Any]) -> Any:
    """POST to the API; a 503 (its SQLite busy on a loaded machine) is tried again, as
    Prefect's own client does."""
    request = urllib.request.Request(
        f"{api}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    for _ in range(BUSY_TRIES):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
            return json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            if error.code != 503:
                raise
            time.sleep(0.5)
    raise AssertionError(f"{path}: the Prefect API answered 503 {BUSY_TRIES} times")


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


@pytest.mark.slow
def test_three_missed_slots_run_one_at_a_time_oldest_first_each_point_in_time(
    prefect_server: str, mlflow_home: Path, tmp_path: Path
) -> None:
    """Three slots in the past give three reports, for the three slot sessions, run in slot
    order and never two at once."""
    csv = write_ticker_csvs(tmp_path / "csv", {"AAA": 300, "BBB": 300})
    config = tiny_config(mlflow_home, f"csv:{csv}", ["AAA", "BBB"])
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env |= {
        "PREFECT_API_URL": prefect_server,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",  # the next late run starts a second after the last
        "DO_NOT_TRACK": "1",
    }
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-c", SERVE, config.model_dump_json()],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + WAIT_S
        deployment = None
        while deployment is None:
            assert serve.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.5)
            deployment = _served_nightly(prefect_server, mlflow_home)
        assert deployment["global_concurrency_limit"]["limit"] == 1
        assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
        # What Prefect's scheduler left behind while the machine was down: the auto-scheduled
        # runs of three weeknight slots, now late (the server's own scheduling of a range).
        window = {
            "start_time": datetime(2021, 3, 8, tzinfo=NEW_YORK).isoformat(),
            "end_time": datetime(2021, 3, 10, 23, tzinfo=NEW_YORK).isoformat(),
            "max_runs": 3,
        }
        _api(prefect_server, f"/deployments/{deployment['id']}/schedule", window)
        runs = _slot_runs(prefect_server, deployment["id"])
        while not (len(runs) == 3 and all(r["state_type"] == "COMPLETED" for r in runs)):
            failed = [r["name"] for r in runs if r["state_type"] in {"FAILED", "CRASHED"}]
            assert not failed and time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(1)
            runs = _slot_runs(prefect_server, deployment["id"])
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(timeout=60)

    slots = [_when(r["expected_start_time"]).tz_convert(NEW_YORK) for r in runs]
    assert [(s.date(), s.hour, s.minute) for s in slots] == [(d, 18, 30) for d in SESSIONS]
    assert [r["name"].rsplit(" ", 1)[-1] for r in runs] == [f"as_of={d}" for d in SESSIONS]
    starts = [_when(r["start_time"]) for r in runs]
    ends = [_when(r["end_time"]) for r in runs]
    assert starts == sorted(starts)  # oldest slot first
    assert all(end <= start for end, start in zip(ends, starts[1:], strict=False))  # one at a time
    for run in runs:  # each waited its turn in the runner; none raced another for the slot
        assert "AwaitingConcurrencySlot" not in _state_names(prefect_server, run["id"])

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
