"""The report's health as a Prefect event, for the automation that alerts on it.

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

import pandas as pd

from closecast.core.statuses import OK

logger = logging.getLogger(__name__)

UNHEALTHY_EVENT = "closecast.report.unhealthy"
UNHEALTHY_SHARE = 0.2  # more than this share of tickers not ok is an alert


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


def report_health(report: pd.DataFrame) -> ReportHealth:
    """The counts of a report (one row per ticker, a `status` column)."""
    not_ok = report[report["status"] != OK]
    as_of = str(report["as_of"].iloc[0]) if len(report) else ""
    statuses = dict(zip(not_ok["ticker"].astype(str), not_ok["status"].astype(str), strict=True))
    return ReportHealth(as_of, len(report), len(not_ok), statuses)


def emit_report_health(report: pd.DataFrame, path: Path | None = None) -> bool:
    """Emit `closecast.report.unhealthy` when more than UNHEALTHY_SHARE of the tickers are not ok.

    Never raises: a report that cannot be announced is logged, and the flow goes on.

    Returns:
        Whether the event was handed to Prefect's events worker.
    """
    try:
        health = report_health(report)
        if not health.unhealthy:
            return False
        from prefect.events import emit_event

        payload = asdict(health) | {
            "share_pct": round(100 * health.share, 1),
            "report": str(path) if path else "",
        }
        resource = {
            "prefect.resource.id": f"closecast.report.{health.as_of}",
            "prefect.resource.name": f"report {health.as_of}",
        }
        event = emit_event(UNHEALTHY_EVENT, resource=resource, payload=payload)
    except Exception as exc:  # an alert must never fail the nightly it reports on
        _logger().warning("could not emit %s: %s: %s", UNHEALTHY_EVENT, type(exc).__name__, exc)
        return False
    if event is None:
        _logger().warning("%s not emitted: no Prefect API to send it to", UNHEALTHY_EVENT)
    return event is not None


def _logger() -> logging.Logger | logging.LoggerAdapter:  # type: ignore[type-arg]
    """The flow run's logger, so a miss shows in the run's log; else this module's."""
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logger
