import ast
import itertools
import logging
import math
import platform
import re
import sys
from dataclasses import dataclass
from datetime import date
from importlib.metadata import packages_distributions, version
from pathlib import Path
from urllib.parse import urlsplit

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import closecast.tasks.registry.logged_model
import closecast.tasks.reporting.steps
from closecast.core.config import MODEL_NAME, PipelineConfig
from closecast.flows.nightly import NightlyResult, nightly
from closecast.models.encoding import Encoding
from closecast.models.forecaster import OUTPUT_COLUMNS, Forecaster
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.tasks.data.store import load_prices
from closecast.tasks.data.validate import validate_prices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.evaluation import Evaluation, score_distribution
from closecast.tasks.modeling.features import compute_features
from closecast.tasks.modeling.prediction import predict_next
from closecast.tasks.modeling.windows import WindowSet, build_windows, window_columns
from closecast.tasks.registry.aliases import (
    AliasMove,
    alias_history,
    current_aliases,
    discard_run_versions,
)
from closecast.tasks.registry.logged_model import (
    environment_mismatches,
    example_input,
    load_forecaster,
    load_pyfunc,
    log_forecaster,
    signature,
)
from closecast.tasks.registry.register import (
    list_tickers,
    register_model,
    run_url,
    selection_end,
)
from tests.fixtures import write_ticker_csvs
from tests.mlflow_fixtures import new_home, spoil_training

TICKERS = ["AAA", "BBB"]


def test_register_refuses_nan_metrics_before_touching_mlflow(tmp_path: Path) -> None:
    """NaN metrics fail registration before any registry call: nothing is created."""
    config = PipelineConfig(home=tmp_path / "home")
    module = LSTMForecaster(LSTMConfig(hidden_size=4, distribution="none"), n_features=1)
    forecaster = Forecaster(module, Encoding(features=("close",), target="log_return"), 10)
    metrics = {"test_interval_score": 0.02, "test_rmse": float("nan"), "naive_rmse": 0.01}
    evaluation = Evaluation(metrics, pd.DataFrame(), pd.DataFrame())
    with pytest.raises(ValueError, match="test_rmse is nan"):
        register_model(config.registry, "0" * 32, forecaster, evaluation, None, pd.DataFrame())  # type: ignore[arg-type]
    assert not config.home.exists()


def _forecaster(features: tuple[str, ...]) -> Forecaster:
    module = LSTMForecaster(
        LSTMConfig(hidden_size=4, distribution="none"), n_features=len(features)
    )
    return Forecaster(module, Encoding(features=features), 10)


def test_signature_lists_the_models_own_columns_under_each_accepted_name() -> None:
    """Built per model: a close-only model lists no volume; every name is optional."""
    close_only = signature(_forecaster(("close",)))
    names = close_only.inputs.input_names()
    assert {n.lower() for n in names} == {"ticker", "symbol", "name", "date", "close"}
    assert {"Ticker", "Date", "Close"} <= set(names)
    assert close_only.inputs.required_input_names() == []
    default = signature(_forecaster(("close", "volume", "open")))
    assert {"volume", "Volume", "open", "Open"} <= set(default.inputs.input_names())
    assert not {"high", "low"} & {n.lower() for n in default.inputs.input_names()}
    assert default.outputs.input_names() == list(OUTPUT_COLUMNS)


def test_example_input_is_one_tickers_rows_in_the_models_columns() -> None:
    """The logged example stays small (one ticker) and shows only what the model reads."""
    rows = pd.DataFrame(
        {
            "ticker": ["BBB", "AAA", "AAA"],
            "date": pd.to_datetime(["2024-01-02"] * 3),
            "open": 1.0,
            "high": 1.0,
            "low": 1.0,
            "close": [1.0, 2.0, 3.0],
            "volume": 10,
        }
    )
    example = example_input(rows, _forecaster(("close",)))
    assert list(example.columns) == ["ticker", "date", "close"]
    assert example["close"].tolist() == [2.0, 3.0]


def test_predict_next_on_no_rows_returns_every_output_column() -> None:
    """No ticker to predict: an empty table with the same columns, the model untouched."""
    empty = predict_next(None, pd.DataFrame())  # type: ignore[arg-type]
    assert empty.empty
    assert list(empty.columns) == list(OUTPUT_COLUMNS)


