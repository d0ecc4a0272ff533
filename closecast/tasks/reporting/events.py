"""The report's health, and a challenger that waits for review, as Prefect events, for the
automations that alert on them.

When more than UNHEALTHY_SHARE of a report's tickers are not `ok`, the flow emits
`closecast.report.unhealthy` (resource `closecast.report.<as_of>`; Prefect
adds the flow run, flow and deployment as related resources) with the
counts in its payload. An automation on that event sends the notification
(closecast/alerts.py), so the flow never waits on, or fails for, the
notification's endpoint.
"""

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from closecast.core.statuses import OK

# `closecast.cli.alerts` reads the event names here: a command that refuses its flags (or a
# served home) answers before pandas, and the registry's torch and MLflow, are loaded.
if TYPE_CHECKING:
    import pandas as pd

    from closecast.tasks.registry.register import RegisteredVersion

logger = logging.getLogger(__name__)

UNHEALTHY_EVENT = "closecast.report.unhealthy"
UNHEALTHY_SHARE = 0.2  # more than this share of tickers not ok is an alert
WAITING_EVENT = "closecast.challenger.waiting"  # a version the gate recommends awaits a person


@dataclass(frozen=True)
class WaitingChallenger:
    """A registered version the gate recommends promoting, which only a person may promote."""

    model: str  # the registered model it is a version of
    version: str
    champion: str | None  # the champion version it was compared with
    recommendation: str  # what the gate would decide, and why
    card: str  # its model card (the version page in the MLflow UI)

    @property
    def command(self) -> str:
        return f"closecast promote {self.version}"


@dataclass(frozen=True)
class ReportHealth:
    """How many of a report's tickers are not `ok`, and which, with their statuses."""

    as_of: str
    tickers: int
    not_ok: int
    statuses: dict[str, str]  # ticker -> status, of the tickers not ok

    @property
    def share(self) -> float:
        return self.not_ok / self.tickers if self.tickers else 0.0

    @property
    def unhealthy(self) -> bool:
        """More than UNHEALTHY_SHARE of the tickers are not ok."""
        return self.share > UNHEALTHY_SHARE


def report_health(report: "pd.DataFrame") -> ReportHealth:
    """The counts of a report (one row per ticker, a `status` column)."""
    not_ok = report[report["status"] != OK]
    as_of = str(report["as_of"].iloc[0]) if len(report) else ""
    statuses = dict(zip(not_ok["ticker"].astype(str), not_ok["status"].astype(str), strict=True))
    return ReportHealth(as_of, len(report), len(not_ok), statuses)


def emit_report_health(report: "pd.DataFrame", path: Path | None = None) -> bool:
    """Emit `closecast.report.unhealthy` when more than UNHEALTHY_SHARE of the tickers are not ok.

    Never raises: a report that cannot be announced is logged, and the flow goes on.

    Returns:
        Whether the event was handed to Prefect's events worker.
    """
    try:
        health = report_health(report)
    except Exception as exc:  # an alert must never fail the nightly it reports on
        _logger().warning("could not emit %s: %s: %s", UNHEALTHY_EVENT, type(exc).__name__, exc)
        return False
    if not health.unhealthy:
        return False
    payload = asdict(health) | {
        "share_pct": round(100 * health.share, 1),
        "report": str(path) if path else "",
    }
    return _emit(
        UNHEALTHY_EVENT, f"closecast.report.{health.as_of}", f"report {health.as_of}", payload
    )


def _emit(event_name: str, resource_id: str, name: str, payload: dict[str, Any]) -> bool:
    """Hand one event to Prefect's events worker; never raises (a miss is logged).

    Returns:
        Whether it was handed over (False: no Prefect API to send it to, or an error).
    """
    try:
        from prefect.events import emit_event

        resource = {"prefect.resource.id": resource_id, "prefect.resource.name": name}
        event = emit_event(event_name, resource=resource, payload=payload)
    except Exception as exc:  # an alert must never fail the nightly it reports on
        _logger().warning("could not emit %s: %s: %s", event_name, type(exc).__name__, exc)
        return False
    if event is None:
        _logger().warning("%s not emitted: no Prefect API to send it to", event_name)
    return event is not None


def waiting_challenger(
    registered: "RegisteredVersion", tracking_uri: str
) -> WaitingChallenger | None:
    """The announcement of `registered` when the gate recommends it but a person promotes."""
    from closecast.tasks.registry.register import version_url

    decision = registered.decision
    if decision.promote or not decision.recommended:
        return None
    card = version_url(tracking_uri, registered.model, registered.version)
    reason = decision.recommendation or decision.reason
    return WaitingChallenger(registered.model, registered.version, decision.champion, reason, card)


def announce_waiting(registered: "RegisteredVersion", tracking_uri: str) -> bool:
    """Emit WAITING_EVENT for `registered` if it waits for review (`waiting_challenger`)."""
    waiting = waiting_challenger(registered, tracking_uri)
    return emit_waiting_challenger(waiting) if waiting else False


def emit_waiting_challenger(waiting: WaitingChallenger) -> bool:
    """Emit WAITING_EVENT (resource `closecast.model.<model>.v<version>`) for the automation
    that tells reviewers. Never raises: a miss is logged and the flow goes on.

    Returns:
        Whether the event was handed to Prefect's events worker.
    """
    payload = asdict(waiting) | {"command": waiting.command}
    resource = f"closecast.model.{waiting.model}.v{waiting.version}"
    return _emit(WAITING_EVENT, resource, f"{waiting.model} v{waiting.version}", payload)


def _logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The flow run's logger, so a miss shows in the run's log; else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger
