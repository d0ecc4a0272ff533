"""The nightly flow: fetch → validate → features → windows → train → evaluate →
register/promote → predict → report."""

from dataclasses import dataclass
from pathlib import Path

from prefect import flow

from closecast.core.config import PipelineConfig
from closecast.flows.deployment import served_config
from closecast.flows.fetch import fetch
from closecast.flows.session import (
    forecast_session,
    prepare_session,
    require_windows,
    run_name,
    schedule_slot,
    slot_as_of,
)


@dataclass(frozen=True)
class NightlyResult:
    """What a nightly run produced."""

    report_path: Path
    run_id: str
    version: str
    predicting_version: str
    promotion: str
    metrics: dict[str, float]


@flow(name="nightly", flow_run_name=lambda: run_name("nightly"))
def nightly(config: PipelineConfig) -> NightlyResult:
    """Retrain on everything up to as_of, gate the new version, predict the next session.

    A scheduled run with no as_of computes the session of its slot, however late it starts.

    Args:
        config: the pipeline's settings (home, data, model); e.g. set data.as_of or data.tickers.
    """
    config = served_config(config)  # a deployment run inherits what its config leaves out
    config = slot_as_of(config, schedule_slot())
    fetched = fetch(config.data, config.home)
    inputs = prepare_session(config, config.data.as_of, fetched)
    require_windows(config, inputs)  # nothing to predict: train nothing, register nothing
    session = forecast_session(config, inputs, "nightly", register=True, from_registry=True)
    return NightlyResult(
        session.report_path,
        session.run_id,
        session.model.version,
        session.predicting_version,
        session.promotion,
        session.model.metrics,
    )
