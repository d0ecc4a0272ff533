from pathlib import Path

import pytest
import yaml
from prefect.flows import load_flow_from_entrypoint

from closecast.core.config import PipelineConfig
from closecast.core.schedule import NIGHTLY_SLOT

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
    assert "schedules" not in deployments["predict"] and "schedules" not in deployments["backfill"]
    assert {d["work_pool"]["name"] for d in deployments.values()} == {"closecast"}


def test_prefect_yaml_schedules_nightly_on_the_slot_the_code_uses(
    deployments: dict[str, dict],
) -> None:
    """prefect.yaml's nightly schedule is NIGHTLY_SLOT (core/schedule.py), the one `serve`,
    `status` and the late alert use, and its description names that slot."""
    from closecast.cli.serve import NIGHTLY_DESCRIPTION

    (schedule,) = deployments["nightly"]["schedules"]
    assert (schedule["cron"], schedule["timezone"]) == (NIGHTLY_SLOT.cron, NIGHTLY_SLOT.timezone)
    assert schedule["active"] is True
    assert deployments["nightly"]["description"] == NIGHTLY_DESCRIPTION


def test_the_nightly_description_names_the_schedules_time_zone() -> None:
    """The UI shows the cron without its zone beside a next run in browser time: `serve`'s
    nightly deployment (and prefect.yaml's, above) says the time and the zone it is in."""
    from closecast.cli.serve import NIGHTLY_DESCRIPTION, build_deployments

    nightly = build_deployments(PipelineConfig(data={"source": "sample"}))[0]
    assert nightly.name == "nightly"
    assert nightly.description == NIGHTLY_DESCRIPTION
    assert "18:30 New York time (America/New_York" in NIGHTLY_DESCRIPTION


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


def _field_schemas(schema: dict) -> dict[str, dict]:
    """`section.field` -> its JSON schema, for every field of the config's models."""
    defs = schema.get("definitions") or schema.get("$defs") or {}
    sections = {"DataConfig": "data", "WindowConfig": "windows", "LSTMConfig": "lstm"}
    sections |= {"TrainConfig": "train", "PipelineConfig": "config"}
    return {
        f"{sections[model]}.{name}": field
        for model, spec in defs.items()
        if model in sections
        for name, field in spec.get("properties", {}).items()
    }


HAND_SET = [
    "data.source", "data.tickers", "data.as_of", "config.home", "config.tracking_uri",
    "windows.window", "windows.features", "lstm.hidden_size", "lstm.dropout",
    "train.epochs", "train.batch_size", "train.learning_rate", "train.device", "train.seed",
]  # fmt: skip


def test_run_form_describes_every_field_a_person_sets() -> None:
    """Each hand-set field of the Prefect run form has a one-line description with an example
    or the values it takes."""
    from prefect.utilities.callables import parameter_schema

    from closecast.flows.nightly import nightly

    fields = _field_schemas(parameter_schema(nightly).model_dump())
    for name in HAND_SET:
        description = fields[name].get("description", "")
        assert description and "\n" not in description, name
        assert "e.g." in description or ":" in description or " or " in description, name
    assert "empty = the latest session" in fields["data.as_of"]["description"]


@pytest.mark.parametrize("name", ["nightly", "predict", "backfill"])
def test_run_form_describes_every_top_level_parameter(name: str) -> None:
    """config, and backfill's start, end, retrain_every and register_versions, each carry a
    one-line description in the run form (from the flow docstring's Args section)."""
    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(f"{ROOT}/closecast/flows/{name}.py:{name}")
    properties = parameter_schema(flow).properties
    backfill_only = {"start", "end", "retrain_every", "register_versions"}
    assert set(properties) == {"config"} | (backfill_only if name == "backfill" else set())
    for parameter, field in properties.items():
        description = field.get("description") or ""
        assert description and "\n" not in description, parameter


@pytest.mark.parametrize(
    ("source", "valid"),
    [("yahoo", False), ("csv:", False), ("yfinance", True), ("sample", True), ("csv:/d", True)],
)
def test_run_form_refuses_a_source_typo_before_submitting(source: str, valid: bool) -> None:
    """The form's schema carries the source pattern, so Prefect refuses `yahoo` up front."""
    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import is_valid

    from closecast.flows.nightly import nightly

    schema = parameter_schema(nightly).model_dump()
    assert is_valid({"config": {"data": {"source": source}}}, schema) is valid


