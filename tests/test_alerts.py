"""Alerts on a real Prefect server on loopback, posting to a loopback HTTP receiver."""

import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import pandas as pd
import pytest
from prefect import flow
from prefect.blocks.notifications import SlackWebhook
from prefect.client.orchestration import get_client
from prefect.events.schemas.automations import Posture
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr

from closecast.cli.alerts import (
    DELIVERY_TIMEOUT_S,
    FAILED,
    LATE,
    LATE_WITHIN,
    UNHEALTHY,
    WAITING,
    NotifyTarget,
    alert_automations,
    install_alerts,
)
from closecast.cli.app import main
from closecast.core.errors import PipelineError
from closecast.flows.nightly import nightly
from closecast.tasks.reporting.events import UNHEALTHY_EVENT, WAITING_EVENT, emit_report_health
from tests.fixtures import tiny_config, write_ticker_csvs
from tests.mlflow_fixtures import free_port
from tests.waiting import wait_for

BAD_URLS = [
    "ftp://example.com/hook",
    "example.com/hook",
    "http:///hook",
    "https://exa mple.com/hook",
    "http://example.com:99999/hook",
]
TEST_WITHIN = timedelta(seconds=10)  # Prefect's least `within` for a proactive trigger
MISS = "All connection attempts failed"  # httpx, in the server's log, for a closed port
PREFECT_TIMEOUT_S = 10.0  # CustomWebhookNotificationBlock's default timeout
SLOW_S = PREFECT_TIMEOUT_S + 1  # a receiver past Prefect's default, well inside ours
UUID_TEXT = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class Receiver:
    """An HTTP server on loopback that records the JSON body of every POST, answering
    each `delay_s` after it arrived."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.posts: list[dict[str, Any]] = []
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                posts.append(json.loads(self.rfile.read(length) or b"{}"))
                time.sleep(delay_s)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def naming(self, text: str) -> list[dict[str, Any]]:
        return [p for p in self.posts if text in p.get("body", "")]

    def wait_for(self, found: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        """What `found` returns once it is not empty (tests.waiting.wait_for)."""
        return wait_for(found, every_s=0.25)


@contextmanager
def on_prefect_api(url: str) -> Iterator[None]:
    """Flows, events and logs of this process go to the Prefect API at `url`.

    Prefect's events and logs workers are per process and keep the API they
    started with, so they are drained (and start afresh) on the way in and out.
    """
    previous = os.environ.get("PREFECT_API_URL")
    for worker in (EventsWorker, APILogWorker):
        worker.drain_all(timeout=5)
    os.environ["PREFECT_API_URL"] = url
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield
            for worker in (EventsWorker, APILogWorker):
                worker.drain_all(timeout=5)
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous


@dataclass(frozen=True)
class Alerts:
    """The alerts installed on the test server and the receiver they post to."""

    receiver: Receiver
    ids: list[UUID]
    runs: list[UUID]  # the flow runs the tests made, deleted with the automations


def unstarted_nightly(prefect_server: str, name: str = "nobody-runs-me") -> UUID:
    """A nightly flow run nobody will ever start, scheduled minutes ago (it goes Late)."""
    with on_prefect_api(prefect_server), get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("nightly")
        due = datetime.now(UTC) - timedelta(minutes=5)
        response = client.request(
            "POST",
            "/flow_runs/",
            json={
                "flow_id": str(flow_id),
                "name": name,
                "state": {
                    "type": "SCHEDULED",
                    "name": "Scheduled",
                    "state_details": {"scheduled_time": due.isoformat()},
                },
            },
        )
    return UUID(response.json()["id"])


@pytest.fixture(scope="module")
def alerts(prefect_server: str) -> Iterator[Alerts]:
    receiver = Receiver()
    with on_prefect_api(prefect_server):
        ids = install_alerts(NotifyTarget(url=receiver.url), late_within=TEST_WITHIN)
        made = Alerts(receiver, ids, [])
        try:
            yield made
        finally:
            with get_client(sync_client=True) as client:  # the server is shared: leave it clean
                for automation_id in ids:
                    client.delete_automation(automation_id)
                for run in made.runs:
                    client.delete_flow_run(run)
            receiver.server.shutdown()


@pytest.mark.parametrize("command", ["serve", "alerts"])
@pytest.mark.parametrize("url", BAD_URLS)
def test_a_bad_notify_url_exits_2_in_one_line_before_anything_starts(
    command: str, url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not http(s), no host, spaces, a bad port: exit 2, one line naming the URL, and no
    Prefect server started (serve would print its pid)."""
    argv = [command, "--notify-url", url]
    if command == "serve":
        argv += ["--source", "sample", "--home", str(tmp_path), "--port", str(free_port())]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.splitlines()) == 1
    assert captured.err.startswith(f"closecast: error: invalid --notify-url {url!r}: ")


