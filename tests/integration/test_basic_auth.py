"""The pipeline against `mlflow server --app-name basic-auth` on loopback: who may do what.

The documented set-up: the admin creates experiment `closecast` and registered
model `closecast-lstm`, gives the pipeline user EDIT on both and the reviewer
MANAGE on the model; everyone else reads (default_permission READ).
"""

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.server.auth.client import AuthServiceClient

from closecast.cli.app import main
from closecast.core.config import CANDIDATES_ENV, EXPERIMENT, MODEL_NAME
from closecast.tasks.registry.aliases import alias_history, current_aliases
from closecast.tasks.registry.roles import OUTSIDE
from tests.fixtures import read_report
from tests.mlflow_fixtures import running_mlflow_server
from tests.waiting import wait_for

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

ADMIN = ("admin", "admin-password-1")
# user -> (password, {resource type: permission on experiment closecast / model closecast-lstm})
USERS = {
    "pipeline": ("pipeline-password-1", {"experiment": "EDIT", "registered_model": "EDIT"}),
    # With a candidates model: EDIT on the experiment only; it creates (so manages) the
    # candidates model, and reads closecast-lstm, whose champion reviewers move.
    "nightly": ("nightly-password-1", {"experiment": "EDIT"}),
    "reviewer": ("reviewer-password-1", {"registered_model": "MANAGE"}),
    "reader": ("reader-password-1", {}),
    "stranger": ("stranger-password-1", {}),
    "outsider": ("outsider-password-1", {"registered_model": "DENY"}),
}
AUTH_INI = """\
[mlflow]
default_permission = READ
database_uri = sqlite:///{database}
admin_username = {admin}
admin_password = {password}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A password check is a scrypt hash (~75 ms of CPU); a nightly makes hundreds of requests.
auth_cache_ttl_seconds = 300
"""


@dataclass(frozen=True)
class AuthServer:
    url: str
    log: Path
    experiment_id: str

    def refused_logins(self) -> int:
        """How many requests the server has answered 401 so far (its access log)."""
        return self.log.read_text(errors="replace").count('" 401 ')


def login(monkeypatch: pytest.MonkeyPatch, user: str | None, password: str | None = None) -> None:
    """Talk to the server as `user` (its own password unless one is given); None: no credentials."""
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    if user is not None:
        secret = password or (ADMIN[1] if user == ADMIN[0] else USERS[user][0])
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", secret)


def _set_up(url: str) -> str:
    """As the admin: the users, experiment `closecast`, model `closecast-lstm`, the grants."""
    admin, client = AuthServiceClient(url), MlflowClient(url, registry_uri=url)
    experiment_id = client.create_experiment(EXPERIMENT)
    client.create_registered_model(MODEL_NAME)
    for user, (password, grants) in USERS.items():
        admin.create_user(user, password)
        for kind, permission in grants.items():
            resource = experiment_id if kind == "experiment" else MODEL_NAME
            admin.grant_user_permission(user, kind, resource, permission)
    return experiment_id


