"""The champion: the registry version behind alias `champion`, and what it needs as input."""

from dataclasses import dataclass

from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from closecast.core.config import MODEL_NAME
from closecast.core.errors import PipelineError
from closecast.models.forecaster import Forecaster
from closecast.tasks.mlflow.auth import refused_request
from closecast.tasks.mlflow.connection import connect_mlflow
from closecast.tasks.registry.aliases import CHAMPION, reconcile_aliases
from closecast.tasks.registry.logged_model import load_forecaster

_VERSION_METRICS = ("test_rmse", "naive_rmse", "skill")


@dataclass(frozen=True)
class Champion:
    """The registry version behind alias `champion`, and the window it needs."""

    version: str
    window: int
    features: tuple[str, ...]
    run_id: str
    metrics: dict[str, float]  # the test metrics recorded on the version when it was registered


def require_champion(tracking_uri: str) -> ModelVersion:
    """The registry version behind alias `champion`.

    Raises:
        PipelineError: when MLflow cannot be reached or the registry has no `champion` alias.
    """
    client = connect_mlflow(tracking_uri)
    try:
        reconcile_aliases(client)  # a champion moved in the MLflow UI is recorded first
        return client.get_model_version_by_alias(MODEL_NAME, CHAMPION)
    except MlflowException as exc:
        raise refused_request(tracking_uri, exc) or PipelineError(
            f"no {CHAMPION} version of {MODEL_NAME} in the registry at {tracking_uri}: "
            "run `closecast run` first (or `closecast promote VERSION`)"
        ) from None


def find_champion(tracking_uri: str) -> Champion:
    """The champion version and its input spec (see `require_champion`); a version
    logged by an earlier closecast too (`load_forecaster`)."""
    version = require_champion(tracking_uri)
    forecaster: Forecaster = load_forecaster(f"models:/{MODEL_NAME}/{version.version}")
    return Champion(
        version=str(version.version),
        window=forecaster.window,
        features=forecaster.features,
        run_id=str(version.run_id or ""),
        metrics={k: float(v) for k, v in version.tags.items() if k in _VERSION_METRICS},
    )