def test_the_production_late_alert_is_proactive_with_a_3h30_window() -> None:
    """Late: a proactive trigger per nightly flow run, started by Late/Pending/Running,
    expecting a final state within 3.5 h (18:30 + 3.5 h = 22:00 New York)."""
    _, late, _, _ = alert_automations(uuid4())
    trigger = late.trigger
    assert timedelta(hours=3, minutes=30) == LATE_WITHIN
    assert trigger.posture == Posture.Proactive
    assert trigger.within == LATE_WITHIN
    assert trigger.after == {f"prefect.flow-run.{s}" for s in ("Late", "Pending", "Running")}
    assert "prefect.flow-run.Completed" in trigger.expect
    assert trigger.for_each == {"prefect.resource.id"}


def test_the_descriptions_count_from_the_nightly_slot_and_name_the_unhealthy_share() -> None:
    """The late alert's time is the nightly slot plus its window, the unhealthy alert's
    share is the one the report event uses: computed, not typed again."""
    _, late, unhealthy, waiting = alert_automations(uuid4())
    assert late.description.endswith("Running: 22:00 New York for the 18:30 slot.")
    assert unhealthy.description == "More than 20% of the tickers of a nightly's report are not ok."
    assert waiting.description.startswith("A nightly registered a version the gate recommends")
    _, sooner, _, _ = alert_automations(uuid4(), late_within=timedelta(minutes=45))
    assert sooner.description.endswith("Running: 19:15 New York for the 18:30 slot.")


def test_install_reads_back_four_automations_and_reinstalling_updates_them(
    alerts: Alerts, prefect_server: str
) -> None:
    """Installing twice leaves one automation per name, with the same ids, as defined."""
    with on_prefect_api(prefect_server):
        again = install_alerts(NotifyTarget(url=alerts.receiver.url), late_within=TEST_WITHIN)
        with get_client(sync_client=True) as client:
            by_name = {
                name: client.read_automations_by_name(name)
                for name in (FAILED, LATE, UNHEALTHY, WAITING)
            }
    assert again == alerts.ids
    assert {name: len(found) for name, found in by_name.items()} == {
        FAILED: 1,
        LATE: 1,
        UNHEALTHY: 1,
        WAITING: 1,
    }
    late = by_name[LATE][0].trigger
    assert late.posture == Posture.Proactive and late.within == TEST_WITHIN
    assert late.match_related.model_dump() == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": "nightly",
    }
    failed = by_name[FAILED][0].trigger
    assert failed.posture == Posture.Reactive
    assert failed.expect == {f"prefect.flow-run.{s}" for s in ("Failed", "Crashed", "TimedOut")}
    assert by_name[UNHEALTHY][0].trigger.expect == {UNHEALTHY_EVENT}
    assert by_name[WAITING][0].trigger.expect == {WAITING_EVENT}


def test_a_failing_nightly_posts_once_naming_its_flow_run(
    alerts: Alerts, prefect_server: str, tmp_path: Path
) -> None:
    """A nightly that fails (no ticker has enough history) brings one POST naming the run."""
    folder = write_ticker_csvs(tmp_path / "csv", {"SHORT": 10})
    config = tiny_config(tmp_path / "home", f"csv:{folder}", ["SHORT"])
    with on_prefect_api(prefect_server):
        state = nightly(config, return_state=True)
    assert state.is_failed()
    with pytest.raises(PipelineError):
        state.result()
    alerts.runs.append(state.state_details.flow_run_id)
    run_id = str(state.state_details.flow_run_id)
    (post,) = alerts.receiver.wait_for(lambda: alerts.receiver.naming(run_id))
    with get_client(sync_client=True) as client:
        name = client.read_flow_run(UUID(run_id)).name
    assert name.startswith("nightly SHORT ")
    assert post["subject"] == f"closecast nightly failed: {name}"
    assert "ended Failed" in post["body"] and "no ticker" in post["body"]
    assert UUID_TEXT.match(post["key"])


