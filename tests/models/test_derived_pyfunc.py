"""A model that reads range22 predicts through the logged pyfunc, from raw OHLCV rows, as in memory."""

from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from closecast.core.config import DistributionName, TrainConfig, WindowConfig
from closecast.models.calibration import normal_calibration
from closecast.models.encoding import VOL_FLOOR, Encoding
from closecast.models.forecaster import FORECAST_COLUMNS, Forecaster
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import ScaleModel, spans_for_window
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.features import build_features, latest_rows
from closecast.tasks.modeling.training import train_model
from closecast.tasks.modeling.windows import build_windows, window_columns
from closecast.tasks.registry.logged_model import log_forecaster
from tests.mlflow_fixtures import new_home
from tests.tasks.test_derived_features import _prices


def test_range22_model_predicts_through_the_pyfunc_as_in_memory(
    tmp_path: Path, mlflow_template: Path
) -> None:
    """Trained with close,range22: the pyfunc gets input_rows raw rows per ticker (window + 21)
    and returns the in-memory forecast; a ticker given only the window is insufficient_history."""
    frames = {"AAA": _prices(260, 0), "BBB": _prices(260, 1)}
    config = WindowConfig(features=["close", "range22"])
    features = build_features(frames, window_columns(config.features))
    as_of = frames["AAA"].index[-1].date()
    data = build_windows(features, config, as_of)
    torch.manual_seed(0)
    forecaster = train_model(
        data, LSTMConfig(hidden_size=8), TrainConfig(epochs=2, device="cpu")
    ).forecaster
    assert forecaster.intervals is not None
    assert forecaster.distributional and forecaster.head in ("lstm", "har")  # spec 3
    assert forecaster.input_columns == ("ticker", "date", "close", "high", "low")
    assert forecaster.input_rows == 10 + 21
    in_memory = forecaster.predict_distribution(data.latest.windows, data.latest.tickers)

    rows = latest_rows(frames, ["AAA", "BBB"], forecaster.input_rows)
    home = new_home(tmp_path / "home", mlflow_template)
    client = configure_mlflow(f"sqlite:///{home / 'mlflow.db'}")
    experiment = client.create_experiment("derived", artifact_location=str(home / "artifacts"))
    uri = log_forecaster(forecaster, client.create_run(experiment).info.run_id, rows)
    try:
        model = mlflow.pyfunc.load_model(uri)
        predicted = model.predict(rows)
        assert list(predicted["status"]) == ["ok", "ok"]
        for column in FORECAST_COLUMNS:
            np.testing.assert_allclose(predicted[column], in_memory[column], rtol=1e-9)
        np.testing.assert_allclose(
            forecaster.predict_frame(rows)["predicted_close"], in_memory["predicted_close"]
        )
        short = rows.groupby("ticker").tail(forecaster.window)  # only the window's rows
        refused = model.predict(short)
        assert list(refused["status"]) == ["insufficient_history"] * 2
        assert refused["message"].iloc[0] == (
            "10 rows; the model's window needs 10 and its features 21 rows before it"
        )
    finally:
        mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("distribution", ["none", "student_t"])
def test_the_pyfunc_rejects_a_bad_row_in_the_lookback_not_only_in_the_window(
    distribution: DistributionName,
) -> None:
    """A zero low 20 rows before the window's end would poison range22: invalid_data, named.
    The same for a point head and a distributional one (which has a HAR scale)."""
    torch.manual_seed(0)
    module = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), n_features=2)
    intervals, head = None, None
    if distribution != "none":  # its forecast needs the HAR scale, and a head
        scale = ScaleModel(spans_for_window(10), (0.2,) * 6)
        intervals, head = Intervals(scale, normal_calibration()), "har"
    encoding = Encoding(features=("close", "range22"))
    forecaster = Forecaster(module, encoding, 10, intervals=intervals, head=head)
    rows = latest_rows({"AAA": _prices(80)}, ["AAA"], forecaster.input_rows)
    assert forecaster.predict_frame(rows)["status"].iloc[0] == "ok"
    rows.loc[rows.index[3], "low"] = 0.0  # in the lookback, before the window
    table = forecaster.predict_frame(rows)
    assert table["status"].iloc[0] == "invalid_data" and "low is 0" in table["message"].iloc[0]


def test_derived_features_are_encoded_scale_free_and_finite() -> None:
    """range22 per unit of the window's σ (0 when as volatile as the window), floored when flat;
    volume60 as log1p(r) - log 2 (0 on a usual day); the same for a price level 100x higher."""
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (4, 10)), axis=1))  # (N, T)
    sigma = 100 * np.diff(np.log(close), axis=1).std(axis=1)  # (N,) window σ in percent
    range22 = np.repeat(sigma[:, None] / 100, 10, axis=1)  # as volatile as each window
    range22[3] = 0.0  # a flat range: floored, not -inf
    volume60 = np.ones((4, 10))
    volume60[3] = 0.0
    windows = np.stack([close, range22, volume60], axis=-1)  # (N, T, 3)
    encoding = Encoding(features=("close", "range22", "volume60"))
    encoded = encoding.inputs(windows)
    scaled = encoding.inputs(windows * np.array([100.0, 1.0, 1.0]))
    assert np.isfinite(encoded).all()
    np.testing.assert_allclose(encoded, scaled, atol=1e-5)
    np.testing.assert_allclose(encoded[:3, :, 1], 0.0, atol=1e-5)
    np.testing.assert_allclose(encoded[3, :, 1], np.log(VOL_FLOOR / sigma[3]), rtol=1e-5)
    np.testing.assert_allclose(encoded[:3, :, 2], 0.0, atol=1e-6)
    np.testing.assert_allclose(encoded[3, :, 2], -np.log(2.0), rtol=1e-6)
    log_return = Encoding(features=("close", "range22"), target="log_return")
    np.testing.assert_allclose(
        log_return.inputs(windows[:, :, :2])[:3, :, 1],
        np.log(np.repeat(sigma[:3, None], 10, 1)),
        rtol=1e-5,
    )


@pytest.mark.parametrize("features", [("close", "volume", "open"), ("close",)])
def test_default_features_read_and_need_what_they_did(features: tuple[str, ...]) -> None:
    module = LSTMForecaster(LSTMConfig(hidden_size=8, distribution="none"), len(features))
    forecaster = Forecaster(module, Encoding(features=features), 10)
    assert forecaster.input_rows == 10
    assert forecaster.input_columns == ("ticker", "date", *features)
