"""The registry stage's Prefect tasks: find the champion, register through the gate, move
the aliases, load a version.

Each task wraps the plain function of the same name in its stage module
(`register.register_model`, `champion.find_champion`, ...) and adds the log
lines. The logic, and its tests, live in those modules.
"""

import pandas as pd
from mlflow.pyfunc import PyFuncModel
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from closecast.core.config import MODEL_NAME, RegistryConfig
from closecast.models.forecaster import Forecaster
from closecast.tasks.modeling.evaluation import Evaluation
from closecast.tasks.modeling.windows import Dataset
from closecast.tasks.registry import champion as champion_module
from closecast.tasks.registry import logged_model, register
from closecast.tasks.registry.champion import Champion
from closecast.tasks.registry.register import RegisteredVersion


@task(name="find-champion", cache_policy=NO_CACHE)
def find_champion(tracking_uri: str) -> Champion:
    """Look up the champion; a clear error when there is none."""
    champion = champion_module.find_champion(tracking_uri)
    get_run_logger().info(
        "champion is %s v%s (window %d, features %s)",
        MODEL_NAME,
        champion.version,
        champion.window,
        ",".join(champion.features),
    )
    return champion


@task(name="register-model", cache_policy=NO_CACHE)
def register_model(
    registry: RegistryConfig,
    run_id: str,
    forecaster: Forecaster,
    evaluation: Evaluation,
    dataset: Dataset,
    example: pd.DataFrame,
) -> RegisteredVersion:
    """Register the new version and decide its promotion (aliases move at the end of the run)."""
    registered = register.register_model(registry, run_id, forecaster, evaluation, dataset, example)
    if registered.rescore_problem:
        get_run_logger().warning(registered.rescore_problem)
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
    for move in register.promote_model(tracking_uri, registered):
        get_run_logger().info(
            "%s: v%s -> v%s", move.alias, move.previous or "-", move.version or "-"
        )


@task(name="load-version", cache_policy=NO_CACHE, task_run_name="load-version v{version}")
def load_version(tracking_uri: str, version: str, model: str = MODEL_NAME) -> PyFuncModel:
    """Registry version `version` of `model` as the pyfunc MLflow serves (the model that
    predicts)."""
    return logged_model.load_version(tracking_uri, version, model)