def test_a_report_with_over_20pct_of_tickers_not_ok_posts_naming_the_run(
    alerts: Alerts, prefect_server: str, mlflow_home: Path, tmp_path: Path
) -> None:
    """A nightly whose report has 1 of 2 tickers not ok emits the event; one POST follows."""
    folder = write_ticker_csvs(tmp_path / "csv", {"AAA": 300, "SHORT": 10})
    config = tiny_config(mlflow_home, f"csv:{folder}", ["AAA", "SHORT"])
    with on_prefect_api(prefect_server):
        state = nightly(config, return_state=True)
    assert state.is_completed()
    alerts.runs.append(state.state_details.flow_run_id)
    run_id = str(state.state_details.flow_run_id)

    def unhealthy() -> list[dict[str, Any]]:
        return [p for p in alerts.receiver.naming(run_id) if "not ok" in p["subject"]]

    (post,) = alerts.receiver.wait_for(unhealthy)
    assert post["subject"] == "closecast: 1 of 2 tickers not ok"
    assert "SHORT (insufficient_history)" in post["body"]


def test_a_version_that_waits_for_review_posts_its_version_verdict_card_and_command(
    alerts: Alerts, prefect_server: str, mlflow_home: Path, tmp_path: Path
) -> None:
    """A nightly with manual promotion registers v1, which the gate would make champion: the
    receiver gets one POST naming the version, the gate's verdict, the command and the card."""
    folder = write_ticker_csvs(tmp_path / "csv", {"AAA": 300})
    config = tiny_config(mlflow_home, f"csv:{folder}", ["AAA"])
    config = config.model_copy(update={"promotion": "manual"})
    with on_prefect_api(prefect_server):
        state = nightly(config, return_state=True)
    assert state.is_completed()
    alerts.runs.append(state.state_details.flow_run_id)
    run_id = str(state.state_details.flow_run_id)

    def waiting() -> list[dict[str, Any]]:
        return [p for p in alerts.receiver.naming(run_id) if "waits for review" in p["subject"]]

    (post,) = alerts.receiver.wait_for(waiting)
    assert post["subject"] == "closecast: closecast-lstm v1 waits for review"
    assert "the gate recommends promoting it: first version" in post["body"]
    assert "To promote it: closecast promote 1." in post["body"]
    assert post["body"].endswith("Its card: #/models/closecast-lstm/versions/1")


def test_a_nightly_nobody_starts_posts_late_and_a_failed_one_is_not_posted_twice(
    alerts: Alerts, prefect_server: str
) -> None:
    """The proactive trigger, at its least window: a run gone Late with no final state
    within 10 s brings one POST naming it; the failed run's one POST stays one.

    The run is made here, after the install test re-installed the automations: a
    trigger updated after the run went Late has not seen it go Late, and never fires."""
    unstarted = unstarted_nightly(prefect_server)
    alerts.runs.append(unstarted)
    run_id = str(unstarted)
    posts = alerts.receiver.wait_for(lambda: alerts.receiver.naming(run_id))
    assert len(posts) == 1, posts
    (post,) = posts
    assert post["subject"] == "closecast: no nightly completed within 10 s"
    assert "nobody-runs-me" in post["body"] and "went Late" in post["body"]
    failed = [
        p for p in alerts.receiver.posts if p["subject"].startswith("closecast nightly failed")
    ]
    assert len(failed) == 1
    failed_run = re.search(r"flow run ([0-9a-f-]{36})", failed[0]["body"])
    assert failed_run and len(alerts.receiver.naming(failed_run[1])) == 1


def test_a_receiver_slower_than_prefects_timeout_gets_one_post_carrying_its_key(
    alerts: Alerts, prefect_server: str, tmp_path: Path
) -> None:
    """A receiver that answers after Prefect's default 10 s (which timed out, and the
    server sent the alert again, four times in all) gets one POST for one failed nightly:
    the server records the delivery as executed, and the POST carries the firing's key."""
    assert PREFECT_TIMEOUT_S < SLOW_S < DELIVERY_TIMEOUT_S
    slow = Receiver(delay_s=SLOW_S)
    folder = write_ticker_csvs(tmp_path / "csv", {"SHORT": 10})
    config = tiny_config(tmp_path / "home", f"csv:{folder}", ["SHORT"])
    since = datetime.now(UTC)
    try:
        with on_prefect_api(prefect_server):
            install_alerts(NotifyTarget(url=slow.url), late_within=TEST_WITHIN)
            state = nightly(config, return_state=True)
            alerts.runs.append(state.state_details.flow_run_id)
            run_id = str(state.state_details.flow_run_id)
            with get_client(sync_client=True) as client:

                def delivered_or_repeated() -> list[Any]:
                    """The executed deliveries of the failed alert, or (a repeat) its POSTs."""
                    if len(posts := slow.naming(run_id)) > 1:
                        return posts
                    return _executed(client, alerts.ids[0], since)

                assert slow.wait_for(delivered_or_repeated)
            install_alerts(NotifyTarget(url=alerts.receiver.url), late_within=TEST_WITHIN)
    finally:
        slow.server.shutdown()
    assert state.is_failed()
    posts = slow.naming(run_id)
    assert len(posts) == 1, f"{len(posts)} POSTs of one alert, keys {[p['key'] for p in posts]}"
    assert posts[0]["subject"].startswith("closecast nightly failed: nightly SHORT ")
    assert UUID_TEXT.match(posts[0]["key"])


