"""The model registry: register a version through the gate, move the aliases.

A nightly run registers in two steps so that a failure leaves the registry as
it found it: `register_model` re-scores the champion, decides (the gate,
`closecast.tasks.registry.gate`), and creates the version with its tags (no alias moves);
`promote_model` moves `challenger` (and `champion` when the gate said so) as
the run's last registry write. Each version's description is its model card
(`closecast.tasks.registry.model_card`: the decision, both versions side by side on the same
windows, the data, links); the registered model's says how the gate works.
`closecast.tasks.registry.aliases.rollback_registration` wraps
both: if anything in between fails, the run's version is deleted and the
aliases are put back.
"""

import math
import time
from dataclasses import dataclass, field

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from prefect.utilities.urls import url_for

from closecast.core.config import MODEL_NAME, RegistryConfig
from closecast.models.forecaster import Forecaster
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.evaluation import Evaluation, window_interval_scores
from closecast.tasks.modeling.windows import Dataset
from closecast.tasks.registry.aliases import (
    CHALLENGER,
    CHAMPION,
    AliasMove,
    alias_version,
    move_alias,
    reconcile_aliases,
)
from closecast.tasks.registry.gate import (
    GATED_METRICS,
    Comparison,
    Decision,
    check_metrics,
    compare_scores,
    decide_promotion,
    rescore_windows,
)
from closecast.tasks.registry.logged_model import load_forecaster, log_forecaster
from closecast.tasks.registry.model_card import (
    CANDIDATES_DESCRIPTION,
    GATE_DESCRIPTION,
    CardLinks,
    data_lines,
    describe_version,
)


@dataclass(frozen=True)
class RegisteredVersion:
    """A version a run registered (no alias moved yet) and what the gate decided for it."""

    version: str
    decision: Decision
    predicting_version: str
    previous_champion: str | None
    run_id: str
    # the champion's metrics re-scored on this version's test windows (empty: none, or unscorable)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    rescore_problem: str = ""  # why the champion could not be re-scored, when it could not
    model: str = MODEL_NAME  # the registered model `version` is a version of
    predicting_model: str = MODEL_NAME  # and `predicting_version`'s

    @property
    def champion_comparison(self) -> tuple[str, dict[str, float]] | None:
        """(champion version, its re-scored metrics) for the summary, when there are both."""
        if self.previous_champion and self.champion_metrics:
            return self.previous_champion, self.champion_metrics
        return None


def list_tickers(tickers: list[str], limit: int = 40) -> str:
    """Tickers for a description, cut after `limit` (MySQL/Postgres stores cap it at 5000 chars)."""
    shown = ", ".join(tickers[:limit])
    return shown if len(tickers) <= limit else f"{shown}, … ({len(tickers)} in all)"


def run_url(tracking_uri: str, experiment_id: str, run_id: str, artifact: str = "") -> str:
    """The run's page (or one of its artifacts) in the MLflow UI.

    Relative (`#/experiments/...`), which the UI resolves on its own pages,
    unless the tracking URI is an http(s) server, whose address it then starts with.
    """
    page = f"#/experiments/{experiment_id}/runs/{run_id}"
    if artifact:
        page += f"/artifactPath/{artifact}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return page


def version_url(tracking_uri: str, model: str, version: str) -> str:
    """A registry version's page (its model card) in the MLflow UI; relative, as `run_url`."""
    page = f"#/models/{model}/versions/{version}"
    if tracking_uri.startswith(("http://", "https://")):
        return f"{tracking_uri.rstrip('/')}/{page}"
    return page


def run_plots(client: MlflowClient, run_id: str, folder: str = "", depth: int = 2) -> list[str]:
    """Artifact paths of the run's PNG images, in its top folders."""
    found = []
    for item in client.list_artifacts(run_id, folder or None):
        if item.is_dir and depth > 1:
            found += run_plots(client, run_id, item.path, depth - 1)
        elif item.path.endswith(".png"):
            found.append(item.path)
    return sorted(found)


def card_links(client: MlflowClient, tracking_uri: str, run_id: str) -> CardLinks:
    """Links for the card: the MLflow run, its Prefect flow run (when a UI exists), its plots."""
    run = client.get_run(run_id)
    experiment = run.info.experiment_id
    flow_run_id = run.data.tags.get("flow_run_id", "")
    flow_run = url_for("flow-run", obj_id=flow_run_id) if flow_run_id else None
    plots = {p: run_url(tracking_uri, experiment, run_id, p) for p in run_plots(client, run_id)}
    rule = run.data.tags.get("fan_charts", "")  # tasks/reporting/tracking.py sets it
    return CardLinks(run_url(tracking_uri, experiment, run_id), run_id, flow_run, plots, rule)


