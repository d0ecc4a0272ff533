"""Alerts: four Prefect automations that send a notification through one block.

- **nightly failed**: a `nightly` flow run ends Failed, Crashed or TimedOut.
- **nightly late**: a `nightly` flow run that went Late, Pending or Running
  (the first of these starts the clock) reaches no final state (Completed,
  Failed, Crashed, TimedOut) within LATE_WITHIN (3 h 30 min). The nightly
  slot (closecast/core/schedule.py) starts the clock (its run
  goes Pending, or Late when nothing picks it up), so the alert comes
  LATE_WITHIN after the slot. Failed runs are alerted once, by the rule above, not again
  here. The trigger is a proactive `EventTrigger` evaluated by the Prefect
  server: it needs the server up then, and the scheduler to have created the
  run (`closecast status` covers the rest).
- **report unhealthy**: the `closecast.report.unhealthy` event of a
  `nightly` run (closecast/tasks/reporting/events.py: more than
  UNHEALTHY_SHARE of its tickers not ok).
- **challenger waits**: the `closecast.challenger.waiting` event of a
  `nightly` run: it registered a version the gate recommends, and promotion
  is a person's (`--no-promote`, or a candidates model). The message names
  the version, the gate's verdict, its card and `closecast promote N`.

Automations run on the Prefect server, so a notification endpoint that is
down never touches the nightly; the server logs the miss and records a
`prefect.automation.action.failed` event. Installing is idempotent: each
automation is updated in place by its name.

Delivery is at least once. A webhook that raises (a timeout, a refused
connection) is not an `ActionFailed` to Prefect's actions service: its
message goes back on the queue and is sent again, up to 3 more times. So
`--notify-url` waits DELIVERY_TIMEOUT_S for an answer (Prefect's own 10 s
made a receiver that takes 30 s get every alert four times), and each POST
carries `key`, the id of the trigger's firing, the same in every repeat, so
a receiver drops a repeat that still happens.
"""

import re
import urllib.parse
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from closecast.core.errors import InputError
from closecast.core.schedule import NIGHTLY_SLOT
from closecast.tasks.reporting.events import UNHEALTHY_EVENT, UNHEALTHY_SHARE, WAITING_EVENT

if TYPE_CHECKING:
    from prefect.events.schemas.automations import AutomationCore, EventTrigger

BLOCK_NAME = "closecast-alerts"  # the custom-webhook block --notify-url saves
WEBHOOK_SLUG = "custom-webhook"
NIGHTLY_FLOW = "nightly"
LATE_WITHIN = timedelta(hours=3, minutes=30)  # the 18:30 slot + 3.5 h = 22:00 New York
FAILED_STATES = ("Failed", "Crashed", "TimedOut")
STARTED_STATES = ("Late", "Pending", "Running")
# How long the Prefect server waits for --notify-url to answer, per attempt: a
# slow receiver (30 s seen) must fit, and a hung one holds one of the server's
# two action workers no longer than this.
DELIVERY_TIMEOUT_S = 60.0

FAILED = "closecast: nightly failed"
LATE = "closecast: nightly late"
UNHEALTHY = "closecast: report unhealthy"
WAITING = "closecast: challenger waits for review"

_RUN = "{{ flow_run.name }} (flow run {{ flow_run.id }})"
# One firing of a trigger: the same in each redelivery of its alert.
_KEY = "firing.id|string"
_BLOCK = re.compile(r"^[a-z0-9-]+/[^/\s]+$")


@dataclass(frozen=True)
class NotifyTarget:
    """Where alerts go: a webhook URL (saved as a block), or an existing notification block."""

    url: str | None = None
    block: str | None = None  # "<block type slug>/<block name>", e.g. slack-webhook/my-team

    def describe(self) -> str:
        return f"POST {self.url}" if self.url else f"block {self.block}"


def check_notify_url(url: str) -> str:
    """An http(s) URL with a host and no spaces, or InputError naming it."""
    problem = ""
    parts = urllib.parse.urlsplit(url)
    if any(c.isspace() for c in url):
        problem = "it contains spaces"
    elif parts.scheme not in ("http", "https"):
        problem = "expected http:// or https://"
    elif not parts.hostname:
        problem = "no host"
    elif "{" in url or "}" in url:
        problem = "braces are not allowed"
    else:
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number in range
        except ValueError:
            problem = "bad port"
    if problem:
        raise InputError(f"invalid --notify-url {url!r}: {problem}")
    return url