def _executed(client: Any, automation_id: UUID, since: datetime) -> list[dict[str, Any]]:
    """The `prefect.automation.action.executed` events of an automation since `since`."""
    response = client.request(
        "POST",
        "/events/filter",
        json={
            "filter": {
                "occurred": {"since": since.isoformat()},
                "event": {"name": ["prefect.automation.action.executed"]},
                "resource": {"id": [f"prefect.automation.{automation_id}"]},
            }
        },
    )
    return response.json()["events"]


def test_an_endpoint_that_is_down_fails_no_flow_and_the_server_logs_the_miss(
    alerts: Alerts, prefect_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Alerts pointed at a closed port: the flow that emits the event completes, and the
    Prefect server's log records the notification that could not be sent."""
    (server_log,) = tmp_path_factory.getbasetemp().glob("prefect-server[0-9]*/server.log")
    misses_before = server_log.read_text(errors="replace").count(MISS)

    @flow(name="nightly")
    def unhealthy_nightly() -> bool:
        report = pd.DataFrame(
            {"as_of": "2024-05-01", "ticker": ["A", "B"], "status": ["ok", "stale_data"]}
        )
        return emit_report_health(report)

    down = f"http://127.0.0.1:{free_port()}/alerts"
    with on_prefect_api(prefect_server):
        install_alerts(NotifyTarget(url=down), late_within=TEST_WITHIN)
        state = unhealthy_nightly(return_state=True)
    alerts.runs.append(state.state_details.flow_run_id)
    assert state.is_completed() and state.result() is True

    misses = wait_for(
        lambda: server_log.read_text(errors="replace").count(MISS),
        lambda count: count > misses_before,
        every_s=0.25,
    )
    assert misses > misses_before, f"no {MISS!r} in {server_log}"


def test_the_alerts_command_installs_through_a_named_block(
    alerts: Alerts, prefect_server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`closecast alerts --notify-block slack-webhook/my-team` against PREFECT_API_URL: the
    same three automations, now notifying through that block; a missing block: exit 2."""
    with on_prefect_api(prefect_server):
        slack_id = SlackWebhook(url=SecretStr("https://hooks.slack.com/services/T/B/X")).save(
            "my-team", overwrite=True
        )
        assert main(["alerts", "--notify-block", "slack-webhook/my-team"]) == 0
        assert main(["alerts", "--notify-block", "slack-webhook/nobody"]) == 2
        with get_client(sync_client=True) as client:
            installed = [client.read_automation(i) for i in alerts.ids]
    out, err = capsys.readouterr()
    assert out == f"alerts installed on {prefect_server}: block slack-webhook/my-team\n"
    assert err == (
        "closecast: error: no Prefect block slack-webhook/nobody: "
        "create it first (prefect block create slack-webhook)\n"
    )
    assert [a.name for a in installed if a] == [FAILED, LATE, UNHEALTHY, WAITING]
    assert {a.actions[0].block_document_id for a in installed if a} == {slack_id}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["alerts"], "give --notify-url URL or --notify-block TYPE/NAME"),
        (
            ["alerts", "--notify-block", "slack"],
            "invalid --notify-block 'slack': expected TYPE/NAME",
        ),
        (
            ["serve", "--notify-url", "http://a.example/x", "--notify-block", "slack-webhook/t"],
            "give --notify-url or --notify-block, not both",
        ),
    ],
)
def test_alert_flags_that_name_no_target_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No target, a block not written TYPE/NAME, or two targets: exit 2 in one line."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"closecast: error: {message}")


def test_alerts_and_serve_on_a_dead_prefect_api_fail_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """PREFECT_API_URL naming a server that is down: exit 1, one line naming it, not httpx's."""
    dead = f"http://127.0.0.1:{free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", dead)
    line = f"closecast: pipeline failed: no Prefect server answers at {dead}: "
    with temporary_settings(updates={PREFECT_API_URL: dead}):
        for argv in (
            ["alerts", "--notify-url", "http://127.0.0.1:1/hook"],
            ["serve", "--source", "sample", "--home", str(tmp_path / "home")],
        ):
            assert main(argv) == 1
            out, err = capsys.readouterr()
            assert out == "" and err.startswith(line) and len(err.splitlines()) == 1, err
