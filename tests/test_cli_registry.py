import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient

from closecast.cli.app import main
from closecast.core.config import MODEL_NAME
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.aliases import AliasMove, alias_history, current_aliases, move_alias
from tests.mlflow_fixtures import free_port

METRICS = {
    "1": ("0.0301", "0.0132", "0.0123", "-0.0732"),
    "2": ("0.0802", "0.0488", "0.0123", "-2.96"),
}


def make_registry(home: Path) -> MlflowClient:
    """v1 champion and v2 rejected challenger, tagged as a nightly run tags them."""
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    for version, promotion in (("1", "champion"), ("2", "rejected")):
        score, rmse, naive, skill = METRICS[version]
        tags = {"promotion": promotion, "test_interval_score": score, "test_rmse": rmse}
        tags |= {"naive_rmse": naive, "skill": skill}
        client.create_model_version(MODEL_NAME, source=str(home / "model"), tags=tags)
    move_alias(client, "challenger", "1", "nightly run a", "newly trained version")
    move_alias(client, "champion", "1", "nightly run a", "first version")
    move_alias(client, "challenger", "2", "nightly run b", "newly trained version")
    return client


def test_models_prints_versions_aliases_metrics_and_promotion(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`closecast models`: one row per version, newest first, with the review columns."""
    before = datetime.now(UTC).date().isoformat()
    make_registry(mlflow_home)
    after = datetime.now(UTC).date().isoformat()  # the registry may be made across midnight
    assert main(["models", "--home", str(mlflow_home)]) == 0
    header, *rows = capsys.readouterr().out.strip().splitlines()
    assert header.split() == [
        "version", "aliases", "created", "test_interval_score", "test_rmse", "naive_rmse", "skill",
        "promotion",
    ]  # fmt: skip
    assert [r.split()[:2] for r in rows] == [["2", "challenger"], ["1", "champion"]]
    assert before <= rows[0].split()[2] <= after  # created, as a UTC date
    assert rows[0].split()[-5:] == [*METRICS["2"], "rejected"]
    assert rows[1].split()[-5:] == [*METRICS["1"], "champion"]


def test_promote_then_roll_back_is_recorded(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Promoting v2 then v1 moves champion twice; the history says who and from which."""
    client = make_registry(mlflow_home)
    before_promote = datetime.now(UTC)
    time.sleep(0.01)
    assert main(["promote", "2", "--home", str(mlflow_home)]) == 0
    assert capsys.readouterr().out.strip() == f"champion: {MODEL_NAME} v2 (was v1)"
    assert current_aliases(client)["champion"] == "2"
    assert main(["promote", "1", "--home", str(mlflow_home), "--reason", "v2 drifts"]) == 0
    assert current_aliases(client) == {"champion": "1", "challenger": "2"}

    moves = alias_history(client)[-2:]
    assert [(m.alias, m.previous, m.version) for m in moves] == [
        ("champion", "1", "2"),
        ("champion", "2", "1"),
    ]
    assert all(m.by.startswith("closecast promote by ") for m in moves)
    assert moves[1].reason == "v2 drifts"
    capsys.readouterr()
    assert main(["models", "--history", "--home", str(mlflow_home)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5 and "v2 -> v1  by closecast promote by" in lines[-1]
    at = before_promote.isoformat()
    assert main(["models", "--at", at, "--home", str(mlflow_home)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{MODEL_NAME} v1")


def test_models_at_and_history_read_old_and_new_layouts(
    mlflow_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A registry recorded one tag per move (the old layout), then promoted with the capped
    history: `--at` answers a date from each, `--history` lists both, by time."""
    client = configure_mlflow(f"sqlite:///{mlflow_home / 'mlflow.db'}")
    client.create_registered_model(MODEL_NAME)
    for _ in range(2):
        client.create_model_version(MODEL_NAME, source=str(mlflow_home / "model"))
    t0 = datetime(2024, 1, 2, 23, tzinfo=UTC)
    old = AliasMove(t0, "champion", "1", None, "nightly run a", "first version")
    key = f"alias_move.{int(t0.timestamp() * 1000):013d}.champion.v1"
    client.set_registered_model_tag(MODEL_NAME, key, old.to_json())
    client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    assert main(["promote", "2", "--home", str(mlflow_home), "--reason", "v1 drifts"]) == 0
    capsys.readouterr()
    for day, answer in [("2024-01-01", "none recorded"), ("2024-01-03", f"{MODEL_NAME} v1")]:
        assert main(["models", "--at", day, "--home", str(mlflow_home)]) == 0
        assert capsys.readouterr().out.strip().endswith(answer)
    tomorrow = (datetime.now(UTC) + timedelta(days=1)).date().isoformat()
    assert main(["models", "--at", tomorrow, "--home", str(mlflow_home)]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{MODEL_NAME} v2")
    assert main(["models", "--history", "--home", str(mlflow_home)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("2024-01-02T23:00:00+00:00  champion") and "v- -> v1" in lines[0]
    assert "v1 -> v2  by closecast promote by" in lines[1] and "(v1 drifts)" in lines[1]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["promote", "7"], "version 7 of closecast-lstm does not exist"),
        (["promote", "two"], "'two'"),
        (["promote", "-1"], "-1"),
        (["models", "--at", "2024-13-01"], "'2024-13-01'"),
    ],
)
def test_bad_registry_input_exits_2_and_moves_nothing(
    mlflow_home: Path, args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown or malformed version: exit 2, one line naming it, champion unchanged."""
    client = make_registry(mlflow_home)
    history = alias_history(client)
    assert main([*args, "--home", str(mlflow_home)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and named in err, err
    assert current_aliases(client) == {"champion": "1", "challenger": "2"}
    assert alias_history(client) == history


@pytest.mark.parametrize("command", [["models"], ["promote", "1"]])
def test_registry_commands_without_a_registry_exit_2(
    tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """No mlflow.db under --home: exit 2 naming the file; nothing is created."""
    home = tmp_path / "home"
    assert main([*command, "--home", str(home)]) == 2
    assert str(home / "mlflow.db") in capsys.readouterr().err
    assert not home.exists()


def test_registry_commands_honour_mlflow_tracking_uri(
    mlflow_home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """$MLFLOW_TRACKING_URI wins over --home, as it does for `closecast run`."""
    make_registry(mlflow_home)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{mlflow_home / 'mlflow.db'}")
    assert main(["models", "--home", str(tmp_path / "elsewhere")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 3


@pytest.mark.usefixtures("prefect_harness")
def test_unreachable_registry_fails_run_with_one_line(
    tmp_path: Path,
    csv_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An MLflow server nobody answers at: retries, then exit 1 with one line, before training."""
    uri = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_JITTER", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    home = tmp_path / "home"
    code = main(
        ["run", "--source", f"csv:{csv_folder}", "--tickers", "AAA", "--home", str(home),
         "--epochs", "1", "--hidden", "4"]
    )  # fmt: skip
    assert code == 1
    expected = f"closecast: pipeline failed: MLflow at {uri} cannot be reached after 1 retries: "
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(expected) and "refused" in last.lower(), last
    assert not (home / "reports").exists() and not (home / "mlflow.db").exists()
    assert main(["models", "--home", str(home)]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after urllib3's retry warning
    assert last.startswith(f"closecast: pipeline failed: MLflow at {uri}")
