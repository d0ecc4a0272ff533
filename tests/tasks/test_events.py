import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import pandas as pd
import pytest
from prefect.events import Event
from prefect.events.clients import AssertingEventsClient
from prefect.events.worker import EventsWorker

from closecast.tasks.registry.gate import Decision
from closecast.tasks.registry.register import RegisteredVersion
from closecast.tasks.reporting.events import (
    UNHEALTHY_EVENT,
    WAITING_EVENT,
    announce_waiting,
    emit_report_health,
    report_health,
)


def report(statuses: list[str]) -> pd.DataFrame:
    tickers = [f"T{i}" for i in range(len(statuses))]
    return pd.DataFrame({"as_of": "2024-05-01", "ticker": tickers, "status": statuses})


@pytest.fixture
def emitted(prefect_harness: None) -> Iterator[Callable[[], list[Event]]]:
    """The events emitted so far in the test, caught by Prefect's asserting client."""
    EventsWorker.drain_all(timeout=5)
    EventsWorker.set_client_override(AssertingEventsClient)
    AssertingEventsClient.reset()

    def sent() -> list[Event]:
        EventsWorker.drain_all(timeout=5)
        return [event for client in AssertingEventsClient.all for event in client.events]

    try:
        yield sent
    finally:
        EventsWorker.drain_all(timeout=5)
        EventsWorker.set_client_override(None)


@pytest.mark.parametrize(
    ("statuses", "unhealthy"),
    [
        (["ok"] * 5, False),
        (["ok"] * 4 + ["stale_data"], False),  # 20% exactly is not more than 20%
        (["ok"] * 3 + ["stale_data", "fetch_failed"], True),
        (["insufficient_history"], True),
        ([], False),
    ],
)
def test_more_than_a_fifth_not_ok_is_unhealthy(statuses: list[str], unhealthy: bool) -> None:
    """The share counts every row; only a share above 20% is unhealthy."""
    health = report_health(report(statuses))
    assert health.unhealthy is unhealthy
    assert health.not_ok == sum(s != "ok" for s in statuses)


def test_an_unhealthy_report_emits_one_event_with_the_counts(emitted: list, tmp_path: Path) -> None:
    """2 of 5 not ok: one `closecast.report.unhealthy` naming the report, counts in payload."""
    path = tmp_path / "predictions_2024-05-01.csv"
    assert emit_report_health(report(["ok", "ok", "ok", "stale_data", "fetch_failed"]), path)
    (event,) = emitted()
    assert event.event == UNHEALTHY_EVENT
    assert event.resource.id == "closecast.report.2024-05-01"
    assert event.payload == {
        "as_of": "2024-05-01",
        "tickers": 5,
        "not_ok": 2,
        "statuses": {"T3": "stale_data", "T4": "fetch_failed"},
        "share_pct": 40.0,
        "report": str(path),
    }


def test_a_healthy_report_emits_nothing(emitted: Callable[[], list[Event]]) -> None:
    """1 of 5 not ok: no event."""
    assert emit_report_health(report(["ok"] * 4 + ["stale_data"])) is False
    assert emitted() == []


def test_a_report_that_cannot_be_read_is_logged_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A frame without a status column: a warning, False, no exception into the flow."""
    with caplog.at_level(logging.WARNING, logger="closecast.tasks.reporting.events"):
        assert emit_report_health(pd.DataFrame({"ticker": ["A"]})) is False
    assert f"could not emit {UNHEALTHY_EVENT}: KeyError" in caplog.text


def _registered(decision: Decision, model: str = "closecast-lstm") -> RegisteredVersion:
    return RegisteredVersion("6", decision, "5", "5", "a" * 32, model=model)


def test_a_recommended_version_that_needs_a_person_emits_one_event_with_the_command(
    emitted: Callable[[], list[Event]],
) -> None:
    """Manual promotion, the gate recommends v6: one event naming the model and version, the
    gate's verdict, the card's page and `closecast promote 6`."""
    verdict = "interval score −2.2% (95% CI −3.9% to −0.4%, p = 0.01) beats champion v5."
    decision = Decision(
        False, "manual", "promotion is manual", champion="5", recommended=True,
        recommendation=verdict,
    )  # fmt: skip
    assert announce_waiting(_registered(decision), "http://127.0.0.1:5000/")
    (event,) = emitted()
    assert event.event == WAITING_EVENT
    assert event.resource.id == "closecast.model.closecast-lstm.v6"
    assert event.payload == {
        "model": "closecast-lstm",
        "version": "6",
        "champion": "5",
        "recommendation": verdict,
        "card": "http://127.0.0.1:5000/#/models/closecast-lstm/versions/6",
        "command": "closecast promote 6",
    }


@pytest.mark.parametrize(
    "decision",
    [
        Decision(True, "champion", "beats v5", champion="5", recommended=True),  # promoted
        Decision(False, "manual", "manual", champion="5", recommended=False),  # not recommended
        Decision(False, "rejected", "does not beat v5", champion="5"),
    ],
)
def test_a_version_promoted_or_not_recommended_is_not_announced(
    emitted: Callable[[], list[Event]], decision: Decision
) -> None:
    assert announce_waiting(_registered(decision), "sqlite:///x.db") is False
    assert emitted() == []