def notify_target(url: str | None, block: str | None) -> NotifyTarget | None:
    """The target the flags name (None: neither given), checked before anything starts."""
    if url is not None and block is not None:
        raise InputError("give --notify-url or --notify-block, not both")
    if url is not None:
        return NotifyTarget(url=check_notify_url(url))
    if block is not None:
        if not _BLOCK.match(block):
            raise InputError(
                f"invalid --notify-block {block!r}: expected TYPE/NAME, e.g. slack-webhook/my-team"
            )
        return NotifyTarget(block=block)
    return None


def alert_automations(
    block_id: UUID, late_within: timedelta = LATE_WITHIN, webhook: bool = False
) -> list["AutomationCore"]:
    """The four automations (Prefect `AutomationCore`s), notifying through `block_id`.

    Args:
        block_id: The notification block.
        late_within: How long a started nightly may take to reach a final state.
        webhook: The block is the `--notify-url` webhook, which posts the body as
            it is: the body is then the JSON document of the alert (`webhook_json`).
    """
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    nightly = ResourceSpecification(
        {"prefect.resource.role": "flow", "prefect.resource.name": NIGHTLY_FLOW}
    )
    a_flow_run = ResourceSpecification({"prefect.resource.id": "prefect.flow-run.*"})
    late_text = _duration(late_within)

    def notify(subject: str, body: str) -> SendNotification:
        if webhook:
            body = webhook_json(subject, body)
        return SendNotification(block_document_id=block_id, subject=subject, body=body)

    failed = AutomationCore(
        name=FAILED,
        description="A nightly flow run ended Failed, Crashed or TimedOut.",
        trigger=EventTrigger(
            match=a_flow_run,
            match_related=nightly,
            expect={f"prefect.flow-run.{s}" for s in FAILED_STATES},
            for_each={"prefect.resource.id"},
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            notify(
                # The run's name starts with the flow's ("nightly AAPL +2 as_of=..."): not twice.
                "closecast nightly failed: {{ flow_run.name }}",
                f"The nightly {_RUN} ended {{{{ flow_run.state.name }}}}: "
                "{{ flow_run.state.message }}",
            )
        ],
    )
    late = AutomationCore(
        name=LATE,
        description=(
            f"A nightly flow run reached no final state within {late_text} of going "
            f"Late, Pending or Running: {NIGHTLY_SLOT.at(after=late_within)} for the "
            f"{NIGHTLY_SLOT.time:%H:%M} slot."
        ),
        trigger=EventTrigger(
            match=a_flow_run,
            match_related=nightly,
            after={f"prefect.flow-run.{s}" for s in STARTED_STATES},
            expect={f"prefect.flow-run.{s}" for s in ("Completed", *FAILED_STATES)},
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=late_within,
        ),
        actions=[
            notify(
                f"closecast: no nightly completed within {late_text}",
                f"The nightly {_RUN}, due {{{{ flow_run.expected_start_time }}}}, has not "
                f"completed {late_text} after it went "
                "{{ event.event|replace('prefect.flow-run.', '') }}; it is "
                "{{ flow_run.state.name }}. No report for this session yet.",
            )
        ],
    )
    unhealthy = AutomationCore(
        name=UNHEALTHY,
        description=(
            f"More than {UNHEALTHY_SHARE:.0%} of the tickers of a nightly's report are not ok."
        ),
        trigger=on_nightly_event(UNHEALTHY_EVENT, "closecast.report.*"),
        actions=[
            notify(
                "closecast: {{ event.payload.not_ok }} of {{ event.payload.tickers }} tickers not ok",
                f"The report as_of {{{{ event.payload.as_of }}}} of the nightly {_RUN}: "
                "{{ event.payload.not_ok }} of {{ event.payload.tickers }} tickers "
                "({{ event.payload.share_pct }}%) not ok: {% for ticker, status in "
                "event.payload.statuses.items() %}{{ ticker }} ({{ status }}){% if not loop.last %}, "
                "{% endif %}{% endfor %}. {{ event.payload.report }}",
            )
        ],
    )
    waiting = AutomationCore(
        name=WAITING,
        description=(
            "A nightly registered a version the gate recommends promoting, and promotion is "
            "a person's (--no-promote, or a candidates model): it waits for review."
        ),
        trigger=on_nightly_event(WAITING_EVENT, "closecast.model.*"),
        actions=[
            notify(
                "closecast: {{ event.payload.model }} v{{ event.payload.version }} waits for review",
                f"The nightly {_RUN} registered {{{{ event.payload.model }}}} "
                "v{{ event.payload.version }}; the gate recommends promoting it: "
                "{{ event.payload.recommendation }}. To promote it: "
                "{{ event.payload.command }}. Its card: {{ event.payload.card }}",
            )
        ],
    )
    return [failed, late, unhealthy, waiting]


