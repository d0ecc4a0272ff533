"""closecast owns its names: the wheel installs one package, a logged model loads beside
another project's `models` and `core`, and models logged before the move still load."""

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch

import closecast.core
import closecast.models
from closecast.core.config import MODEL_NAME
from closecast.models.encoding import Encoding
from closecast.models.forecaster import Forecaster
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.pyfunc import read_input
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.prediction import predict_next
from closecast.tasks.registry.champion import find_champion
from closecast.tasks.registry.logged_model import (
    load_forecaster,
    load_version,
    log_forecaster,
    model_requirements,
    signature,
)
from tests.fakes import yahoo_frame
from tests.mlflow_fixtures import new_home

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("close", "volume", "open")


@pytest.mark.slow  # pip builds the wheel in a subprocess
def test_the_wheel_installs_closecast_and_nothing_else_at_the_top(tmp_path: Path) -> None:
    """No top-level `core`, `models`, `tasks` or `flows` beside another project's: every
    entry of the wheel is under `closecast/` or its `.dist-info/`."""
    source = tmp_path / "source"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        ROOT / "closecast", source / "closecast", ignore=shutil.ignore_patterns("__pycache__")
    )
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    command += ["--no-index", "--quiet", "-w", str(tmp_path / "dist"), str(source)]
    built = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "dist").glob("closecast-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    (info,) = top - {"closecast"}
    assert re.fullmatch(r"closecast-[^/]+\.dist-info", info), sorted(top)
    assert {
        "closecast/__init__.py",
        "closecast/models/mlflow_model.py",
        "closecast/tasks/registry/register.py",
        "closecast/flows/nightly.py",
    } <= set(names)


def _forecaster(seed: int = 0) -> Forecaster:
    """An untrained point-head forecaster: enough to compare what two loaders predict."""
    torch.manual_seed(seed)
    lstm = LSTMConfig(hidden_size=8, distribution="none")
    module = LSTMForecaster(lstm, n_features=len(FEATURES))
    return Forecaster(module, Encoding(features=FEATURES), 10)


def _rows() -> pd.DataFrame:
    """15 daily rows of two tickers in the model's own columns."""
    parts = []
    for i, ticker in enumerate(["AAA", "BBB"]):
        bars = yahoo_frame(15, seed=i, base=50.0 + 40 * i)
        bars.index = bars.index.tz_localize(None)
        parts.append(bars.reset_index().assign(Ticker=ticker))
    rows = pd.concat(parts, ignore_index=True).rename(columns=str.lower)
    return rows[["ticker", "date", *FEATURES]].astype({"volume": np.float64})


def _expected(forecaster: Forecaster, rows: pd.DataFrame) -> pd.DataFrame:
    """What this code predicts from `rows` with `forecaster`, with no MLflow in between."""
    return forecaster.predict_frame(read_input(rows, forecaster.input_columns))


@dataclass(frozen=True)
class Registry:
    uri: str  # the tracking (and registry) URI: SQLite under the test's folder
    forecaster: Forecaster  # what version 1 holds


@contextmanager
def own_imports() -> Iterator[None]:
    """sys.path and the top-level `models`/`core` modules as they were: an old model's
    code (on sys.path, imported by those names) goes with the test that loaded it."""
    before, path = set(sys.modules), list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - before:
            if name.split(".")[0] in {"models", "core"}:
                del sys.modules[name]


@pytest.fixture(scope="module")
def current(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[Registry]:
    """Version 1, logged by this closecast."""
    home = new_home(tmp_path_factory.mktemp("current") / "home", mlflow_template)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = configure_mlflow(uri)
    experiment = client.create_experiment("packaging", artifact_location=str(home / "artifacts"))
    forecaster = _forecaster()
    model_uri = log_forecaster(forecaster, client.create_run(experiment).info.run_id, _rows())
    mlflow.register_model(model_uri, MODEL_NAME)
    yield Registry(uri, forecaster)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


_FOREIGN = """
import json, sys
fake, model_uri, tracking_uri, rows, out = sys.argv[1:]
sys.path.insert(0, fake)
import core, models  # another project's, imported before the model loads
import mlflow, pandas as pd
mlflow.set_tracking_uri(tracking_uri)
mlflow.pyfunc.load_model(model_uri).predict(pd.read_parquet(rows)).to_parquet(out)
found = {"models": models.OWNER, "core": core.OWNER}
found["loaded_models"] = sys.modules["models"].OWNER
found["loaded_core"] = sys.modules["core"].OWNER
import closecast.tasks.registry.register as register
import closecast.core.config, closecast.models.pyfunc
found["tasks"] = register.__file__
found["core_file"] = closecast.core.config.__file__
found["pyfunc_file"] = closecast.models.pyfunc.__file__
found["window"] = register.load_forecaster(model_uri).window
found["now_models"] = sys.modules["models"].OWNER
found["now_core"] = sys.modules["core"].OWNER
print(json.dumps(found))
"""


@pytest.mark.slow  # a subprocess
def test_a_logged_model_loads_beside_another_projects_models_and_core(
    current: Registry, tmp_path: Path
) -> None:
    """A process that has imported its own `models` and `core` loads the pyfunc and gets
    this process's predictions; its packages stay its own, after the model loads and after
    closecast.tasks is imported too (the model carries only closecast.models and
    closecast.core), which then loads the model's forecaster."""
    fake = tmp_path / "elsewhere"
    for name in ("models", "core"):
        (fake / name).mkdir(parents=True)
        (fake / name / "__init__.py").write_text('OWNER = "another project"\n')
    rows, out = tmp_path / "rows.parquet", tmp_path / "predicted.parquet"
    _rows().to_parquet(rows)
    model_uri = f"models:/{MODEL_NAME}/1"
    done = subprocess.run(
        [sys.executable, "-c", _FOREIGN, str(fake), model_uri, current.uri, str(rows), str(out)],
        cwd=tmp_path,  # not the checkout: closecast comes from where it is installed
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    theirs = "another project"
    owners = ("models", "core", "loaded_models", "loaded_core", "now_models", "now_core")
    assert [found[k] for k in owners] == [theirs] * 6
    configure_mlflow(current.uri)
    here = mlflow.pyfunc.load_model(model_uri).predict(_rows())
    pd.testing.assert_frame_equal(pd.read_parquet(out), here)
    assert found["window"] == current.forecaster.window
    # one closecast, the installed one: never the model's core beside another version's tasks
    assert not [k for k in ("tasks", "core_file", "pyfunc_file") if "/code/closecast/" in found[k]]


def old_layout(folder: Path) -> tuple[Path, list[Path]]:
    """closecast.models and closecast.core as earlier versions logged them: top-level
    `models/` and `core/` importing each other by those names, the entry point
    `models/mlflow_model.py` doing `from models.pyfunc import CloseForecastModel`."""
    for part in (closecast.models, closecast.core):
        source = Path(part.__file__).parent
        shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("__pycache__"))
    for path in folder.rglob("*.py"):
        path.write_text(re.sub(r"\bclosecast\.(models|core)\b", r"\1", path.read_text()))
    entry = folder / "models" / "mlflow_model.py"
    assert "from models.pyfunc import CloseForecastModel" in entry.read_text()
    return entry, [folder / "models", folder / "core"]


@pytest.fixture(scope="module")
def old(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[Registry]:
    """Version 1, champion, logged as closecast did before it was one package."""
    root = tmp_path_factory.mktemp("old-layout")
    home = new_home(root / "home", mlflow_template)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = configure_mlflow(uri)
    experiment = client.create_experiment("old", artifact_location=str(home / "artifacts"))
    forecaster = _forecaster(seed=1)
    entry, code = old_layout(root / "code")
    with own_imports(), tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(root / "code"))  # as the checkout's root was: MLflow runs the entry
        weights, spec = forecaster.save(Path(tmp))
        with mlflow.start_run(run_id=client.create_run(experiment).info.run_id):
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(entry),
                artifacts={"weights": str(weights), "spec": str(spec)},
                code_paths=[str(path) for path in code],
                signature=signature(forecaster),
                pip_requirements=model_requirements(),
            )
    version = mlflow.register_model(info.model_uri, MODEL_NAME).version
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    yield Registry(uri, forecaster)
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.fixture
def loading_old(old: Registry) -> Iterator[Registry]:
    """The old registry as the tracking URI, its code's imports undone after the test."""
    configure_mlflow(old.uri)
    with own_imports():
        yield old


def test_mlflow_loads_and_runs_a_model_logged_by_an_earlier_version(loading_old: Registry) -> None:
    """MLflow loads it with the code it carries, which predicts as this code does."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/1")
    assert type(model.unwrap_python_model()).__module__ == "models.pyfunc"  # its own copy
    predicted = model.predict(_rows())
    pd.testing.assert_frame_equal(predicted, _expected(loading_old.forecaster, _rows()))
    served = load_version(loading_old.uri, "1")
    pd.testing.assert_frame_equal(predict_next(served, _rows()), predicted)


def test_closecast_rebuilds_the_forecaster_of_an_earlier_version_with_its_own_code(
    loading_old: Registry,
) -> None:
    """`load_forecaster` (the gate's re-score) and the champion lookup (predict) work on it:
    the forecaster comes from its weights and spec, as this code's class."""
    forecaster = load_forecaster(f"models:/{MODEL_NAME}/1")
    assert type(forecaster) is Forecaster
    pd.testing.assert_frame_equal(
        _expected(forecaster, _rows()), _expected(loading_old.forecaster, _rows())
    )
    champion = find_champion(loading_old.uri)
    assert (champion.version, champion.window, champion.features) == ("1", 10, FEATURES)
