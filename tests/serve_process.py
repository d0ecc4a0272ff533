"""`closecast serve`'s own code path on an existing Prefect API, run as a process by the tests,
with a config the CLI cannot make (hidden 8, 2 epochs) and optionally a schedule seconds apart.

    python -m tests.serve_process CONFIG_JSON [RRULE | soon:LEAD_S]

`soon:LEAD_S` gives the nightly two slots, LEAD_S and LEAD_S + 10 seconds from the moment
the flows are imported (the slow part of starting), so none falls while serve starts.
"""

import sys
from datetime import UTC, datetime, timedelta

import flows.backfill  # imported before the slots are placed
import flows.nightly
import flows.predict  # noqa: F401
from closecast.serve import serve_deployments
from core.config import PipelineConfig

SLOT_INTERVAL_S = 10


def slots(spec: str) -> str:
    """The RRULE of `spec`: as given, or two slots SLOT_INTERVAL_S apart from now + LEAD_S."""
    if not spec.startswith("soon:"):
        return spec
    start = datetime.now(UTC) + timedelta(seconds=float(spec.removeprefix("soon:")))
    return f"DTSTART:{start:%Y%m%dT%H%M%S}\nRRULE:FREQ=SECONDLY;INTERVAL={SLOT_INTERVAL_S};COUNT=2"


if __name__ == "__main__":
    from prefect.schedules import RRule

    config = PipelineConfig.model_validate_json(sys.argv[1])
    schedule = RRule(slots(sys.argv[2]), timezone="UTC") if len(sys.argv) > 2 else None
    serve_deployments(config, port=0, schedule=schedule)