def on_nightly_event(event: str, resources: str) -> "EventTrigger":
    """Fire once per resource (matching `resources`) on each `event` a nightly run emits."""
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    return EventTrigger(
        match={"prefect.resource.id": resources},
        match_related=ResourceSpecification(
            {"prefect.resource.role": "flow", "prefect.resource.name": NIGHTLY_FLOW}
        ),
        expect={event},
        for_each={"prefect.resource.id"},
        posture=Posture.Reactive,
        threshold=1,
        within=timedelta(0),
    )


def webhook_json(subject: str, body: str) -> str:
    """A template rendering `{"subject": ..., "body": ..., "key": ...}` from the subject
    and body templates: Prefect's webhook block knows only `{{subject}}` and `{{body}}`,
    so the key rides in the body, JSON-escaped by Jinja's `tojson`."""
    return (
        f"{{% set subject %}}{subject}{{% endset %}}{{% set body %}}{body}{{% endset %}}"
        f'{{{{ {{"subject": subject, "body": body, "key": {_KEY}}}|tojson }}}}'
    )


def _duration(delta: timedelta) -> str:
    """`3 h 30 min`, `10 s`."""
    seconds = int(delta.total_seconds())
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{hours} h" if hours else "", f"{minutes} min" if minutes else ""]
    parts.append(f"{seconds} s" if seconds or not any(parts) else "")
    return " ".join(p for p in parts if p)


def notification_block_id(client: Any, target: NotifyTarget) -> UUID:
    """The block alerts go through: the webhook saved under `closecast-alerts`, or the named
    block, which must exist and be able to notify.

    Raises:
        InputError: the named block does not exist or cannot send notifications.
    """
    if target.url is not None:
        from prefect.blocks.notifications import CustomWebhookNotificationBlock

        webhook = CustomWebhookNotificationBlock(
            name="closecast",
            url=target.url,
            method="POST",
            form_data="{{body}}",  # a string: sent as it is, the JSON of webhook_json
            headers={"Content-Type": "application/json"},
            # None is the field's default; given here because Prefect declares it as
            # `Field(None, ...)`, a positional default that type checkers read as required.
            cookies=None,
            timeout=DELIVERY_TIMEOUT_S,
        )
        saved = webhook.save(BLOCK_NAME, overwrite=True)
        # `save` returns a coroutine only when called from async code; this is sync.
        assert isinstance(saved, UUID)
        return saved
    from prefect.exceptions import ObjectNotFound

    assert target.block is not None
    slug, name = target.block.split("/", 1)
    try:
        document = client.read_block_document_by_name(name, slug, include_secrets=False)
    except ObjectNotFound:
        raise InputError(
            f"no Prefect block {target.block}: create it first (prefect block create {slug})"
        ) from None
    capabilities = document.block_schema.capabilities if document.block_schema else []
    if "notify" not in capabilities:
        raise InputError(f"--notify-block {target.block} cannot send notifications")
    return UUID(str(document.id))


def install_alerts(target: NotifyTarget, late_within: timedelta = LATE_WITHIN) -> list[UUID]:
    """Create or update (by name) the four automations on the current Prefect API.

    Returns:
        Their ids, in the order failed, late, unhealthy, waiting.
    """
    from prefect.client.orchestration import get_client

    ids = []
    with get_client(sync_client=True) as client:
        block_id = notification_block_id(client, target)
        webhook = target.url is not None
        for automation in alert_automations(block_id, late_within, webhook):
            same_name = client.read_automations_by_name(automation.name)
            if not same_name:
                ids.append(client.create_automation(automation))
                continue
            keep, *duplicates = same_name
            client.update_automation(keep.id, automation)
            for duplicate in duplicates:
                client.delete_automation(duplicate.id)
            ids.append(keep.id)
    return ids
