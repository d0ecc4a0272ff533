import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from closecast.cli.app import main
from closecast.cli.health import expected_session
from closecast.cli.prefect_api import runs_a_flow
from closecast.core.calendar import session_on_or_before
from tests.tasks.test_health import UNREADABLE, nightly, store


def test_status_healthy_exits_0_and_prints_the_screen(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A finished nightly for the session due now: exit 0, and the facts on one screen."""
    due = expected_session(datetime.now(UTC)).isoformat()
    store(mlflow_home, as_of=due)
    assert main(["status", "--home", str(mlflow_home)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "status: healthy"
    assert f"as_of {due}  FINISHED" in out
    assert f"expected session: {due}" in out
    assert "champion: closecast-lstm v1 since 2021-03-09T23:40:00+00:00" in out
    assert "ZZZZ: fetch_failed (no rows from yfinance)" in out


def test_status_stale_exits_1_naming_the_session(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nightly two sessions behind: exit 1, naming the session it should have covered."""
    due = expected_session(datetime.now(UTC))
    before = session_on_or_before(due - timedelta(days=1))
    old = session_on_or_before(before - timedelta(days=1))
    store(mlflow_home, as_of=old.isoformat())
    assert main(["status", "--home", str(mlflow_home)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "status: UNHEALTHY"
    assert f"expected session {due.isoformat()}" in out


def test_status_failed_exits_1(mlflow_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A FAILED last nightly: exit 1 even when its as_of is current."""
    store(mlflow_home, as_of=expected_session(datetime.now(UTC)).isoformat(), status="FAILED")
    assert main(["status", "--home", str(mlflow_home)]) == 1
    assert "is FAILED" in capsys.readouterr().out


def test_status_no_nightly_exits_1(mlflow_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """An empty store: exit 1, no nightly."""
    assert main(["status", "--home", str(mlflow_home)]) == 1
    assert "last nightly: none" in capsys.readouterr().out


def test_status_json_has_the_keys(mlflow_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--json prints one object with every fact, for monitors."""
    due = expected_session(datetime.now(UTC)).isoformat()
    store(mlflow_home, as_of=due)
    assert main(["status", "--home", str(mlflow_home), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {
        "expected_session", "nightly", "champion_version", "champion_since", "live",
        "report_as_of", "not_ok", "problems", "notes", "healthy",
    }  # fmt: skip
    assert data["healthy"] is True and data["nightly"]["as_of"] == due
    assert data["live"]["live_rmse_20d"] == pytest.approx(0.0123)
    assert data["not_ok"][0]["ticker"] == "ZZZZ"


@pytest.mark.parametrize("home", ["empty", "missing"])
def test_status_where_nothing_ran_says_so_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], home: str
) -> None:
    """An empty or missing home: exit 1, one line saying no nightly has run; nothing created."""
    folder = tmp_path / "home"
    if home == "empty":
        folder.mkdir()
    assert main(["status", "--home", str(folder)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no nightly has run yet" in err, err
    assert folder.exists() == (home == "empty")
    assert main(["status", "--home", str(folder), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False and data["nightly"] is None
    assert data["problems"][0].startswith("no nightly has run yet")


def test_status_home_that_is_a_file_is_usage(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--home pointing at a file: exit 2."""
    (tmp_path / "f").write_text("")
    assert main(["status", "--home", str(tmp_path / "f")]) == 2


def test_status_runs_no_flow_and_needs_no_prefect_api() -> None:
    """`status` reads the home and the tracking store only: no temporary Prefect API."""
    assert not runs_a_flow(["status", "--json"])


def test_status_of_a_nightly_killed_mid_run_exits_1(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A nightly for the session due, started 5 h ago and never ended (`kill -9`), no report:
    exit 1 naming the run, in both the screen and the JSON; not "healthy" forever."""
    now = datetime.now(UTC)
    due = expected_session(now)
    before = session_on_or_before(due - timedelta(days=1)).isoformat()
    client = store(mlflow_home, as_of=before, started=now - timedelta(days=1))
    run_id = nightly(client, due.isoformat(), status="RUNNING", started=now - timedelta(hours=5))
    assert main(["status", "--home", str(mlflow_home)]) == 1
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "status: UNHEALTHY"
    assert f"  problem: run {run_id} RUNNING since " in out
    assert f"and no report for {due.isoformat()}: killed?" in out
    assert main(["status", "--home", str(mlflow_home), "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False and data["nightly"]["status"] == "RUNNING"
    assert [p.endswith("killed?") for p in data["problems"]] == [True]


@pytest.mark.parametrize("kind", UNREADABLE)
def test_status_skips_an_unreadable_report_naming_it(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    """A binary or malformed newer predictions_*.csv: no crash; the last readable report is
    shown and the skipped file named, in the screen and the JSON; still healthy."""
    due = expected_session(datetime.now(UTC))
    store(mlflow_home, as_of=due.isoformat())
    bad = mlflow_home / "reports" / f"predictions_{due + timedelta(days=1)}.csv"
    bad.write_bytes(UNREADABLE[kind])
    assert main(["status", "--home", str(mlflow_home)]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[0] == "status: healthy" and not err
    assert f"  note: skipped report {bad.name}: unreadable (" in out
    assert f"last report: {due.isoformat()}, 1 ticker(s) not ok" in out
    assert main(["status", "--home", str(mlflow_home), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["report_as_of"] == due.isoformat()
    assert [n.startswith(f"skipped report {bad.name}") for n in data["notes"]] == [True]


@pytest.mark.parametrize(
    ("damage", "why"),
    [("garbage", "file is not a database"), ("truncated", "database disk image is malformed")],
)
def test_status_of_a_damaged_store_is_unhealthy_json_or_one_line(
    mlflow_home: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    damage: str,
    why: str,
) -> None:
    """A mlflow.db that is garbage or cut short: --json prints the same object, unhealthy,
    naming the store and why (exit 1); the screen is one line on stderr (exit 1)."""
    store(mlflow_home, as_of=expected_session(datetime.now(UTC)).isoformat())
    content = (mlflow_home / "mlflow.db").read_bytes()
    damaged = b"\x00garbage\xff" * 300 if damage == "garbage" else content[: len(content) // 3]
    home = tmp_path / "damaged"  # a store this process never opened, as for a user
    home.mkdir()
    database = home / "mlflow.db"
    database.write_bytes(damaged)
    problem = f"MLflow database sqlite:///{database} cannot be read: {why}"
    assert main(["status", "--home", str(home), "--json"]) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["healthy"] is False and data["problems"] == [problem]
    assert data["nightly"] is None and data["expected_session"]
    assert "Traceback" not in err
    assert main(["status", "--home", str(home)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and err.splitlines() == [f"closecast: pipeline failed: {problem}"]
    assert database.read_bytes() == damaged  # status reads, never repairs or rewrites