def test_list_tickers_stays_short_for_a_large_universe() -> None:
    """A few tickers are listed in full; 505 are cut to the first 40 and a count."""
    assert list_tickers(["AAA", "BBB"]) == "AAA, BBB"
    many = [f"T{i:03d}" for i in range(505)]
    text = list_tickers(many)
    assert text.startswith("T000, T001") and text.endswith("T039, … (505 in all)")


@dataclass
class Scenario:
    """Four nightly runs against one registry, and what the registry held between them."""

    config: PipelineConfig
    client: MlflowClient
    first: NightlyResult  # good model, as_of 2021-01-08: v1 champion
    worse: NightlyResult  # spoiled weights, latest data: v2 rejected
    worse_report: pd.DataFrame
    manual: NightlyResult  # good model, promotion manual: v3
    report_before_failure: bytes
    before_failure: tuple[dict[str, str], list[AliasMove]]
    failure: BaseException  # good model whose report cannot be written
    after_failure: tuple[dict[str, str], list[AliasMove]]
    failed_run_id: str


@pytest.fixture(scope="module")
def scenario(
    prefect_harness: None, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Scenario:
    root = tmp_path_factory.mktemp("gate")
    folder = write_ticker_csvs(root / "csv", dict.fromkeys(TICKERS, 300))
    home = new_home(root / "home", request.getfixturevalue("mlflow_template"))
    config = PipelineConfig.model_validate(
        {
            "home": home,
            "data": {"source": f"csv:{folder}", "tickers": TICKERS},
            "lstm": {"hidden_size": 8},
            "train": {"epochs": 2, "batch_size": 64},
        }
    )
    early = config.model_copy(
        update={"data": config.data.model_copy(update={"as_of": date(2021, 1, 8)})}
    )
    client = configure_mlflow(config.mlflow_uri)  # tracking and registry both
    with pytest.MonkeyPatch.context() as patch:
        first = nightly(early)
        patch.setattr("closecast.tasks.modeling.training.train_model", spoil_training(0.5))
        worse = nightly(config)
    worse_report = pd.read_csv(worse.report_path)
    manual = nightly(config.model_copy(update={"promotion": "manual"}))
    report_before_failure = manual.report_path.read_bytes()
    before = (current_aliases(client), alias_history(client))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(closecast.tasks.reporting.steps, "write_report", _disk_full)
        with pytest.raises(OSError) as failure:
            nightly(config)
    after = (current_aliases(client), alias_history(client))
    failed = client.search_runs(
        [client.get_experiment_by_name(config.experiment).experiment_id],
        "attributes.status = 'FAILED'",
    )
    return Scenario(
        config,
        client,
        first,
        worse,
        worse_report,
        manual,
        report_before_failure,
        before,
        failure.value,
        after,
        failed[0].info.run_id,
    )


def _disk_full(*args: object) -> None:
    raise OSError("No space left on device")


def _tags(scenario: Scenario, version: str) -> dict[str, str]:
    return dict(scenario.client.get_model_version(MODEL_NAME, version).tags)


def test_worse_challenger_is_rejected_and_champion_predicts(scenario: Scenario) -> None:
    """A worse model becomes challenger, is rejected, and the champion makes the report."""
    assert (scenario.first.version, scenario.first.promotion) == ("1", "champion")
    assert (scenario.worse.version, scenario.worse.promotion) == ("2", "rejected")
    assert scenario.worse.predicting_version == "1"
    tags = _tags(scenario, "2")
    assert tags["promotion"] == "rejected"
    assert tags["promotion_reason"].startswith("does not beat champion v1 on the ")
    assert set(scenario.worse_report["model_version"]) == {1}


def test_every_version_carries_a_model_card(scenario: Scenario) -> None:
    """A plain first line with the decision; both versions side by side with the champion's
    re-scored numbers; units; data span, tickers, source and hash; links to the MLflow run,
    the Prefect flow run and the plots. The registered model says how the gate works."""
    client = scenario.client
    first = client.get_model_version(MODEL_NAME, "1").description.replace("&emsp;", "")
    assert first.splitlines()[0] == "First version: champion."
    assert "| metric | v1 (this version) |" in first and "champion v" not in first.split("|")[2]
    card = client.get_model_version(MODEL_NAME, "2").description.replace("&emsp;", "")
    windows = len(_latest_test_windows(scenario.config))
    head = card.splitlines()[0]
    assert re.fullmatch(
        r"Rejected: does not beat champion v1 on the \d+ sessions after its selection: "
        r"interval score \+[0-9.]+% \(95% CI [−+][0-9.]+% to \+[0-9.]+%, p (=|<) [0-9.]+\)\.",
        head,
    ), head
    assert f"the table covers all {windows} test windows" in card
    assert "| metric | v2 (this version) | champion v1 | v2 − v1 |" in card
    row = next(line for line in card.splitlines() if line.startswith("| interval score, mean"))
    mine, theirs = (float(c.strip().removesuffix(" bp")) / 1e4 for c in row.split("|")[2:4])
    assert mine == pytest.approx(scenario.worse.metrics["test_interval_score"], abs=0.06e-4)
    reason = _tags(scenario, "2")["promotion_reason"]
    compared = float(re.search(r"champion v1's interval score ([0-9.]+)", reason).group(1))  # type: ignore[union-attr]
    assert theirs == pytest.approx(compared, abs=0.06e-4)  # the champion column: v1 re-scored
    assert "basis points of the last close" in card and "AAA, BBB" in card
    assert f"data_sha256 `{client.get_run(scenario.worse.run_id).data.tags['data_sha256']}`" in card
    assert re.search(r"Dates predicted: train \d{4}-\d\d-\d\d – \d{4}-\d\d-\d\d", card)
    run = client.get_run(scenario.worse.run_id)
    page = f"#/experiments/{run.info.experiment_id}/runs/{run.info.run_id}"
    assert f"- MLflow run: [{run.info.run_id}]({page})" in card
    assert f"/runs/flow-run/{run.data.tags['flow_run_id']})" in card
    assert f"]({page}/artifactPath/plots/" in card and ".png)" in card
    assert "- Fan charts (`plots/predicted_vs_actual_<ticker>.png`): every ticker with a " in card
    gate = client.get_registered_model(MODEL_NAME).description
    assert "A tie is rejected" in gate and "closecast promote" in gate
    assert "after the champion's own selection" in gate


def _latest_test_windows(config: PipelineConfig) -> WindowSet:
    """The test windows of a run on the latest data, rebuilt from the store."""
    prices = load_prices(config.prices_dir, TICKERS, None)
    validated = validate_prices(prices.frames)
    features = {
        t: compute_features(f, window_columns(config.windows.features))
        for t, f in validated.frames.items()
    }
    return build_windows(features, config.windows, prices.as_of).test


def test_champion_is_rescored_on_the_challengers_test_windows(scenario: Scenario) -> None:
    """The RMSE the gate compared is v1 scored on v2's test span, not v1's stored number."""
    reason = _tags(scenario, "2")["promotion_reason"]
    compared = float(re.search(r"champion v1's interval score ([0-9.]+)", reason).group(1))  # type: ignore[union-attr]
    config = scenario.config
    test = _latest_test_windows(config)
    configure_mlflow(config.mlflow_uri)
    champion = load_forecaster(f"models:/{MODEL_NAME}/1")
    rescored = score_distribution(champion.predict_distribution(test.windows, test.tickers), test)[
        "test_interval_score"
    ]
    assert compared == pytest.approx(rescored, abs=1e-6)
    stored = float(_tags(scenario, "1")["test_interval_score"])  # scored on 2020's windows
    assert not math.isclose(stored, rescored, rel_tol=1e-3)


def test_manual_mode_tags_manual_and_leaves_champion(scenario: Scenario) -> None:
    """With promotion manual the version is challenger, tagged manual; champion stays; its
    card opens with what the gate would have decided and the command that promotes it."""
    assert scenario.manual.promotion == "manual"
    assert _tags(scenario, "3")["promotion"] == "manual"
    assert _tags(scenario, "3")["promotion_reason"].endswith("run `closecast promote 3`")
    assert scenario.before_failure[0] == {"champion": "1", "challenger": "3"}
    first = scenario.client.get_model_version(MODEL_NAME, "3").description.splitlines()[0]
    assert re.fullmatch(
        r"Manual review: the gate (recommends promoting \(it beats v1 .*\); run closecast "
        r"promote 3|would keep champion v1 \(this version .*\); closecast promote 3 promotes "
        r"it anyway)\.",
        first,
    ), first
    assert "interval score " in first and "95% CI" in first


def test_the_gate_compares_the_windows_after_the_champions_selection(scenario: Scenario) -> None:
    """Each version records its last test date (test_end); the next run's gate pairs the two
    on the windows after it and logs the difference, its interval and p-value on its run."""
    config, client = scenario.config, scenario.client
    test = _latest_test_windows(config)
    first_end = _tags(scenario, "1")["test_end"]
    assert first_end == str(pd.Timestamp(_test_windows_at(config, date(2021, 1, 8)).max()).date())
    assert _tags(scenario, "2")["test_end"] == str(pd.Timestamp(test.target_dates.max()).date())
    fresh = int((pd.to_datetime(test.target_dates) > pd.Timestamp(first_end)).sum())
    metrics = client.get_run(scenario.worse.run_id).data.metrics
    assert metrics["gate_windows"] == fresh and 0 < fresh <= len(test)
    assert (
        metrics["gate_difference_low"]
        < metrics["gate_difference"]
        < metrics["gate_difference_high"]
    )
    assert metrics["gate_difference"] > 0 and 0.5 < metrics["gate_pvalue"] <= 1  # spoiled: worse
    assert f"after v1's selection on {first_end}" in _tags(scenario, "2")["promotion_reason"]


def test_a_version_without_test_end_was_selected_at_its_runs_as_of(scenario: Scenario) -> None:
    """Versions registered before the tag: the gate reads their run's as_of instead."""
    client = scenario.client
    end = _tags(scenario, "1")["test_end"]
    client.delete_model_version_tag(MODEL_NAME, "1", "test_end")
    try:
        as_of = client.get_run(scenario.first.run_id).data.tags["as_of"]
        assert selection_end(client, "1") == as_of == "2021-01-08"
    finally:
        client.set_model_version_tag(MODEL_NAME, "1", "test_end", end)
    assert selection_end(client, "1") == end


def _test_windows_at(config: PipelineConfig, as_of: date) -> np.ndarray:
    """The target dates of a run's test windows at `as_of`."""
    prices = load_prices(config.prices_dir, TICKERS, as_of)
    validated = validate_prices(prices.frames)
    features = {
        t: compute_features(f, window_columns(config.windows.features))
        for t, f in validated.frames.items()
    }
    return build_windows(features, config.windows, prices.as_of).test.target_dates


def test_every_alias_move_is_recorded(scenario: Scenario) -> None:
    """Each move names the version before and after and the run that made it."""
    history = scenario.before_failure[1]
    moves = [(m.alias, m.previous, m.version) for m in history]
    assert moves == [
        ("challenger", None, "1"),
        ("champion", None, "1"),
        ("challenger", "1", "2"),
        ("challenger", "2", "3"),
    ]
    runs = [scenario.first.run_id, scenario.first.run_id, scenario.worse.run_id]
    assert [m.by for m in history[:3]] == [f"nightly run {r}" for r in runs]
    assert history[1].reason.startswith("first version")
    assert all(a.at <= b.at for a, b in itertools.pairwise(history))


def test_failure_after_registration_leaves_the_registry_clean(scenario: Scenario) -> None:
    """A run failing after it registered and moved aliases: version gone, aliases restored."""
    assert "No space left" in str(scenario.failure)
    aliases, history = scenario.after_failure
    assert aliases == scenario.before_failure[0]
    assert discard_run_versions(scenario.client, scenario.failed_run_id) == []
    versions = scenario.client.search_model_versions(f"name='{MODEL_NAME}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2", "3"]
    restores = [m for m in history if m.by == f"rollback of failed run {scenario.failed_run_id}"]
    assert restores and all(m.version == aliases[m.alias] for m in restores)
    assert scenario.manual.report_path.read_bytes() == scenario.report_before_failure


def test_run_url_is_relative_unless_the_tracking_server_has_an_address() -> None:
    """SQLite: a link the MLflow UI resolves on its own page; http: the server's address first."""
    assert run_url("sqlite:///x.db", "1", "abc") == "#/experiments/1/runs/abc"
    assert (
        run_url("http://mlflow:5000/", "1", "abc", "plots/a.png")
        == "http://mlflow:5000/#/experiments/1/runs/abc/artifactPath/plots/a.png"
    )


def _imports_of(entry: Path) -> set[str]:
    """Top-level modules outside the standard library that `entry` imports, following
    every module of closecast.models and closecast.core it reaches (imports inside functions too)."""
    root, seen, todo, found = entry.parents[2], set(), [entry], set()
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                if name.split(".")[:2] not in (["closecast", "models"], ["closecast", "core"]):
                    if name != "closecast":  # the package's own __init__ (a version string)
                        found.add(name.split(".")[0])
                    continue
                module = root / name.replace(".", "/")
                todo += [
                    p for p in (module.with_suffix(".py"), module / "__init__.py") if p.is_file()
                ]
    return {name for name in found if name not in sys.stdlib_module_names}


def _requirements(uri: str) -> list[Requirement]:
    lines = (Path(mlflow.artifacts.download_artifacts(uri)) / "requirements.txt").read_text()
    return [Requirement(line) for line in lines.splitlines() if line.strip()]


def test_a_version_pins_every_distribution_its_code_imports(scenario: Scenario) -> None:
    """requirements.txt names each distribution the pyfunc's code imports, at the installed
    version (torch without its +cpu build tag, as pyproject.toml pins it)."""
    configure_mlflow(scenario.config.mlflow_uri)
    pinned = {canonicalize_name(r.name): r for r in _requirements(f"models:/{MODEL_NAME}/1")}
    distributions = packages_distributions()
    for module in sorted(_imports_of(Path(closecast.tasks.registry.logged_model.MODEL_CODE))):
        names = {canonicalize_name(d) for d in distributions.get(module, [module])}
        assert names & pinned.keys(), f"{module} ({', '.join(names)}) is not in {sorted(pinned)}"
    for name, requirement in pinned.items():
        assert str(requirement.specifier) == f"=={version(name).split('+')[0]}", requirement


def test_a_version_loads_without_mapping_every_installed_distribution(
    scenario: Scenario, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its pins are checked by name: MLflow's map of every installed distribution to its
    modules (1-2 s per process) is never built."""
    from mlflow.utils import requirements_utils

    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(requirements_utils, "_PACKAGES_TO_MODULES", None)
    configure_mlflow(scenario.config.mlflow_uri)
    assert isinstance(load_forecaster(f"models:/{MODEL_NAME}/1"), Forecaster)
    assert requirements_utils._MODULES_TO_PACKAGES is None


def test_a_model_logged_for_another_environment_loads_with_one_warning(
    scenario: Scenario, caplog: pytest.LogCaptureFixture
) -> None:
    """A pin this environment does not meet is named, with what is installed, in one warning."""
    client = configure_mlflow(scenario.config.mlflow_uri)
    forecaster = load_forecaster(f"models:/{MODEL_NAME}/1")
    experiment = client.get_experiment_by_name(scenario.config.experiment)
    run = client.create_run(experiment.experiment_id)  # type: ignore[union-attr]
    uri = log_forecaster(forecaster, run.info.run_id, pd.DataFrame())
    stored = client.get_logged_model(uri.removeprefix("models:/")).artifact_location
    requirements = Path(urlsplit(stored).path) / "requirements.txt"
    torch_pin = f"torch=={version('torch').split('+')[0]}"
    requirements.write_text(requirements.read_text().replace(torch_pin, "torch==1.0.0"))
    with caplog.at_level(logging.WARNING, logger="closecast.tasks.registry.logged_model"):
        load_pyfunc(uri)
    warnings = [
        r.getMessage() for r in caplog.records if r.name == "closecast.tasks.registry.logged_model"
    ]
    assert warnings == [
        f"{uri} was logged for another environment: torch==1.0.0 (installed {version('torch')})"
    ]


@pytest.mark.parametrize(
    ("requirements", "python", "expected"),
    [
        ([f"numpy=={version('numpy')}", "# a comment", ""], None, []),
        (["torch==1.0.0"], None, [f"torch==1.0.0 (installed {version('torch')})"]),
        ([f"torch=={version('torch').split('+')[0]}"], None, []),  # +cpu meets ==2.13.0
        (["no-such-distribution==1.0"], None, ["no-such-distribution==1.0 (not installed)"]),
        (['numpy==0.1; python_version < "3"'], None, []),  # a marker that excludes it
        ([], "2.7.18", [f"python 2.7.18 (running {platform.python_version()})"]),
        ([], platform.python_version().rsplit(".", 1)[0] + ".99", []),  # patch level differs
    ],
)
def test_environment_mismatches_names_each_unmet_pin(
    requirements: list[str], python: str | None, expected: list[str]
) -> None:
    """Each requirement this environment does not meet, and a Python of another major.minor."""
    assert environment_mismatches(requirements, python) == expected
