"""The logged model: the pyfunc a version is, as MLflow stores and loads it.

A version is logged as models-from-code (`closecast/models/mlflow_model.py`)
with its weights and spec as artifacts and closecast.models and
closecast.core as its code: loading it unpickles nothing. Loading warns once
for each pin this environment does not meet, and a model logged by an
earlier closecast (top-level `models/` and `core/`) is rebuilt from its
weights and spec with this code.
"""

import logging
import platform
import shutil
import tempfile
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as installed_version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pydantic
import scipy
import torch
from mlflow.models import ModelSignature
from mlflow.pyfunc import PyFuncModel
from mlflow.types import ColSpec, Schema, TensorSpec
from mlflow.types.schema import AnyType
from packaging.requirements import InvalidRequirement, Requirement

import closecast
import closecast.core
import closecast.models
from closecast.core.config import MODEL_NAME
from closecast.models.forecaster import OUTPUT_COLUMNS, Forecaster
from closecast.models.pyfunc import CloseForecastModel, accepted_names
from closecast.tasks.mlflow.connection import configure_mlflow

logger = logging.getLogger(__name__)

MODEL_CODE = Path(closecast.models.__file__).parent / "mlflow_model.py"


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


def model_requirements() -> list[str]:
    """The pip requirements a logged model carries, pinned to what is installed here.

    Every distribution the model's code (models/, core/) imports, and MLflow
    to load it. torch is pinned without its local build tag (`2.13.0`, not
    `2.13.0+cpu`), as pyproject.toml pins it: any build of that version serves.
    Given explicitly, because MLflow's inference loads the model in a
    subprocess to see what it imports: seconds per run.
    """
    return [
        f"mlflow=={mlflow.__version__}",
        f"torch=={torch.__version__.split('+')[0]}",
        f"pandas=={pd.__version__}",
        f"numpy=={np.__version__}",
        f"scipy=={scipy.__version__}",
        f"pydantic=={pydantic.__version__}",
    ]


LOGGED_INIT = '''"""closecast.models and closecast.core, as a logged closecast model carries them.

MLflow puts this folder first on sys.path when it loads the model. Where
closecast is installed, the installed package comes first in `__path__`: a
process that loads the model and then imports closecast.tasks runs one
closecast, the installed one (which reads the model's weights and spec).
Where none is installed, this copy runs the model.
"""

import json
from importlib import metadata
from pathlib import Path
from pkgutil import extend_path
from urllib.parse import unquote, urlsplit

__path__ = extend_path(__path__, __name__)
__version__ = "{version}"  # of the closecast that logged the model


def _installed() -> list[str]:
    try:
        dist = metadata.distribution("closecast")
    except metadata.PackageNotFoundError:
        return []
    url = json.loads(dist.read_text("direct_url.json") or "{{}}")
    if url.get("dir_info", {{}}).get("editable"):  # pip install -e: the checkout
        root = Path(unquote(urlsplit(url["url"]).path))
    else:
        root = Path(str(dist.locate_file("")))
    package = root / "closecast"
    return [str(package)] if (package / "__init__.py").is_file() else []


__path__ = [*_installed(), *(p for p in __path__ if p not in _installed())]
'''


def model_code(folder: Path) -> Path:
    """A `closecast` package holding only what a logged model runs: models/ and core/.

    Logged as the model's code (no pickle). Its `__init__` (`LOGGED_INIT`)
    puts an installed closecast first, so a process that loads the model and
    imports `closecast.tasks` afterwards never mixes the model's copy of
    closecast.core with another version's tasks.
    """
    package = folder / "code" / "closecast"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(LOGGED_INIT.format(version=closecast.__version__))
    for part in (closecast.models, closecast.core):
        source = Path(part.__path__[0])
        shutil.copytree(source, package / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    return package


def log_forecaster(forecaster: Forecaster, run_id: str, example: pd.DataFrame) -> str:
    """Log the forecaster to `run_id` as a models-from-code pyfunc; returns its model URI."""
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        weights, spec = forecaster.save(Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts={"weights": str(weights), "spec": str(spec)},
            code_paths=[str(model_code(Path(tmp)))],
            signature=signature(forecaster),
            input_example=example_input(example, forecaster) if len(example) else None,
            pip_requirements=model_requirements(),
        )
    return info.model_uri


def environment_mismatches(requirements: list[str], python_version: str | None) -> list[str]:
    """Where this environment differs from a model's pins, one line each.

    `requirements` are the lines of its requirements.txt (lines that are not
    a `name<specifier>` requirement are skipped); `python_version` the
    Python it was saved with, compared by major.minor. Local build tags
    (`+cpu`) do not count: `torch==2.13.0` accepts 2.13.0+cpu.
    """
    found = []
    for line in requirements:
        try:
            requirement = Requirement(line.strip())
        except InvalidRequirement:
            continue
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        try:
            have = installed_version(requirement.name)
        except PackageNotFoundError:
            found.append(f"{requirement} (not installed)")
            continue
        if not requirement.specifier.contains(have, prereleases=True):
            found.append(f"{requirement} (installed {have})")
    running = platform.python_version()
    if python_version and python_version.split(".")[:2] != running.split(".")[:2]:
        found.append(f"python {python_version} (running {running})")
    return found


def load_pyfunc(model_uri: str) -> PyFuncModel:
    """Load a logged pyfunc; a warning names each pin this environment does not meet.

    MLflow's own check maps every installed distribution to its modules
    before it reads a pin (1-2 s per process); the pins here are a handful
    of distribution names, looked up one by one (`environment_mismatches`).
    """
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    model = mlflow.pyfunc.load_model(str(local), suppress_warnings=True)
    pins = local / "requirements.txt"
    requirements = pins.read_text().splitlines() if pins.is_file() else []
    python = model.metadata.flavors.get("python_function", {}).get("python_version")
    mismatches = environment_mismatches(requirements, python)
    if mismatches:
        logger.warning(
            "%s was logged for another environment: %s", model_uri, "; ".join(mismatches)
        )
    return model


def load_forecaster(model_uri: str) -> Forecaster:
    """Load a registered pyfunc and return the forecaster inside it.

    A model logged before closecast was one package carries its code as top-level
    `models/` and `core/`, so it loads as its own copy of CloseForecastModel; its
    forecaster is rebuilt from the model's `weights` and `spec` artifacts with this code.
    """
    model = load_pyfunc(model_uri)
    python_model = model.unwrap_python_model()
    if isinstance(python_model, CloseForecastModel):
        return python_model.forecaster
    artifacts = model.metadata.flavors.get("python_function", {}).get("artifacts", {})
    if not {"weights", "spec"} <= artifacts.keys():
        raise TypeError(f"{model_uri} is not a closecast model")
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri))
    return Forecaster.load(local / artifacts["weights"]["path"], local / artifacts["spec"]["path"])


def load_version(tracking_uri: str, version: str, model: str = MODEL_NAME) -> PyFuncModel:
    """Registry version `version` of `model`, loaded as the pyfunc MLflow serves."""
    configure_mlflow(tracking_uri)
    return load_pyfunc(f"models:/{model}/{version}")
