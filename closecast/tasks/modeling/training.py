"""Training: encode the windows once, fit one global LSTM across all tickers."""

from dataclasses import dataclass, replace

import numpy as np
import torch

from closecast.core.config import TrainConfig
from closecast.models.calibration import normal_calibration
from closecast.models.encoding import Encoding
from closecast.models.forecaster import ENCODE_CHUNK, Forecaster
from closecast.models.heads import choose_head
from closecast.models.intervals import Intervals, fit_base_scale, fit_intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.training import (
    EpochCallback,
    EpochWindows,
    FitResult,
    FitSettings,
    Tensors,
    fit,
    fit_output_scale,
    scale_output,
    scale_to_windows,
    seed_everything,
)
from closecast.tasks.modeling.windows import Dataset, WindowSet


@dataclass
class TrainedModel:
    """A fitted forecaster and how its training went."""

    forecaster: Forecaster
    fit: FitResult
    device: str


def resolve_device(device: str) -> torch.device:
    """`auto` picks CUDA when available, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but CUDA is not available")
    return torch.device(device)


def encode_split(
    forecaster: Forecaster, windows: WindowSet, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encoded inputs (N, T, F) and targets (N,) of one split, as tensors on `device`.

    Encoded ENCODE_CHUNK windows at a time into the float32 result: each window
    is encoded on its own, and the float64 work arrays stay small.
    """
    n, steps = len(windows), windows.windows.shape[1]
    inputs = np.empty((n, steps, len(forecaster.features)), dtype=np.float32)
    targets = np.empty(n, dtype=np.float32)
    for start in range(0, n, ENCODE_CHUNK):
        rows = slice(start, start + ENCODE_CHUNK)
        raw, bounds = windows.windows[rows], forecaster.window_bounds(windows.tickers[rows])
        inputs[rows] = forecaster.encoding.inputs(raw, bounds)
        targets[rows] = forecaster.encode_targets(raw, windows.next_close[rows], bounds)
    return torch.from_numpy(inputs).to(device), torch.from_numpy(targets).to(device)


@dataclass(frozen=True)
class Samples:
    """The training and validation windows a run fits on beyond the epochs' own: the HAR
    scale, the calibration, the heads' scores, validation loss and the shrink factor."""

    train: WindowSet
    validation: WindowSet


def bounded_samples(dataset: Dataset, config: TrainConfig) -> Samples:
    """At most `config.epoch_windows` of each split, seeded (all of a smaller one)."""
    return Samples(
        dataset.train.sample(config.epoch_windows, [config.seed, 0]),
        dataset.validation.sample(config.epoch_windows, [config.seed, 1]),
    )


def epoch_windows(
    forecaster: Forecaster, train: WindowSet, config: TrainConfig, device: torch.device
) -> EpochWindows:
    """What each epoch trains on: every window, encoded once, when there are no more than
    `config.epoch_windows`; else a fresh seeded sample of that many, encoded for its epoch
    (memory and time per epoch then stay flat however large the universe)."""
    budget = config.epoch_windows
    if budget is None or len(train) <= budget:
        return encode_split(forecaster, train, device)

    def sampled(epoch: int) -> Tensors:
        return encode_split(forecaster, train.sample(budget, [config.seed, 2, epoch]), device)

    return sampled


def train_model(
    dataset: Dataset,
    lstm: LSTMConfig,
    config: TrainConfig,
    on_epoch_end: EpochCallback | None = None,
) -> TrainedModel:
    """Fit one LSTM on every ticker's training windows, early-stopped on validation.

    A distributional head (`lstm.distribution`, a return target) learns the
    next return's distribution around the HAR scale, which is fitted on the
    training windows first; then the run calibrates both its heads and keeps
    the one that scores better on validation (models/heads.py). The
    reference target (minmax_close) predicts a close, not a return: it trains
    a point head whatever `lstm.distribution` says.

    With a return target and `config.shrink_output`, the predicted returns
    (a distribution's location) are then shrunk toward zero (the naive
    forecast) by the factor that the validation windows support
    (`closecast.models.training.fit_output_scale`); the factor is baked into
    the dense head, so a saved model predicts with it.
    """
    device = resolve_device(config.device)
    encoding = Encoding(features=dataset.features, target=dataset.target)
    if not encoding.predicts_return:
        lstm = replace(lstm, distribution="none")
    samples = bounded_samples(dataset, config)
    scale = None  # a distributional head's targets are in units of the HAR scale: it comes first
    if lstm.distribution != "none":
        scale = fit_base_scale(dataset.window, dataset.columns, samples.train)
    seed_everything(config.seed)  # before the module exists: its initial weights are seeded
    forecaster = Forecaster(
        module=LSTMForecaster(lstm, n_features=len(dataset.features)),
        encoding=encoding,
        window=dataset.window,
        bounds=dataset.bounds,
        intervals=None if scale is None else Intervals(scale, normal_calibration()),
    )
    train = epoch_windows(forecaster, dataset.train, config, device)
    validation = encode_split(forecaster, samples.validation, device)
    settings = scale_to_windows(
        FitSettings.from_config(config), len(samples.train), config.growth_windows
    )
    forecaster.module.to(device)
    result = fit(forecaster.module, train, validation, settings, on_epoch_end)
    if config.shrink_output and forecaster.encoding.predicts_return:
        result.output_scale = fit_output_scale(forecaster.module, *validation)
        scale_output(forecaster.module, result.output_scale)
    forecaster.module.cpu()
    if scale is not None:
        choose_head(forecaster, scale, samples.train, samples.validation)
    else:
        forecaster.intervals = fit_intervals(
            forecaster, dataset.columns, samples.train, samples.validation
        )
    return TrainedModel(forecaster=forecaster, fit=result, device=str(device))