def selection_end(client: MlflowClient, version: str) -> str:
    """The last test target date version `version` was selected on (ISO date): its
    `test_end` tag, else its run's `as_of` (versions from before the tag), else ''."""
    registered = client.get_model_version(MODEL_NAME, version)
    if registered.tags.get("test_end"):
        return registered.tags["test_end"]
    if not registered.run_id:
        return ""
    try:
        return client.get_run(registered.run_id).data.tags.get("as_of", "")
    except MlflowException:  # a run deleted since: the comparison then uses every window
        return ""


def _test_end(dataset: Dataset) -> str:
    dates = dataset.test.target_dates
    return str(pd.Timestamp(dates.max()).date()) if len(dates) else ""


def _challenger_scores(evaluation: Evaluation) -> np.ndarray:
    """Each test window's interval score of the new model, from its predictions."""
    p = evaluation.predictions
    bounds = {
        c: p[c].to_numpy(dtype=float) for c in p.columns if c.startswith(("lower_", "upper_"))
    }
    return window_interval_scores(
        bounds, p["actual_close"].to_numpy(dtype=float), p["last_close"].to_numpy(dtype=float)
    )


def register_model(
    registry: RegistryConfig,
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
    tracking_uri, model = registry.tracking_uri, registry.model
    client = configure_mlflow(tracking_uri)
    for name in dict.fromkeys((MODEL_NAME, model)):
        reconcile_aliases(client, name)  # moves made in the MLflow UI, recorded first
    current = alias_version(client, CHAMPION)
    champion, problem, comparison = None, "", None
    if current is not None:  # a champion that cannot be loaded fails the run, not the gate
        loaded = load_forecaster(f"models:/{MODEL_NAME}/{current}")
        rescored, scores, problem = rescore_windows(current, loaded, dataset.test, dataset.columns)
        champion = (current, rescored)
        comparison = _comparison(client, current, evaluation, dataset, scores)
    held = champion[1] if champion else {}
    # Into a candidates model the nightly only recommends: reviewers move the champion.
    mode = "manual" if registry.candidates else registry.promotion
    decision = decide_promotion(
        metrics, champion, mode, comparison=comparison, alpha=registry.promotion_alpha
    )
    if decision.metrics:
        client.log_batch(run_id, metrics=_metrics(decision.metrics))
    model_uri = log_forecaster(forecaster, run_id, example)
    tags = {
        "promotion": decision.tag,
        "promotion_reason": decision.reason,
        "run_id": run_id,
        "head": forecaster.head_label,
        "test_end": _test_end(dataset),
        **{k: f"{metrics[k]:.6g}" for k in GATED_METRICS},
    }
    version = str(mlflow.register_model(model_uri, model, tags=tags).version)
    if (named := decision.for_version(version)) != decision:  # `closecast promote 6`
        decision = named
        client.set_model_version_tag(model, version, "promotion_reason", decision.reason)
    client.update_registered_model(
        model, description=CANDIDATES_DESCRIPTION if registry.candidates else GATE_DESCRIPTION
    )
    data = data_lines(dataset, registry.source, list_tickers(dataset.tickers))
    links = card_links(client, tracking_uri, run_id)
    card = describe_version(
        version, metrics, decision, held, len(dataset.test), data, links, forecaster.head
    )
    client.update_model_version(model, version, description=card)
    if decision.promote or current is None:  # no champion yet: the new version predicts
        predicting, predicting_model = version, model
    else:
        predicting, predicting_model = current, MODEL_NAME
    return RegisteredVersion(
        version, decision, predicting, current, run_id, held, problem, model, predicting_model
    )


def _comparison(
    client: MlflowClient,
    champion: str,
    evaluation: Evaluation,
    dataset: Dataset,
    scores: np.ndarray,
) -> Comparison | None:
    """The paired interval scores on the windows after the champion's selection (None: the
    champion could not be re-scored)."""
    if len(scores) != len(dataset.test):
        return None
    since = selection_end(client, champion)
    return compare_scores(_challenger_scores(evaluation), scores, dataset.test.target_dates, since)


def _metrics(values: dict[str, float]) -> list[Metric]:
    now = int(time.time() * 1000)
    return [Metric(k, v, now, 0) for k, v in values.items() if math.isfinite(v)]


def promote_model(tracking_uri: str, registered: RegisteredVersion) -> list[AliasMove]:
    """Move `challenger` to the new version, and `champion` when the gate promoted it."""
    client = configure_mlflow(tracking_uri)
    by, model = f"nightly run {registered.run_id}", registered.model
    moves = [move_alias(client, CHALLENGER, registered.version, by, "newly trained version", model)]
    if registered.decision.promote:  # never for a candidates model: its decisions are "manual"
        reason = registered.decision.reason
        moves.append(move_alias(client, CHAMPION, registered.version, by, reason, model))
    return moves
