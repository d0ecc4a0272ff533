"""The pieces the nightly, backfill and predict flows share, each one step of their recipe.

`prepare_session` reads the store up to as_of and builds the windows
(`prediction_inputs`: only the last window, for a model already trained);
`session_run` opens the session's MLflow run, whose registration is rolled
back when a step fails; `session_report` is the report step, the same for
every flow; `model_in_use` names the model a session predicts with.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date

import pandas as pd

from closecast.core.config import MODEL_NAME, PipelineConfig
from closecast.core.statuses import Issues, merge_issues
from closecast.flows.naming import flow_run_id, name_flow_run
from closecast.models.derived import extra_rows
from closecast.tasks.data.sources import FetchResult
from closecast.tasks.data.steps import load_prices, validate_prices
from closecast.tasks.data.store import LoadedPrices
from closecast.tasks.data.validate import ValidatedPrices
from closecast.tasks.mlflow.runs import tracking_run
from closecast.tasks.modeling.evaluation import Evaluation
from closecast.tasks.modeling.fanout import features_each, validate_each
from closecast.tasks.modeling.features import latest_rows
from closecast.tasks.modeling.prediction import ModelInUse
from closecast.tasks.modeling.steps import build_windows, latest_inputs
from closecast.tasks.modeling.training import TrainedModel
from closecast.tasks.modeling.windows import Dataset, window_columns
from closecast.tasks.registry.aliases import rollback_registration
from closecast.tasks.registry.register import RegisteredVersion
from closecast.tasks.reporting.report import ReportContext, build_report, require_predictions
from closecast.tasks.reporting.tracking import run_tags


@dataclass(frozen=True)
class PredictionInputs:
    """What a prediction reads: prices up to as_of, validated, the last window of each
    predictable ticker (as the pyfunc takes it), and the issues found."""

    prices: LoadedPrices
    validated: ValidatedPrices
    latest: pd.DataFrame
    issues: Issues


@dataclass(frozen=True)
class SessionInputs(PredictionInputs):
    """What a training session reads: a prediction's inputs and the windows built from them."""

    dataset: Dataset


def prepare_session(
    config: PipelineConfig, as_of: date | None, fetched: FetchResult
) -> SessionInputs:
    """Load the store up to as_of, validate, build features and windows, gather the issues."""
    prices = load_prices(config.prices_dir, config.data.tickers, as_of)
    name_flow_run(prices.as_of)
    validated = validate_each(prices.frames)
    features = features_each(validated.frames, window_columns(config.windows.features))
    dataset = build_windows(features, config.windows, prices.as_of)
    issues = merge_issues(
        fetched.issues(prices.frames), prices.issues, validated.issues, dataset.issues
    )
    rows = dataset.window + extra_rows(dataset.features)  # a model's `input_rows`
    latest = latest_rows(validated.frames, dataset.latest.tickers.tolist(), rows)
    return SessionInputs(prices, validated, latest, issues, dataset)


def prediction_inputs(
    prices: LoadedPrices, fetched: FetchResult, tickers: list[str], window: int
) -> PredictionInputs:
    """Validate the prices and take the last `window` rows of each ticker that has them."""
    validated = validate_prices(prices.frames)
    latest = latest_inputs(validated.frames, tickers, prices.as_of, window)
    issues = merge_issues(
        fetched.issues(prices.frames), prices.issues, validated.issues, latest.issues
    )
    return PredictionInputs(prices, validated, latest.rows, issues)


def session_report(
    tickers: list[str],
    inputs: PredictionInputs,
    predictions: pd.DataFrame,
    version: str,
    run_id: str,
    model: str = MODEL_NAME,
) -> pd.DataFrame:
    """The report's rows: one per requested ticker, a prediction or the reason there is none
    (`version` of registered model `model` predicted)."""
    prices = inputs.prices
    context = ReportContext(prices.as_of, prices.target_date, model, version, run_id)
    return build_report(
        tickers, context, inputs.validated.last_closes(), predictions, inputs.issues
    )


def require_windows(config: PipelineConfig, inputs: SessionInputs) -> None:
    """Fail before anything is trained when no ticker has a window to predict from.

    Raises:
        PipelineError: naming the statuses; the report (when none exists yet) keeps them.
    """
    if len(inputs.dataset.latest):
        return
    no_predictions = pd.DataFrame({"ticker": [], "predicted_close": []})
    report = session_report(config.data.tickers, inputs, no_predictions, "", "")
    require_predictions(report, config.reports_dir)


@contextmanager
def session_run(
    config: PipelineConfig, kind: str, inputs: SessionInputs, tags: dict[str, str] | None = None
) -> Iterator[str]:
    """The session's MLflow run (`nightly 2024-05-01`), yielding its id.

    When a step of the block fails, the run ends FAILED, the versions it
    registered are deleted and the aliases put back.
    """
    every_run = run_tags(config.data, inputs.prices, inputs.dataset, flow_run_id())
    with (
        tracking_run(config, f"{kind} {inputs.prices.as_of}", every_run | (tags or {})) as run_id,
        rollback_registration(config.mlflow_uri, run_id, config.registry.model),
    ):
        yield run_id


def model_in_use(
    trained: TrainedModel, evaluation: Evaluation, run_id: str, registered: RegisteredVersion | None
) -> ModelInUse:
    """The model a session trained, named by its registry version (run:<id> when unregistered)."""
    if registered is None:
        return ModelInUse(
            forecaster=trained.forecaster,
            version=f"run:{run_id}",
            metrics=evaluation.metrics,
            decision="not registered",
        )
    return ModelInUse(
        forecaster=trained.forecaster,
        version=registered.version,
        metrics=evaluation.metrics,
        decision=registered.decision.line,
    )
