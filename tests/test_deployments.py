from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from closecast.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def deployments() -> dict[str, dict]:
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    return {d["name"]: d for d in spec["deployments"]}


def test_prefect_yaml_declares_the_three_deployments_on_a_process_pool(
    deployments: dict[str, dict],
) -> None:
    """nightly on the weeknight New York cron; predict and backfill manual; one work pool."""
    assert set(deployments) == {"nightly", "predict", "backfill"}
    (schedule,) = deployments["nightly"]["schedules"]
    assert schedule["cron"] == "30 18 * * 1-5"
    assert schedule["timezone"] == "America/New_York"
    assert "schedules" not in deployments["predict"] and "schedules" not in deployments["backfill"]
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"closecast"}


@pytest.mark.parametrize(
    ("name", "extra"),
    [("nightly", {}), ("predict", {}), ("backfill", {"start": "2024-01-02", "end": "2024-01-05"})],
)
def test_each_entrypoint_is_a_flow_that_accepts_the_deployment_parameters(
    deployments: dict[str, dict], name: str, extra: dict[str, str]
) -> None:
    """The entrypoint loads as the flow of that name; its parameters validate."""
    deployment = deployments[name]
    flow = load_flow_from_entrypoint(str(ROOT / deployment["entrypoint"]))
    assert flow.name == name
    validated = flow.validate_parameters({**deployment["parameters"], **extra})
    assert isinstance(validated["config"], PipelineConfig)
    assert validated["config"].data.tickers == ["AAPL", "MSFT", "NVDA"]
