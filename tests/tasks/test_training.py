"""Training task: one seeded global model; a diverging loss fails the run and registers nothing."""

import re
import sys
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient
from prefect.logging import disable_run_logger

from closecast.cli.app import main
from closecast.core.config import DistributionName, TrainConfig, WindowConfig
from closecast.models.forecaster import Forecaster
from closecast.models.lstm import LSTMConfig
from closecast.tasks.modeling import steps
from closecast.tasks.modeling import training as training_module
from closecast.tasks.modeling.training import (
    bounded_samples,
    encode_split,
    epoch_windows,
    resolve_device,
    train_model,
)
from closecast.tasks.modeling.windows import Dataset, build_windows
from tests.core.test_progress import Terminal
from tests.fixtures import walk_frames


def _frames(n: int = 120) -> dict[str, pd.DataFrame]:
    """Two tickers of n business days of random-walk features: close, volume, open, high,
    low and the derived ones, read from WARM_UP rows more of prices."""
    return walk_frames(n)


@pytest.fixture
def dataset() -> Dataset:
    frames = _frames()
    return build_windows(frames, WindowConfig(), frames["AAA"].index[-1].date())


def test_same_seed_gives_identical_predictions(dataset: Dataset) -> None:
    """Two trainings with one seed predict bit-identical closes; another seed does not."""
    lstm = LSTMConfig(hidden_size=8)
    predictions = []
    for seed in (3, 3, 4):
        config = TrainConfig(epochs=2, seed=seed, device="cpu", shrink_output=False)
        trained = train_model(dataset, lstm, config)
        predictions.append(
            trained.forecaster.predict_windows(dataset.test.windows, dataset.test.tickers)
        )
        assert trained.device == "cpu"
        assert trained.fit.epochs_trained == 2
    assert np.array_equal(predictions[0], predictions[1])
    assert not np.array_equal(predictions[0], predictions[2])
    assert np.all(np.isfinite(predictions[0])) and np.all(predictions[0] > 0)


