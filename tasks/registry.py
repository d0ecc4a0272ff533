"""The model registry: log the pyfunc, register a version, run the promotion gate, move aliases.

A nightly run registers in two steps so that a failure leaves the registry as
it found it: `register_forecaster` re-scores the champion, decides, and
creates the version with its tags (no alias moves); `apply_promotion` moves
`challenger` (and `champion` when the gate said so) as the run's last registry
write. `rollback_registration` wraps both: if anything in between fails, the
run's version is deleted and the aliases are put back.

Every alias move is recorded as a registered-model tag `alias_move.<ms>.<alias>.v<N>`
whose value is JSON (at, alias, version, previous, by, reason), so
`alias_history` answers "what was champion on date X".
"""

import json
import logging
import math
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

import core
import models
from core.config import MODEL_NAME, PipelineConfig
from models.forecaster import OUTPUT_COLUMNS, Forecaster, prediction_table
from models.pyfunc import CloseForecastModel, accepted_names
from tasks.evaluation import Evaluation, score_distribution
from tasks.tracking import configure_mlflow
from tasks.windows import Dataset, WindowSet

CHAMPION, CHALLENGER = "champion", "challenger"
MODEL_CODE = Path(models.__file__).parent / "mlflow_model.py"
HISTORY_PREFIX = "alias_move."
GATED_METRICS = ("test_interval_score", "test_rmse", "naive_rmse", "skill")  # the gate's first

logger = logging.getLogger(__name__)


class UnknownVersion(LookupError):
    """A registry version that does not exist (or a name that is not a version number)."""


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided for a new version, and why."""

    promote: bool
    tag: str  # champion | rejected | manual
    reason: str


@dataclass(frozen=True)
class RegisteredVersion:
    """A version a run registered (no alias moved yet) and what the gate decided for it."""

    version: str
    decision: Decision
    predicting_version: str
    previous_champion: str | None
    run_id: str


@dataclass(frozen=True)
class AliasMove:
    """One move of an alias: the version it pointed at before and after, by whom, when."""

    at: datetime
    alias: str
    version: str | None  # None: the alias was removed
    previous: str | None
    by: str
    reason: str

    @property
    def tag_key(self) -> str:
        """The registered-model tag holding this move; keys sort by time."""
        stamp = int(self.at.timestamp() * 1000)
        return f"{HISTORY_PREFIX}{stamp:013d}.{self.alias}.v{self.version or 'none'}"

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "at": self.at.isoformat()})

    @classmethod
    def from_json(cls, text: str) -> "AliasMove":
        data = json.loads(text)
        return cls(**{**data, "at": datetime.fromisoformat(data["at"])})


def _scores(metrics: dict[str, float]) -> str:
    return (
        f"interval score {metrics.get('test_interval_score', float('nan')):.6f}, "
        f"test_rmse {metrics.get('test_rmse', float('nan')):.6f}"
    )


def decide_promotion(
    challenger: dict[str, float], champion: tuple[str, dict[str, float]] | None, mode: str
) -> Decision:
    """The gate: the first version becomes champion; later ones only if they beat it.

    "Beat" means a strictly lower `test_interval_score` (the mean of the 80%
    and 95% interval scores: a proper score of the whole forecast, centre and
    width) on the same test windows. A champion without intervals (a model
    from before they existed) is compared on `test_rmse` only, and the reason
    says so. The reason names both scores of both versions.

    Args:
        challenger: the new version's test metrics.
        champion: (version, its metrics re-scored on the same test windows), or None.
        mode: `auto`, or `manual` to leave the champion to people.
    """
    if mode == "manual":
        return Decision(False, "manual", "promotion is manual: review and run `closecast promote`")
    if champion is None:
        return Decision(True, "champion", f"first version ({_scores(challenger)})")
    version, held = champion
    if not np.isfinite(held.get("test_rmse", np.nan)):
        return Decision(
            True,
            "champion",
            f"champion v{version} cannot score these test windows ({_scores(challenger)})",
        )
    name, note = "interval score", ""
    mine, theirs = challenger["test_interval_score"], held.get("test_interval_score", np.nan)
    if not np.isfinite(theirs):
        name, note = "test_rmse", f"champion v{version} has no intervals, so test_rmse decides; "
        mine, theirs = challenger["test_rmse"], held["test_rmse"]
    both = f"{_scores(challenger)} vs champion v{version}'s {_scores(held)}"
    if mine < theirs:
        verdict = f"{note}{name} {mine:.6f} beats champion v{version}'s {theirs:.6f}"
        return Decision(True, "champion", f"{verdict} on the same test windows ({both})")
    beaten = "ties" if mine == theirs else "does not beat"
    verdict = f"{note}{name} {mine:.6f} {beaten} champion v{version}'s {theirs:.6f}"
    return Decision(False, "rejected", f"{verdict} on the same test windows ({both})")


def check_metrics(metrics: dict[str, float], intervals: bool = True) -> None:
    """Refuse to register a model whose gated metrics are missing or not finite.

    Args:
        metrics: the model's test metrics.
        intervals: whether the model gives intervals; a point-only model (as
            they were before intervals existed) has no interval score to check.

    Raises:
        ValueError: naming the metric and its value.
    """
    for name in GATED_METRICS if intervals else GATED_METRICS[1:]:
        value = metrics.get(name, float("nan"))
        if not math.isfinite(value):
            raise ValueError(f"metric {name} is {value}: refusing to register the model")


def signature(forecaster: Forecaster) -> ModelSignature:
    """The pyfunc's signature: the columns this model reads, and what it returns.

    MLflow checks the input against it before `predict` runs, matching names
    exactly and refusing int64 for double and strings for datetime, with an
    error that prints the whole input. So each column the model reads is
    listed under every name the pyfunc accepts (`close`, `Close`), optional and
    of any type, and `predict` itself refuses a missing column or a column of
    the wrong kind in one line. Columns the model does not read are not listed.
    """
    inputs: list[ColSpec | TensorSpec] = [
        ColSpec(AnyType(), name, required=False)
        for column in forecaster.input_columns
        for name in accepted_names(column)
    ]
    outputs: list[ColSpec | TensorSpec] = [
        ColSpec(kind, name) for name, kind in OUTPUT_COLUMNS.items()
    ]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema(outputs))


def example_input(frame: pd.DataFrame, forecaster: Forecaster) -> pd.DataFrame:
    """An input example in the pyfunc's own format: the first ticker's rows, the model's columns."""
    first = frame["ticker"] == frame["ticker"].min()
    return frame.loc[first, list(forecaster.input_columns)].reset_index(drop=True)