def test_a_run_config_overrides_the_deployment_config_only_in_the_fields_it_sets(
    tmp_path: Path,
) -> None:
    """What Prefect validates from a run's partial `config` knows which fields were given;
    laid over the deployment's config, the rest (home, source, model) stays the deployment's."""
    from datetime import date

    from closecast.core.config import (
        SAMPLE_TICKERS,
        DataConfig,
        LSTMConfig,
        TrainConfig,
        overlay_config,
    )

    flow = load_flow_from_entrypoint(str(ROOT / "closecast" / "flows" / "nightly.py:nightly"))
    served = PipelineConfig(
        home=tmp_path / "served",
        data=DataConfig(source="csv:/data", tickers=["AAA"], as_of=date(2021, 3, 9)),
        lstm=LSTMConfig(hidden_size=8),
        train=TrainConfig(epochs=2, batch_size=64),
    )

    def run_with(config: dict) -> PipelineConfig:
        return overlay_config(flow.validate_parameters({"config": config})["config"], served)

    merged = run_with({"data": {"as_of": "2021-03-10"}, "train": {"epochs": 1}})
    assert merged.home == tmp_path / "served"
    assert (merged.data.source, merged.data.tickers) == ("csv:/data", ["AAA"])
    assert merged.data.as_of == date(2021, 3, 10)
    assert (merged.train.epochs, merged.train.batch_size, merged.lstm.hidden_size) == (1, 64, 8)
    assert run_with({"data": {"as_of": None}}).data.as_of is None  # set to empty: the latest
    sample = run_with({"data": {"source": "sample"}}).data  # sample's own tickers, not AAA
    assert (sample.source, sample.tickers) == ("sample", list(SAMPLE_TICKERS))
    assert run_with(served.model_dump(mode="json")) == served


def _descriptions(schema: object) -> list[str]:
    """Every `description` in a JSON schema, however deep."""
    if isinstance(schema, dict):
        own = [schema["description"]] if isinstance(schema.get("description"), str) else []
        return own + [d for value in schema.values() for d in _descriptions(value)]
    if isinstance(schema, list):
        return [d for value in schema for d in _descriptions(value)]
    return []


@pytest.mark.parametrize("name", ["nightly", "predict", "backfill"])
def test_run_form_help_texts_render_as_written(name: str) -> None:
    """The form renders descriptions as markdown: outside code spans none holds `<` or `>`
    (an HTML tag to the renderer, `<home>` vanished), `*` or a bare `_word_`; the tracking
    URI's default keeps its `<home>` inside a code span."""
    import re

    from prefect.utilities.callables import parameter_schema

    flow = load_flow_from_entrypoint(f"{ROOT}/closecast/flows/{name}.py:{name}")
    descriptions = _descriptions(parameter_schema(flow).model_dump())
    assert len(descriptions) > 5
    for description in descriptions:
        prose = re.sub(r"`[^`]*`", "", description)
        assert not re.search(r"[<>*]|(^|\s)_\w", prose), description
    uri = _field_schemas(parameter_schema(flow).model_dump())["config.tracking_uri"]
    assert "`sqlite:///<home>/mlflow.db`" in uri["description"]


def test_as_of_is_typed_as_yyyy_mm_dd_in_the_form_and_read_as_a_date() -> None:
    """The form draws as_of as text (YYYY-MM-DD) or latest, not a calendar; backfill's start
    and end as text; Prefect's check refuses `2024-5-1` before a run starts, and the flow
    still reads the date (and the empty value) as the CLI's --as-of does."""
    from datetime import date

    from prefect.utilities.callables import parameter_schema
    from prefect.utilities.schema_tools.validation import is_valid

    nightly = load_flow_from_entrypoint(f"{ROOT}/closecast/flows/nightly.py:nightly")
    schema = parameter_schema(nightly).model_dump()
    as_of = _field_schemas(schema)["data.as_of"]
    assert as_of["anyOf"] == [
        {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$", "title": "YYYY-MM-DD"},
        {"type": "null", "title": "latest"},
    ]
    assert "format" not in str(as_of)  # format: date is what draws the calendar
    assert is_valid({"config": {"data": {"as_of": "2024-05-01"}}}, schema)
    assert is_valid({"config": {"data": {"as_of": None}}}, schema)
    assert not is_valid({"config": {"data": {"as_of": "2024-5-1"}}}, schema)
    read = nightly.validate_parameters({"config": {"data": {"as_of": "2024-05-01"}}})
    assert read["config"].data.as_of == date(2024, 5, 1)

    backfill = load_flow_from_entrypoint(f"{ROOT}/closecast/flows/backfill.py:backfill")
    properties = parameter_schema(backfill).model_dump()["properties"]
    for field in ("start", "end"):
        assert properties[field]["type"] == "string" and "format" not in properties[field]
        assert properties[field]["pattern"] == r"^\d{4}-\d{2}-\d{2}$"
    read = backfill.validate_parameters({"config": {}, "start": "2024-01-02", "end": "2024-01-05"})
    assert (read["start"], read["end"]) == (date(2024, 1, 2), date(2024, 1, 5))
