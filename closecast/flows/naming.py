"""Names and slots of flow runs: what a run is called in the UI, and which session a
scheduled run is for."""

from datetime import date, datetime
from uuid import UUID

from closecast.core.calendar import session_closed_by
from closecast.core.config import PipelineConfig
from closecast.core.statuses import ticker_label

LATEST = "as_of=latest"  # a flow run's name before its as_of is resolved


def run_name(kind: str) -> str:
    """`nightly AAPL +2 as_of=2024-05-01`: the flow, the tickers and the as_of, for the UI.

    A scheduled run is named for its slot's session from the start, so even one
    that fails before reading the store says which session it was for. Else,
    with no as_of given, the name says `as_of=latest` until `name_flow_run`
    puts in the session the run resolved.
    """
    from prefect.runtime import flow_run

    config = slot_as_of(flow_run.parameters["config"], schedule_slot())
    as_of = config.data.as_of
    return f"{kind} {ticker_label(config.data.tickers)} " + (f"as_of={as_of}" if as_of else LATEST)


def name_flow_run(as_of: date) -> None:
    """Put the resolved as_of into the current flow run's name in place of `as_of=latest`.

    A name without it (an as_of given, a backfill session) or no flow run is left alone.
    """
    from prefect.runtime import flow_run

    name = flow_run.name
    if name and LATEST in name:
        rename_flow_run(name.replace(LATEST, f"as_of={as_of.isoformat()}"))


def rename_flow_run(name: str) -> None:
    """Rename the current flow run, e.g. after its outcome once known
    (`nightly 2018-12-19 · v5 champion`, the name its MLflow run gets); outside one, nothing."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    with get_client(sync_client=True) as client:
        client.update_flow_run(UUID(flow_run.id), name=name)


def schedule_slot() -> datetime | None:
    """The schedule slot of the current flow run when Prefect's scheduler created it, else None.

    A run started by hand (`closecast run`, `prefect deployment run`) is not
    auto-scheduled; a late scheduled run keeps its slot however late it starts.
    """
    from prefect.context import FlowRunContext
    from prefect.runtime import flow_run

    context = FlowRunContext.get()
    if context is None or context.flow_run is None or not context.flow_run.auto_scheduled:
        return None
    slot: datetime = flow_run.scheduled_start_time
    return slot


def slot_as_of(config: PipelineConfig, slot: datetime | None) -> PipelineConfig:
    """The config a run computes: as_of as given; else the session the schedule slot belongs
    to (the last XNYS session closed by then); else none, which means the latest."""
    if config.data.as_of is not None or slot is None:
        return config
    as_of = session_closed_by(slot)
    return config.model_copy(update={"data": config.data.model_copy(update={"as_of": as_of})})


def flow_run_id() -> str:
    """The current flow run's id, '' outside one (a run's MLflow tags link to it)."""
    from prefect.runtime import flow_run

    return str(flow_run.id or "")