def log_forecaster(forecaster: Forecaster, run_id: str, example: pd.DataFrame) -> str:
    """Log the forecaster to `run_id` as a models-from-code pyfunc; returns its model URI."""
    requirements = [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
    ]
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        weights, spec = forecaster.save(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"weights": str(weights), "spec": str(spec)},
            # models/ and the foundation it imports (core/), as code: no pickle
            code_paths=[str(Path(models.__file__).parent), str(Path(core.__file__).parent)],
            signature=signature(forecaster),
            input_example=example_input(example, forecaster) if len(example) else None,
            pip_requirements=requirements,
        )
    return info.model_uri


def load_forecaster(model_uri: str) -> Forecaster:
    """Load a registered pyfunc and return the forecaster inside it."""
    model = mlflow.pyfunc.load_model(model_uri)
    python_model = model.unwrap_python_model()
    if not isinstance(python_model, CloseForecastModel):
        raise TypeError(f"{model_uri} is not a closecast model")
    return python_model.forecaster


def _missing(exc: MlflowException) -> bool:
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST"


def current_aliases(client: MlflowClient) -> dict[str, str]:
    """alias -> version of the registered model; empty when it is not registered yet.

    Any other registry error (unreachable server) propagates: a missing
    answer must never read as "there is no champion".
    """
    try:
        return {a: str(v) for a, v in client.get_registered_model(MODEL_NAME).aliases.items()}
    except MlflowException as exc:
        if _missing(exc):
            return {}
        raise


def alias_version(client: MlflowClient, alias: str) -> str | None:
    """The version `alias` points at, or None."""
    return current_aliases(client).get(alias)


def rescore_champion(version: str, test: WindowSet, columns: tuple[str, ...]) -> dict[str, float]:
    """The champion's metrics on the challenger's test windows (empty if it cannot score them).

    The windows hold `columns`; the champion reads the ones it was trained on.
    A champion that cannot read these windows (other features or window
    length, a ticker it has no scaling for) gets no metrics; a champion that
    cannot be loaded (registry unreachable) fails the run rather than the gate.
    """
    champion = load_forecaster(f"models:/{MODEL_NAME}/{version}")
    try:
        missing = [c for c in champion.columns if c not in columns]
        if missing:
            raise ValueError(f"the test windows lack its column(s) {', '.join(missing)}")
        windows = test.windows[:, -champion.window :, [columns.index(c) for c in champion.columns]]
        if windows.shape[1] != champion.window:
            raise ValueError(f"its window is {champion.window} days, these hold {windows.shape[1]}")
        forecast = champion.predict_distribution(windows, test.tickers)
        return score_distribution(forecast, test)
    except (ValueError, RuntimeError) as exc:
        get_run_logger().warning("champion v%s cannot be re-scored: %s", version, exc)
        return {}