@pytest.fixture(scope="module")
def auth_server(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[AuthServer]:
    """One basic-auth tracking server on a free loopback port, users and grants in place."""
    root = tmp_path_factory.mktemp("mlflow-auth")
    config = root / "auth.ini"
    config.write_text(AUTH_INI.format(database=root / "auth.db", admin=ADMIN[0], password=ADMIN[1]))
    env = {
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "closecast-tests-only",  # the auth app's CSRF key
    }
    template = request.getfixturevalue("mlflow_template")
    with running_mlflow_server(root, template, "--app-name", "basic-auth", env=env) as url:
        with pytest.MonkeyPatch.context() as patch:
            login(patch, ADMIN[0])
            experiment_id = _set_up(url)
        yield AuthServer(url, root / "server.log", experiment_id)


@pytest.fixture
def at_server(auth_server: AuthServer, monkeypatch: pytest.MonkeyPatch) -> AuthServer:
    """MLFLOW_TRACKING_URI points at the server; MLflow's own retry settings left alone."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", auth_server.url)
    monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
    return auth_server


def nightly_args(csv_folder: Path, home: Path, *extra: str) -> list[str]:
    return ["run", "--source", f"csv:{csv_folder}", "--tickers", "AAA,BBB", "--home", str(home),
            "--epochs", "2", "--hidden", "8", *extra]  # fmt: skip


def last_error(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    """The last line on stderr, after checking that nothing printed or logged a traceback."""
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err + caplog.text
    assert not [r for r in caplog.records if r.exc_info]  # Prefect's task and flow loggers
    return err.strip().splitlines()[-1]


def test_the_pipeline_registers_a_reviewer_promotes_and_a_reader_only_reads(
    at_server: AuthServer,
    csv_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """EDIT runs the nightly, MANAGE promotes; READ lists, predicts (without an MLflow run)
    and may not promote: one line naming EDIT, exit 1, champion and history unchanged."""
    url, home = at_server.url, tmp_path / "home"
    client = MlflowClient(url, registry_uri=url)
    login(monkeypatch, "pipeline")
    assert main(nightly_args(csv_folder, home, "--no-promote")) == 0
    assert current_aliases(client) == {"challenger": "1"}
    capsys.readouterr()

    login(monkeypatch, "reader")
    history = alias_history(client)
    assert main(["promote", "1", "--home", str(home)]) == 1
    assert last_error(capsys, caplog) == (
        f"closecast: pipeline failed: user reader may not move aliases of {MODEL_NAME}: "
        f"MLflow at {url} needs EDIT permission on the registered model (403 Permission denied)"
    )
    assert current_aliases(client) == {"challenger": "1"}
    assert alias_history(client) == history

    login(monkeypatch, "reviewer")
    assert main(["promote", "1", "--home", str(home), "--reason", "reviewed"]) == 0
    assert capsys.readouterr().out.strip() == f"champion: {MODEL_NAME} v1 (was v-)"
    assert current_aliases(client) == {"challenger": "1", "champion": "1"}
    assert alias_history(client)[-1].by == "closecast promote by reviewer"

    login(monkeypatch, "reader")
    assert main(["models", "--home", str(home)]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [r.split()[:2] for r in rows] == [["1", "challenger,champion"]]
    runs_before = len(client.search_runs([at_server.experiment_id]))
    predict = ["predict", "--source", f"csv:{csv_folder}", "--tickers", "AAA,BBB"]
    # On the nightly's home: the nightly's report for the same as_of is kept.
    [nightly_report] = (home / "reports").glob("predictions_*.csv")
    written = nightly_report.read_bytes()
    assert main([*predict, "--home", str(home)]) == 0
    assert f"report: {nightly_report} kept, written by run " in capsys.readouterr().out
    assert nightly_report.read_bytes() == written
    # On a home of its own: its report, without an MLflow run.
    reader_home = tmp_path / "reader"
    assert main([*predict, "--home", str(reader_home)]) == 0
    assert "mlflow run: none (the tracking server refused one)" in capsys.readouterr().out
    assert "user reader may not log runs to experiment closecast" in caplog.text
    assert len(client.search_runs([at_server.experiment_id])) == runs_before
    [report_path] = (reader_home / "reports").glob("predictions_*.csv")
    report = read_report(report_path)
    assert report["model_version"].astype(str).tolist() == ["1", "1"]
    assert report["predicted_close"].notna().all()


CANDIDATES = "closecast-lstm-candidates"


def test_with_a_candidates_model_only_reviewers_move_the_champion(
    at_server: AuthServer,
    csv_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The nightly registers into the candidates model and may not move closecast-lstm's
    champion (403, one line, nothing changed), neither with `closecast promote` nor directly;
    a reviewer promotes with `closecast promote` (a recorded copy) or as the MLflow UI does
    (copy, then the alias pencil), which the next command records as made outside."""
    url, home = at_server.url, tmp_path / "home"
    client = MlflowClient(url, registry_uri=url)
    monkeypatch.setenv(CANDIDATES_ENV, CANDIDATES)
    login(monkeypatch, "nightly")
    before = current_aliases(client)
    assert main(nightly_args(csv_folder, home)) == 0
    assert f"model: {CANDIDATES} v1 (manual); predictions by " in capsys.readouterr().out
    assert current_aliases(client, CANDIDATES) == {"challenger": "1"}
    assert current_aliases(client) == before

    history = alias_history(client)
    assert main(["promote", "1", "--home", str(home)]) == 1
    assert last_error(capsys, caplog) == (
        f"closecast: pipeline failed: user nightly may not register versions of {MODEL_NAME}: "
        f"MLflow at {url} needs EDIT permission on the registered model (403 Permission denied)"
    )
    with pytest.raises(MlflowException) as refused:
        client.set_registered_model_alias(MODEL_NAME, "champion", "1")
    assert refused.value.error_code == "PERMISSION_DENIED"
    assert current_aliases(client) == before and alias_history(client) == history

    login(monkeypatch, "reviewer")
    assert main(["promote", "1", "--home", str(home), "--reason", "reviewed"]) == 0
    copy = current_aliases(client)["champion"]
    assert capsys.readouterr().out.strip() == (
        f"champion: {MODEL_NAME} v{copy} (copy of {CANDIDATES} v1; "
        f"was v{before.get('champion', '-')})"
    )
    assert client.get_model_version(MODEL_NAME, copy).source == f"models:/{CANDIDATES}/1"
    assert alias_history(client)[-1].by == "closecast promote by reviewer"

    login(monkeypatch, "nightly")
    assert main(nightly_args(csv_folder, home, "--seed", "2")) == 0
    out = capsys.readouterr().out
    assert f"model: {CANDIDATES} v2 (manual); predictions by {MODEL_NAME} v{copy}" in out
    login(monkeypatch, "reviewer")  # the MLflow UI: "Promote model", then the alias pencil
    copied = str(client.copy_model_version(f"models:/{CANDIDATES}/2", MODEL_NAME).version)
    client.set_registered_model_alias(MODEL_NAME, "champion", copied)
    noticed = datetime.now(UTC).replace(microsecond=0)
    login(monkeypatch, "nightly")  # may not record it, but reports the true champion
    main(["status", "--home", str(home), "--json"])
    out, err = capsys.readouterr()
    health = json.loads(out)
    assert health["champion_version"] == copied
    assert datetime.fromisoformat(health["champion_since"]) >= noticed - timedelta(seconds=1)
    said = err + caplog.text
    assert "was moved outside closecast" in said and "may not record it" in said, said[-2000:]
    login(monkeypatch, "reviewer")
    assert main(["models", "--history", "--home", str(home)]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"champion    v{copy} -> v{copied}  by {OUTSIDE}" in last
    card = client.get_model_version(MODEL_NAME, copy).description
    assert card.startswith("Champion from ") and f"superseded by v{copied}." in card


def test_a_user_without_edit_fails_the_nightly_in_one_line_and_moves_nothing(
    at_server: AuthServer,
    csv_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """READ on the experiment: refused before training. EDIT on the experiment, READ on the
    model: refused at registration; the run is FAILED, no version, the aliases unchanged."""
    url = at_server.url
    client = MlflowClient(url, registry_uri=url)
    login(monkeypatch, "stranger")
    versions = len(client.search_model_versions(f"name='{MODEL_NAME}'"))
    aliases = current_aliases(client)
    runs = len(client.search_runs([at_server.experiment_id]))
    assert main(nightly_args(csv_folder, tmp_path / "home")) == 1
    assert last_error(capsys, caplog) == (
        "closecast: pipeline failed: user stranger may not log runs to experiment closecast: "
        f"MLflow at {url} needs EDIT permission on the experiment (403 Permission denied)"
    )
    assert len(client.search_runs([at_server.experiment_id])) == runs

    with monkeypatch.context() as admin:
        login(admin, ADMIN[0])
        AuthServiceClient(url).grant_user_permission(
            "stranger", "experiment", at_server.experiment_id, "EDIT"
        )
    assert main(nightly_args(csv_folder, tmp_path / "home")) == 1
    assert last_error(capsys, caplog) == (
        f"closecast: pipeline failed: user stranger may not register versions of {MODEL_NAME}: "
        f"MLflow at {url} needs EDIT permission on the registered model (403 Permission denied)"
    )
    [failed] = client.search_runs([at_server.experiment_id], max_results=1)
    assert failed.info.status == "FAILED"
    assert len(client.search_model_versions(f"name='{MODEL_NAME}'")) == versions
    assert current_aliases(client) == aliases


def test_a_user_who_may_not_read_the_model_is_told_so_not_that_there_is_no_champion(
    at_server: AuthServer,
    csv_folder: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`predict` as a user with no permission on the model: one line naming the refusal."""
    login(monkeypatch, "outsider")
    home = tmp_path / "home"
    predict = ["predict", "--source", f"csv:{csv_folder}", "--tickers", "AAA", "--home", str(home)]
    assert main(predict) == 1
    line = last_error(capsys, caplog)
    assert line.startswith("closecast: pipeline failed: ") and "user outsider" in line, line
    assert "(403 Permission denied)" in line and "no champion" not in line
    assert not (home / "reports").exists()


@pytest.mark.parametrize(
    ("user", "password", "line"),
    [
        ("reader", "not-the-password", "refused the credentials of user reader (401): "
         "check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
        (None, None, "asks for credentials (401): "
         "set MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD"),
    ],
)  # fmt: skip
def test_refused_credentials_are_one_line_without_retries(
    at_server: AuthServer,
    tmp_path: Path,
    user: str | None,
    password: str | None,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password or none: exit 1, one line saying so (not "cannot be reached"),
    after exactly one request: a 401 is the server's answer, not an outage to retry."""
    login(monkeypatch, user, password)
    refused = at_server.refused_logins()
    assert main(["models", "--home", str(tmp_path / "home")]) == 1
    assert (
        last_error(capsys, caplog)
        == f"closecast: pipeline failed: MLflow at {at_server.url} {line}"
    )
    # the access log line follows the response
    wait_for(at_server.refused_logins, lambda count: count > refused, every_s=0.05)
    time.sleep(0.3)  # a retry, had there been one, would be logged by now
    assert at_server.refused_logins() == refused + 1
    assert re.search(r"/experiments/search HTTP/1.1\" 401", at_server.log.read_text())


@pytest.mark.parametrize(
    ("user", "password", "line"),
    [
        ("reader", "not-the-password", "MLflow at {url} refused the credentials of user reader "
         "(401): check MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD"),
        ("outsider", None, f"user outsider may not read {MODEL_NAME}: MLflow at {{url}} needs "
         "READ permission on the registered model (403 Permission denied)"),
    ],
)  # fmt: skip
def test_status_json_of_a_refused_user_is_unhealthy_naming_the_refusal(
    at_server: AuthServer,
    tmp_path: Path,
    user: str,
    password: str | None,
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Refused credentials (401) or reading (403): `status --json` still prints its object,
    unhealthy, with the refusal as the problem (exit 1); the screen says it in one line."""
    login(monkeypatch, user, password)
    home, expected = tmp_path / "home", line.format(url=at_server.url)
    assert main(["status", "--home", str(home), "--json"]) == 1
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["healthy"] is False and data["problems"] == [expected]
    assert "Traceback" not in err
    assert main(["status", "--home", str(home)]) == 1
    assert last_error(capsys, caplog) == f"closecast: pipeline failed: {expected}"