def test_many_windows_train_with_larger_steps_and_less_patience(dataset: Dataset) -> None:
    """With 5-8× growth_windows training windows, the batch is 4× the configured one, the
    learning rate 2× and the patience 2 epochs; with growth off, all are as configured."""
    windows = len(dataset.train)  # 2 tickers x ~80 training windows
    lstm = LSTMConfig(hidden_size=8)
    base = TrainConfig(epochs=1, batch_size=4, learning_rate=0.01, patience=5, device="cpu")
    grown = train_model(dataset, lstm, base.model_copy(update={"growth_windows": windows // 5}))
    assert (grown.fit.batch_size, grown.fit.patience) == (16, 2)
    assert grown.fit.learning_rate == pytest.approx(0.02)
    kept = train_model(dataset, lstm, base.model_copy(update={"growth_windows": None}))
    assert (kept.fit.batch_size, kept.fit.learning_rate, kept.fit.patience) == (4, 0.01, 5)


@pytest.mark.parametrize("distribution", ["none", "student_t"])
def test_a_split_encoded_in_chunks_equals_one_encoding(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch, distribution: DistributionName
) -> None:
    """encode_split, 7 windows at a time into float32 arrays, equals encoding them at once.
    A point head learns the encoded target; a distributional one z = log(next / last) / σ̂,
    the next log return in units of the window's HAR scale."""
    lstm = LSTMConfig(hidden_size=8, distribution=distribution)
    forecaster = train_model(dataset, lstm, TrainConfig(epochs=1)).forecaster
    assert forecaster.distributional == (distribution != "none")
    monkeypatch.setattr(training_module, "ENCODE_CHUNK", 7)
    inputs, targets = encode_split(forecaster, dataset.train, torch.device("cpu"))
    split = dataset.train
    expected = forecaster.encoding.inputs(split.windows)
    assert inputs.dtype == torch.float32 and inputs.shape == expected.shape
    np.testing.assert_array_equal(inputs.numpy(), expected)
    if distribution == "none":
        expected_targets = forecaster.encoding.targets(split.next_close, split.windows)
    else:
        assert forecaster.intervals is not None
        sigma_hat = forecaster.intervals.base_scale(split.windows, dataset.columns)  # (N,)
        log_return = np.log(split.next_close / split.last_close)
        expected_targets = (log_return / sigma_hat).astype(np.float32)
        assert np.isfinite(expected_targets).all() and (sigma_hat > 0).all()
    np.testing.assert_array_equal(targets.numpy(), expected_targets)


def test_one_model_serves_every_ticker(dataset: Dataset) -> None:
    """The global model was trained on both tickers' windows and predicts both."""
    assert set(dataset.train.tickers) == {"AAA", "BBB"}
    trained = train_model(dataset, LSTMConfig(hidden_size=8), TrainConfig(epochs=1))
    latest = trained.forecaster.predict_windows(dataset.latest.windows, dataset.latest.tickers)
    assert list(dataset.latest.tickers) == ["AAA", "BBB"]
    assert latest.shape == (2,)
    last_close = dataset.latest.windows[:, -1, 0]
    assert np.all(np.abs(latest / last_close - 1) < 0.2)  # a close near the last one


@pytest.mark.parametrize("forced", [None, 0.4], ids=["validation", "forced_0.4"])
@pytest.mark.parametrize("distribution", ["none", "student_t"])
def test_predicted_returns_are_shrunk_by_the_validation_factor(
    dataset: Dataset,
    distribution: DistributionName,
    forced: float | None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With shrink_output, the model predicts its unshrunk log return times a factor in [0, 1]:
    a point head's one output, a distribution's location (its multiplier and tail stay).
    These tiny fits gate the factor to 0, so a forced 0.4 shows it is a product, not a reset."""
    if forced is not None:
        monkeypatch.setattr(training_module, "fit_output_scale", lambda *_: forced)
    lstm = LSTMConfig(hidden_size=8, distribution=distribution)
    encoded = []
    for shrink in (False, True):
        config = TrainConfig(epochs=2, seed=5, shrink_output=shrink)
        trained = train_model(dataset, lstm, config)
        inputs = trained.forecaster.encoding.inputs(dataset.test.windows)
        encoded.append(trained.forecaster.predict_encoded(inputs))
    factor = trained.fit.output_scale
    assert 0.0 <= factor <= 1.0
    assert forced is None or factor == forced
    if distribution == "none":
        np.testing.assert_allclose(encoded[1], factor * encoded[0], rtol=1e-5, atol=1e-7)
    else:
        unshrunk, shrunk = encoded  # (N, 3) each: location, log multiplier, ν's raw output
        assert np.abs(unshrunk[:, 0]).max() > 1e-3  # a location to shrink
        np.testing.assert_allclose(shrunk[:, 0], factor * unshrunk[:, 0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(shrunk[:, 1:], unshrunk[:, 1:], rtol=1e-5, atol=1e-7)
        assert np.abs(unshrunk[:, 1:]).max() > 1e-3  # they moved from zero, and stayed


def test_the_minmax_target_is_never_shrunk() -> None:
    """Shrinking toward zero only means "no change" for returns; minmax_close keeps scale 1."""
    frames = _frames()
    data = build_windows(
        frames, WindowConfig(target="minmax_close"), frames["AAA"].index[-1].date()
    )
    trained = train_model(data, LSTMConfig(hidden_size=8), TrainConfig(epochs=1))
    assert trained.fit.output_scale == 1.0
    # It predicts a close, not a return: a point head, whatever the default distribution.
    assert trained.forecaster.module.config.distribution == "none"
    assert not trained.forecaster.distributional and trained.forecaster.head is None


def test_a_default_run_keeps_the_head_that_scored_lower_on_validation(dataset: Dataset) -> None:
    """The default (distributional) network is calibrated with both heads; the run keeps the
    one whose validation interval score is lower, and says both scores."""
    trained = train_model(dataset, LSTMConfig(hidden_size=8), TrainConfig(epochs=1))
    forecaster = trained.forecaster
    assert forecaster.distributional and forecaster.intervals is not None
    scores = forecaster.head_scores
    assert set(scores) == {"lstm", "har"} and all(np.isfinite(list(scores.values())))
    assert forecaster.head == ("lstm" if scores["lstm"] < scores["har"] else "har")


def test_on_a_terminal_the_training_step_draws_an_epoch_bar(
    dataset: Dataset, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The train-model step on a terminal: rich's bar counts the epochs trained (3 of 3)."""
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("TTY_INTERACTIVE", "TTY_COMPATIBLE", "FORCE_COLOR"):
        monkeypatch.delenv(name, raising=False)
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    config = TrainConfig(epochs=3, patience=10, device="cpu")
    with disable_run_logger():
        trained = steps.train_model.fn(dataset, LSTMConfig(hidden_size=8), config)
    assert trained.fit.epochs_trained == 3
    drawn = re.sub(r"\x1b\[[0-9;]*m", "", terminal.getvalue())
    assert "train" in drawn and "3/3" in drawn and "epochs" in drawn, repr(drawn)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_is_refused() -> None:
    """Asking for CUDA where there is none names the device; auto falls back to the CPU."""
    with pytest.raises(ValueError, match="'cuda'"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.usefixtures("prefect_harness")
def test_diverging_training_exits_1_and_registers_nothing(
    tmp_path: Path,
    csv_folder: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A NaN loss fails the nightly run (exit 1, one error line), registers nothing, no report."""
    real_targets = Forecaster.encode_targets  # what the network learns, of any head

    def poisoned(self: Forecaster, *args: object, **kwargs: object) -> np.ndarray:
        targets = real_targets(self, *args, **kwargs)  # type: ignore[arg-type]
        targets[0] = np.nan  # one corrupt training target: every loss after it is NaN
        return targets

    monkeypatch.setattr(Forecaster, "encode_targets", poisoned)
    home = tmp_path / "home"
    code = main(
        ["run", "--source", f"csv:{csv_folder}", "--tickers", "AAA,BBB", "--home", str(home),
         "--epochs", "2", "--hidden", "8"]
    )  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert code == 1
    last = err.splitlines()[-1]  # MLflow logs its own set-up lines before it
    assert last.startswith("closecast: pipeline failed: training diverged")
    assert "non-finite at epoch 1" in last and "Traceback" not in err
    client = MlflowClient(f"sqlite:///{home / 'mlflow.db'}")
    assert client.search_registered_models() == []
    runs = client.search_runs([client.get_experiment_by_name("closecast").experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    assert not (home / "reports").exists()


def test_training_needs_validation_windows() -> None:
    """A dataset whose validation span is empty cannot train: the error says so."""
    frames = _frames()
    data = build_windows(frames, WindowConfig(), date(2021, 6, 30))
    empty = data.validation.select(np.zeros(len(data.validation), dtype=bool))
    broken = Dataset(**{**data.__dict__, "validation": empty})
    with pytest.raises(ValueError, match="validation windows"):
        train_model(broken, LSTMConfig(hidden_size=8), TrainConfig(epochs=1))


def test_intervals_are_ordered_and_never_zero_width_on_real_data(
    sp500_frames: dict[str, pd.DataFrame],
) -> None:
    """On real S&P 500 prices every forecast is ordered
    lower_95 ≤ lower_80 ≤ predicted ≤ upper_80 ≤ upper_95, with positive width, for every
    ticker of the file, whether the model trained on it or not."""
    from closecast.tasks.data.validate import validate_prices
    from closecast.tasks.modeling.features import compute_features
    from closecast.tasks.modeling.windows import window_columns

    validated = validate_prices(sp500_frames).frames
    config = WindowConfig()
    columns = window_columns(config.features)
    trained_on = {t: compute_features(validated[t], columns) for t in ("AAPL", "XOM", "GE", "F")}
    as_of = max(f.index[-1] for f in trained_on.values()).date()
    data = build_windows(trained_on, config, as_of)
    forecaster = train_model(
        data, LSTMConfig(hidden_size=8), TrainConfig(epochs=2, device="cpu")
    ).forecaster
    assert forecaster.intervals is not None and forecaster.intervals.calibration.n > 1000

    everyone = {t: compute_features(f, columns) for t, f in validated.items() if len(f) > 20}
    latest = build_windows(everyone, config, as_of).latest
    forecast = forecaster.predict_distribution(latest.windows, latest.tickers)
    ordered = np.stack(
        [forecast[c] for c in ("lower_95", "lower_80", "predicted_close", "upper_80", "upper_95")]
    )  # (5, N)
    assert len(latest) > 480 and np.isfinite(ordered).all()
    assert (np.diff(ordered, axis=0) >= 0).all()
    assert (forecast["upper_80"] - forecast["lower_80"] > 0).all()


def test_a_flat_window_gets_the_volatility_floor_not_a_zero_width_interval() -> None:
    """A halted series (every price equal, high = low) still gets an interval of positive width."""
    frames = _frames()
    data = build_windows(frames, WindowConfig(), frames["AAA"].index[-1].date())
    forecaster = train_model(
        data, LSTMConfig(hidden_size=8), TrainConfig(epochs=1, device="cpu")
    ).forecaster
    flat = np.full((1, 10, len(data.columns)), 50.0)  # (1, T, C): every price 50
    # and so no high-low range, and a usual day's volume
    halted = {"volume": 1e5, "range22": 0.0, "range66": 0.0, "volume60": 1.0}
    for name, value in halted.items():
        if name in data.columns:
            flat[:, :, data.columns.index(name)] = value
    forecast = forecaster.predict_distribution(flat, np.array(["AAA"], dtype=object))
    assert forecast["lower_95"][0] < forecast["lower_80"][0] < 50.0 * 1.0001
    assert forecast["upper_95"][0] > forecast["upper_80"][0] > 50.0 * 0.9999
    assert forecast["upper_80"][0] - forecast["lower_80"][0] > 50.0 * 1e-4


def test_beyond_the_budget_each_epoch_trains_on_a_fresh_seeded_sample() -> None:
    """With more training windows than epoch_windows, each epoch encodes its own seeded
    sample of that many (the same for the same seed and epoch, another for the next epoch),
    the fits beside the epochs read samples of that many too, and the batch grows for the
    budget, not the universe; within the budget every window is read, as --full-retrain."""
    frames = _frames(250)
    data = build_windows(frames, WindowConfig(), frames["AAA"].index[-1].date())
    assert len(data.train) > 300  # 2 tickers x ~190 training windows
    lstm = LSTMConfig(hidden_size=8)
    config = TrainConfig(epochs=2, device="cpu", epoch_windows=256, growth_windows=70)
    forecaster = train_model(data, lstm, config).forecaster
    per_epoch = epoch_windows(forecaster, data.train, config, torch.device("cpu"))
    assert callable(per_epoch)
    first, again, second = per_epoch(1), per_epoch(1), per_epoch(2)
    assert first[0].shape == (256, 10, len(data.features))
    assert torch.equal(first[0], again[0]) and not torch.equal(first[0], second[0])
    samples = bounded_samples(data, config)
    assert (len(samples.train), len(samples.validation)) == (256, len(data.validation))
    whole = epoch_windows(
        forecaster,
        data.train,
        config.model_copy(update={"epoch_windows": None}),
        torch.device("cpu"),
    )
    assert isinstance(whole, tuple)
    assert torch.equal(whole[0], encode_split(forecaster, data.train, torch.device("cpu"))[0])
    budgeted = train_model(data, lstm, config)
    full = train_model(data, lstm, config.model_copy(update={"epoch_windows": None}))
    assert (budgeted.fit.batch_size, full.fit.batch_size) == (64, 128)  # 256 vs ~380 windows
    assert budgeted.fit.epochs_trained == 2