def list_tickers(tickers: list[str], limit: int = 40) -> str:
    """Tickers for a description, cut after `limit` (MySQL/Postgres stores cap it at 5000 chars)."""
    shown = ", ".join(tickers[:limit])
    return shown if len(tickers) <= limit else f"{shown}, … ({len(tickers)} in all)"


def describe_version(
    metrics: dict[str, float], decision: Decision, summary: dict[str, object]
) -> str:
    """The markdown description a reviewer reads in the registry."""
    lines = [
        f"**Promotion:** {decision.tag} — {decision.reason}",
        "",
        "| metric | value |",
        "|---|---|",
        *[f"| {k} | {v:.6g} |" for k, v in metrics.items()],
        "",
        *[f"- {k}: {v}" for k, v in summary.items()],
    ]
    return "\n".join(lines)


def register_forecaster(
    config: PipelineConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Gate the new model against the champion, then log and register it (aliases untouched).

    The champion is re-scored on this run's test windows before anything is
    written, so a failing re-score registers nothing.
    """
    metrics = evaluation.metrics
    check_metrics(metrics, intervals=forecaster.intervals is not None)
    client = configure_mlflow(config.mlflow_uri)
    current = alias_version(client, CHAMPION)
    champion = None
    if current is not None:
        champion = (current, rescore_champion(current, dataset.test, dataset.columns))
    decision = decide_promotion(metrics, champion, config.promotion)
    model_uri = log_forecaster(forecaster, run_id, example)
    tags = {
        "promotion": decision.tag,
        "promotion_reason": decision.reason,
        "run_id": run_id,
        **{k: f"{metrics[k]:.6g}" for k in GATED_METRICS},
    }
    version = str(mlflow.register_model(model_uri, MODEL_NAME, tags=tags).version)
    summary = {**dataset.summary(), "tickers": list_tickers(dataset.tickers)}
    client.update_model_version(
        MODEL_NAME, version, description=describe_version(metrics, decision, summary)
    )
    predicting = version if decision.promote or current is None else current
    return RegisteredVersion(version, decision, predicting, current, run_id)


def move_alias(
    client: MlflowClient, alias: str, version: str | None, by: str, reason: str
) -> AliasMove:
    """Point `alias` at `version` (None removes it) and record the move in the history."""
    previous = alias_version(client, alias)
    if version is None:
        client.delete_registered_model_alias(MODEL_NAME, alias)
    else:
        client.set_registered_model_alias(MODEL_NAME, alias, version)
    move = AliasMove(datetime.now(UTC), alias, version, previous, by[:300], reason[:1000])
    client.set_registered_model_tag(MODEL_NAME, move.tag_key, move.to_json())
    return move


def apply_promotion(tracking_uri: str, registered: RegisteredVersion) -> list[AliasMove]:
    """Move `challenger` to the new version, and `champion` when the gate promoted it."""
    client = configure_mlflow(tracking_uri)
    by = f"nightly run {registered.run_id}"
    moves = [move_alias(client, CHALLENGER, registered.version, by, "newly trained version")]
    if registered.decision.promote:
        moves.append(
            move_alias(client, CHAMPION, registered.version, by, registered.decision.reason)
        )
    return moves


def discard_run_versions(client: MlflowClient, run_id: str) -> list[str]:
    """Delete every version a (failed) run registered; returns their numbers."""
    if not re.fullmatch(r"[0-9a-f]{32}", run_id):
        raise ValueError(f"invalid run id {run_id!r}")
    found = client.search_model_versions(f"name='{MODEL_NAME}' and tags.run_id='{run_id}'")
    versions = sorted(str(v.version) for v in found)
    for version in versions:
        client.delete_model_version(MODEL_NAME, version)
    return versions


@contextmanager
def rollback_registration(tracking_uri: str, run_id: str) -> Iterator[None]:
    """If the block fails, delete what `run_id` registered and put the aliases back.

    The original exception always propagates; a failing clean-up is logged,
    never raised in its place.
    """
    client = configure_mlflow(tracking_uri)
    before = {alias: alias_version(client, alias) for alias in (CHAMPION, CHALLENGER)}
    try:
        yield
    except BaseException:
        try:
            discarded = discard_run_versions(client, run_id)
            for alias, version in before.items():
                if alias_version(client, alias) != version:
                    by = f"rollback of failed run {run_id}"
                    move_alias(client, alias, version, by, "restoring the alias the run had moved")
            if discarded:
                logger.warning("run failed: discarded %s v%s", MODEL_NAME, ", v".join(discarded))
        except Exception as exc:  # the run's own error is the one to report
            logger.error("could not roll back the registry after the failure: %s", exc)
        raise


def alias_history(client: MlflowClient) -> list[AliasMove]:
    """Every recorded alias move, oldest first."""
    try:
        tags = client.get_registered_model(MODEL_NAME).tags
    except MlflowException as exc:
        if _missing(exc):
            return []
        raise
    moves = [AliasMove.from_json(v) for k, v in tags.items() if k.startswith(HISTORY_PREFIX)]
    return sorted(moves, key=lambda m: m.at)


def alias_at(history: list[AliasMove], alias: str, when: datetime) -> str | None:
    """The version `alias` pointed at, at time `when`, by the recorded history."""
    version = None
    for move in history:
        if move.alias == alias and move.at <= when:
            version = move.version
    return version


def promote_version(tracking_uri: str, version: str, by: str, reason: str) -> AliasMove:
    """Point `champion` at an existing `version` (a manual promotion, or a rollback).

    Raises:
        UnknownVersion: when `version` is not a number or no such version exists.
    """
    if not version.isdigit():
        raise UnknownVersion(f"invalid version {version!r}: expected a version number")
    client = configure_mlflow(tracking_uri)
    try:
        client.get_model_version(MODEL_NAME, version)
    except MlflowException as exc:
        if _missing(exc):
            raise UnknownVersion(f"version {version} of {MODEL_NAME} does not exist") from None
        raise
    return move_alias(client, CHAMPION, version, by, reason)


def version_table(client: MlflowClient) -> pd.DataFrame:
    """One row per registered version, newest first: what `closecast models` prints."""
    columns = ["version", "aliases", "created", *GATED_METRICS, "promotion"]
    aliases: dict[str, list[str]] = {}
    for alias, version in sorted(current_aliases(client).items()):
        aliases.setdefault(version, []).append(alias)
    rows = [
        {
            "version": int(v.version),
            "aliases": ",".join(aliases.get(str(v.version), [])),
            "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).strftime(
                "%Y-%m-%d %H:%M"
            ),
            **{k: v.tags.get(k, "") for k in (*GATED_METRICS, "promotion")},
        }
        for v in client.search_model_versions(f"name='{MODEL_NAME}'")
    ]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("version", ascending=False, ignore_index=True)


@task(name="register-model", cache_policy=NO_CACHE)
def register_model(
    config: PipelineConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Register the new version and decide its promotion (aliases move at the end of the run)."""
    registered = register_forecaster(config, run_id, forecaster, evaluation, dataset, example)
    get_run_logger().info(
        "registered %s v%s: %s (%s)",
        MODEL_NAME,
        registered.version,
        registered.decision.tag,
        registered.decision.reason,
    )
    return registered


@task(name="promote-model", cache_policy=NO_CACHE)
def promote_model(tracking_uri: str, registered: RegisteredVersion) -> None:
    """Move the aliases as the gate decided, recording each move."""
    for move in apply_promotion(tracking_uri, registered):
        get_run_logger().info(
            "%s: v%s -> v%s", move.alias, move.previous or "-", move.version or "-"
        )


def predict_with_version(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Load registry version `version` as a pyfunc and predict from raw OHLCV rows.

    Only the columns its signature lists are passed, so MLflow has no unused
    column to warn about. Returns one row per ticker: ticker, predicted_close,
    status, message (a version logged before statuses existed returns the
    first two only).
    """
    configure_mlflow(tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{version}")
    listed = set(model.metadata.get_input_schema().input_names())
    return model.predict(frame.loc[:, [c for c in frame.columns if c in listed]])


@task(name="predict-next", cache_policy=NO_CACHE)
def predict_next(tracking_uri: str, version: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Tomorrow's closes from the registered version that predicts, with a status per ticker."""
    if frame.empty:
        return prediction_table({}, {})
    return predict_with_version(tracking_uri, version, frame)
