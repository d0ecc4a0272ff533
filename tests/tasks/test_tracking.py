import json
from datetime import date
from pathlib import Path

import mlflow.types.utils
import numpy as np
import pandas as pd
import pytest
from mlflow.data.digest_utils import compute_pandas_digest
from mlflow.data.pandas_dataset import from_pandas

from closecast.core.config import PipelineConfig
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.mlflow.runs import log_metrics, tracking_run
from closecast.tasks.registry.gate import Decision
from closecast.tasks.reporting.tracking import (
    SCHEMA_SAMPLE_ROWS,
    log_training_data,
    name_run,
    prices_table,
    run_note,
    run_title,
    table_digest,
)


def test_prices_table_is_long_and_its_digest_covers_every_row() -> None:
    """The training data is one long table; changing any row, even past 10,000, changes its digest."""
    index = pd.date_range("2000-01-03", periods=6000, freq="D", name="date")
    frames = {
        t: pd.DataFrame({"close": np.linspace(1, 2, 6000), "volume": 1.0}, index=index)
        for t in ("BBB", "AAA")
    }
    table = prices_table(frames)
    assert list(table.columns) == ["ticker", "date", "close", "volume"]
    assert len(table) == 12_000 and table["ticker"].iloc[0] == "AAA"
    changed = table.copy()
    changed.loc[11_999, "close"] += 0.01
    assert table_digest(table) == table_digest(table.copy())
    assert table_digest(changed) != table_digest(table)
    assert len(table_digest(table)) <= 36
    # MLflow's default digest looks at the first 10,000 rows only: why closecast computes its own
    assert compute_pandas_digest(changed) == compute_pandas_digest(table)


def test_run_title_names_the_kind_the_date_the_version_and_the_decision() -> None:
    """`nightly 2018-12-31 · v4 rejected`: what the runs list shows after registration."""
    assert run_title("nightly", date(2018, 12, 31), "4", "rejected") == (
        "nightly 2018-12-31 · v4 rejected"
    )


def test_run_note_is_one_paragraph_of_tickers_skills_and_decision() -> None:
    """Tickers, skill with both RMSEs in % of the last close, interval skill and the decision;
    a missing metric reads n/a, and a long universe is cut after ten tickers."""
    decision = Decision(False, "rejected", "interval score 0.02 does not beat champion v1's")
    metrics = {"skill": 0.0123, "test_rmse": 0.0091, "naive_rmse": 0.00921}
    note = run_note("nightly", date(2018, 12, 31), ["AAA", "BBB"], metrics, "4", decision)
    assert note == (
        "Nightly run for as_of 2018-12-31 on 2 tickers (AAA, BBB). On its test span the "
        "model's skill against the naive forecast is +0.0123 (test_rmse 0.9100% vs "
        "naive_rmse 0.9210% of the last close) and its interval_skill_95 against EWMA "
        "intervals is n/a. Registered as v4: rejected — interval score 0.02 does not beat "
        "champion v1's."
    )
    many = run_note("nightly", date(2018, 12, 31), [f"T{i}" for i in range(12)], {}, "1", decision)
    assert "on 12 tickers (T0, T1, T2, T3, T4, T5, T6, T7, T8, T9, …)" in many
    assert "\n" not in many


def test_name_run_renames_the_run_and_describes_it(mlflow_home: Path) -> None:
    """After registration the run's name carries the version and decision, and its
    description (mlflow.note.content) the summary read from the run's own tags and metrics."""
    config = PipelineConfig(home=mlflow_home)
    client = configure_mlflow(config.mlflow_uri)
    with tracking_run(config, "nightly 2018-12-31", {"tickers": "AAA,BBB"}) as run_id:
        log_metrics(client, run_id, {"skill": -0.5, "interval_skill_95": 0.25})
        decision = Decision(True, "champion", "first version")
        name_run(config.mlflow_uri, run_id, "nightly", date(2018, 12, 31), "1", decision)
    run = client.get_run(run_id)
    assert run.info.run_name == "nightly 2018-12-31 · v1 champion"
    note = run.data.tags["mlflow.note.content"]
    assert note.startswith("Nightly run for as_of 2018-12-31 on 2 tickers (AAA, BBB).")
    assert "skill against the naive forecast is -0.5000" in note
    assert "interval_skill_95 against EWMA intervals is +0.2500" in note
    assert note.endswith("Registered as v1: champion — first version.")


def test_training_data_carries_mlflows_schema_without_reading_each_value(
    mlflow_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The dataset input's schema and profile are the ones MLflow infers (a column with a gap
    is not required), found without MLflow's Python loop over every value of the table."""
    index = pd.date_range("2020-01-01", periods=80, freq="D", name="date")
    frames = {
        t: pd.DataFrame({"close": np.linspace(1, 2, 80), "volume": 1.0}, index=index)
        for t in ("AAA", "BBB")
    }
    frames["BBB"].iloc[5, 1] = np.nan
    expected = from_pandas(prices_table(frames), source="/prices").to_dict()
    value_by_value = mlflow.types.utils._infer_required

    def sample_only(values: object) -> bool:
        assert len(values) <= SCHEMA_SAMPLE_ROWS, f"{len(values)} values read one by one"  # type: ignore[arg-type]
        return value_by_value(values)

    monkeypatch.setattr(mlflow.types.utils, "_infer_required", sample_only)
    config = PipelineConfig(home=mlflow_home)
    client = configure_mlflow(config.mlflow_uri)
    with tracking_run(config, "nightly 2020-03-20", {}) as run_id:
        log_training_data(client, run_id, frames, "/prices")
    [data] = client.get_run(run_id).inputs.dataset_inputs
    assert json.loads(data.dataset.schema) == json.loads(expected["schema"])
    assert json.loads(data.dataset.profile) == json.loads(expected["profile"])
    volume = json.loads(data.dataset.schema)["mlflow_colspec"][-1]
    assert volume == {"type": "double", "name": "volume", "required": False}
