from dataclasses import fields
from pathlib import Path

import pytest

from closecast.core.config import PipelineConfig, TrainConfig
from closecast.models.training import FitSettings


def test_mlflow_uri_is_the_field_else_the_environment_else_the_home_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tracking_uri wins; without it $MLFLOW_TRACKING_URI; without both <home>/mlflow.db."""
    config = PipelineConfig(home=tmp_path)
    assert config.mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert config.mlflow_uri == "http://127.0.0.1:5000"  # read when used, not when built
    assert config.model_dump(mode="json")["tracking_uri"] is None
    pinned = PipelineConfig(home=tmp_path, tracking_uri="http://127.0.0.1:6000")
    assert pinned.mlflow_uri == "http://127.0.0.1:6000"


def test_fit_settings_take_every_shared_field_from_the_train_config() -> None:
    """FitSettings carries TrainConfig's values, and its defaults are TrainConfig's."""
    train = TrainConfig(
        epochs=7, batch_size=5, learning_rate=0.01, patience=2, grad_clip=0.5, seed=3
    )
    settings = FitSettings.from_config(train)
    shared = [f.name for f in fields(FitSettings) if f.name in TrainConfig.model_fields]
    assert shared == ["epochs", "batch_size", "learning_rate", "patience", "grad_clip", "seed"]
    assert {name: getattr(settings, name) for name in shared} == train.model_dump(
        include=set(shared)
    )
    defaults = FitSettings()
    assert {name: getattr(defaults, name) for name in shared} == TrainConfig().model_dump(
        include=set(shared)
    )
