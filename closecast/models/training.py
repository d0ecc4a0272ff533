"""The training loop: small named steps, no MLflow, no Prefect.

Callers observe progress through `on_epoch_end(epoch, metrics)`.
"""

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Protocol

import torch
from threadpoolctl import ThreadpoolController
from torch import nn

from closecast.core.config import DistributionName, TrainConfig
from closecast.models.distribution import nll_torch
from closecast.models.fused_step import FusedLSTMStep
from closecast.models.lstm import LSTMForecaster

EpochCallback = Callable[[int, dict[str, float]], None]
Tensors = tuple[torch.Tensor, torch.Tensor]  # inputs (N, T, F), targets (N,)
# An epoch's training windows: the same every epoch, or drawn for each epoch (1, 2, ...).
EpochWindows = Tensors | Callable[[int], Tensors]

# Measured with benchmarks/train_speed.py on the 2-core reference machine
# (hidden 32, windows/s, one thread vs two): batch 32 48k vs 42k; 256 and 512
# within noise of each other; 1024 85-90k vs 113-126k; 4096 65-73k vs
# 105-115k. While other processes kept both cores busy, two threads were 8-12x
# slower at every batch size (OpenMP's spinning workers fight them for the
# cores), so a second thread is used only where it clearly pays.
_PARALLEL_MIN_GATE_ELEMENTS = 1024 * 4 * 32  # batch · 4 · hidden
# One-sided 95% normal quantile: a shrink factor must clear chance at that level.
SHRINK_Z = 1.645
# The most `scale_to_windows` multiplies the batch by: beyond it is beyond what was measured.
MAX_BATCH_GROWTH = 32
# The fewest epochs without improvement early stopping waits, however many windows an epoch has.
MIN_PATIENCE = 2


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


_TRAIN = TrainConfig()  # the defaults come from the pipeline's config, typed once


@dataclass(frozen=True)
class FitSettings:
    """How to optimise: Adam on the head's loss (MSE or NLL), early stopping on validation loss.

    The pipeline's `TrainConfig` in the loop's terms (`from_config`), plus the
    two knobs only tests and benchmarks turn: `patience=None` and `fused_step`.
    """

    epochs: int = _TRAIN.epochs
    batch_size: int = _TRAIN.batch_size
    learning_rate: float = _TRAIN.learning_rate
    patience: int | None = _TRAIN.patience  # None: train every epoch, keep the last weights
    grad_clip: float | None = _TRAIN.grad_clip
    seed: int = _TRAIN.seed
    # On a CPU, a one-layer model trains with the hand-written step of
    # models/fused_step.py (same numbers, a fraction of the overhead).
    fused_step: bool = True

    @classmethod
    def from_config(cls, train: TrainConfig) -> "FitSettings":
        """The settings `train` describes: every field the two share, by name."""
        shared = {f.name for f in fields(cls)} & set(TrainConfig.model_fields)
        return cls(**train.model_dump(include=shared))


@dataclass
class FitResult:
    """What training did, epoch by epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_trained: int = 0
    train_seconds: float = 0.0
    output_scale: float = 1.0  # the shrink factor applied after training (1: none)
    # What training used (`scale_to_windows` may change the configured values).
    batch_size: int = 0
    learning_rate: float = 0.0
    patience: int | None = None


def scale_to_windows(settings: FitSettings, windows: int, per_batch: int | None) -> FitSettings:
    """Fewer, larger steps and a shorter wait for many training windows.

    From 2 × `per_batch` windows on, each doubling of `windows` doubles the
    batch (at most MAX_BATCH_GROWTH-fold) and raises the learning rate √2-fold
    (the square-root rule for Adam), and early stopping counts its patience
    in epochs of 2 × `per_batch` windows: it waits ⌈patience · 2·per_batch /
    windows⌉ epochs (at least MIN_PATIENCE, at most `patience`). An epoch over
    the S&P 500's 490k windows is then 1.9k steps of 256 instead of 15k of
    32, at half the cost per window, and training stops 2 epochs after the
    best instead of 5 (benchmarks/README.md; benchmarks/accuracy.py --growth
    compares it with batch 32 and patience 5). `per_batch=None` keeps the
    settings.
    """
    if per_batch is None or windows < 2 * per_batch:
        return settings
    growth = min(2 ** int(math.log2(windows / per_batch)), MAX_BATCH_GROWTH)
    patience = settings.patience
    if patience is not None:
        patience = min(patience, max(MIN_PATIENCE, math.ceil(patience * 2 * per_batch / windows)))
    return replace(
        settings,
        batch_size=settings.batch_size * growth,
        learning_rate=settings.learning_rate * math.sqrt(growth),
        patience=patience,
    )


def distribution_of(model: nn.Module) -> DistributionName:
    """What the model's head predicts: an LSTMForecaster's distribution, else none (MSE)."""
    return model.config.distribution if isinstance(model, LSTMForecaster) else "none"


def window_losses(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Each window's loss: squared error of a point head, NLL of a distributional one, (B,)."""
    return nll_torch(distribution_of(model), model(inputs), targets)  # (b, T, F) -> (b,)


class Stepper(Protocol):
    """One optimiser step on a batch, returning the batch's summed loss.

    A tensor where reading the number would wait for the device, else a float.
    """

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor | float: ...

    def release(self) -> None: ...


class AutogradStep:
    """The textbook step: forward, loss (MSE or NLL), backward, gradient clipping, Adam."""

    def __init__(self, model: nn.Module, settings: FitSettings) -> None:
        self.model = model
        self.grad_clip = settings.grad_clip
        # One kernel per step instead of one per parameter, on CPU and CUDA.
        self.optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, fused=True)

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = window_losses(self.model, inputs, targets).mean()  # (b, T, F) -> (b,) -> ()
        loss.backward()
        if self.grad_clip is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        return loss.detach() * len(inputs)

    def release(self) -> None:
        return None


def make_stepper(model: nn.Module, settings: FitSettings) -> Stepper:
    """The fused step for a one-layer float32 LSTMForecaster on a CPU, autograd otherwise."""
    first = next(model.parameters())
    on_cpu = first.device.type == "cpu" and first.dtype == torch.float32
    if (
        settings.fused_step
        and on_cpu
        and isinstance(model, LSTMForecaster)
        and model.config.num_layers == 1
    ):
        return FusedLSTMStep(model, settings.learning_rate, settings.grad_clip)
    return AutogradStep(model, settings)


def training_threads(batch_size: int, hidden_size: int) -> int:
    """CPU threads for training: one for small batches, every core for large ones."""
    if batch_size * 4 * hidden_size < _PARALLEL_MIN_GATE_ELEMENTS:
        return 1
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


@cache
def _blas_threads() -> ThreadpoolController:
    """NumPy's BLAS (OpenBLAS), found once: the fused step's matrix products run in it."""
    return ThreadpoolController()


@contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """Run the block with `count` threads for torch's ops and NumPy's BLAS, then restore both.

    Left alone, OpenBLAS runs a product above ~260k multiply-adds on every
    core; with another process on the cores its spinning workers made a fit
    10-20× slower (benchmarks/README.md).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with _blas_threads().limit(limits=count, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(previous)


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weights, dropout) and return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_epoch(
    model: nn.Module,
    stepper: Stepper,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled training windows; returns the mean loss."""
    model.train()
    n = len(inputs)
    order = torch.randperm(n, generator=generator).to(inputs.device)
    # One gather per epoch; every batch is then a contiguous slice.
    shuffled_inputs, shuffled_targets = inputs[order], targets[order]  # (N, T, F), (N,)
    total: torch.Tensor | float = 0.0
    for start in range(0, n, batch_size):
        stop = start + batch_size
        total += stepper.step(shuffled_inputs[start:stop], shuffled_targets[start:stop])
    return float(total) / n


def evaluate(
    model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 65_536
) -> float:
    """Mean loss over all windows (MSE or NLL), in eval mode (no dropout)."""
    model.eval()
    total = torch.zeros((), device=inputs.device)
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            stop = start + batch_size
            total += window_losses(model, inputs[start:stop], targets[start:stop]).sum()
    return float(total) / len(inputs)


def predicted_location(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The point the model predicts: its one output, or its distribution's location, (b,)."""
    out = model(inputs)  # (b, T, F) -> (b,) or (b, K)
    return out if out.ndim == 1 else out[:, 0]


def fit_output_scale(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    z: float = SHRINK_Z,
    batch_size: int = 65_536,
) -> float:
    """How much of its predicted move the model has earned on held-out windows, in [0, 1].

    λ̂ = Σŷy / Σŷ² is the least-squares factor for the outputs ŷ; it is
    lowered by `z` of its standard errors and clipped to [0, 1]. For a
    return target 0 is the naive forecast, so the model keeps only the part
    of its predicted move that the validation windows support beyond chance
    (one-sided, 95% with the default z), and predicts "no move" otherwise.
    z = 0 gives the plain least-squares factor.
    """
    model.eval()
    sums = torch.zeros(3, dtype=torch.float64, device=inputs.device)  # Σŷy, Σŷ², Σy²
    with torch.inference_mode():
        for start in range(0, len(inputs), batch_size):
            stop = start + batch_size
            predicted = predicted_location(model, inputs[start:stop]).double()  # (b,)
            actual = targets[start:stop].double()  # (b,)
            sums += torch.stack([predicted @ actual, predicted @ predicted, actual @ actual])
    along, norm, total = sums.tolist()
    if norm <= 0 or len(inputs) < 2:
        return 0.0
    factor = along / norm
    residual = max(total - along * factor, 0.0)  # Σ(y - λ̂ŷ)²
    standard_error = math.sqrt(residual / (len(inputs) - 1) / norm)
    return min(max(factor - z * standard_error, 0.0), 1.0)


def scale_output(model: LSTMForecaster, factor: float) -> None:
    """Multiply the dense head's point output (its weights and bias) by `factor`: the one
    output, or a distribution's location (the multiplier and tail stay)."""
    with torch.no_grad():
        model.head.weight[0].mul_(factor)
        model.head.bias[0].mul_(factor)


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _check_windows(train: Tensors, validation: Tensors) -> None:
    if len(train[0]) == 0 or len(validation[0]) == 0:
        raise ValueError(
            f"need training and validation windows, got {len(train[0])} and {len(validation[0])}"
        )


def fit(
    model: nn.Module,
    train: EpochWindows,
    validation: Tensors,
    settings: FitSettings,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Train `model` in place; with early stopping, the best weights are restored.

    Args:
        train: the training windows, or a function giving epoch e's (a fresh sample of
            a universe too large to read whole every epoch).

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
        ValueError: when there are no training or validation windows.
    """
    if not callable(train):
        _check_windows(train, validation)
    hidden_size = model.config.hidden_size if isinstance(model, LSTMForecaster) else 0
    threads = training_threads(settings.batch_size, hidden_size)
    result = FitResult(
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        patience=settings.patience,
    )
    started = time.perf_counter()
    with torch_threads(threads):
        generator = seed_everything(settings.seed)
        stepper = make_stepper(model, settings)
        try:
            best_state = _snapshot(model)
            for epoch in range(1, settings.epochs + 1):
                windows = train(epoch) if callable(train) else train
                _check_windows(windows, validation)
                train_loss = train_epoch(model, stepper, *windows, settings.batch_size, generator)
                val_loss = evaluate(model, *validation)
                if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
                    raise TrainingDiverged(
                        f"loss became non-finite at epoch {epoch} "
                        f"(train {train_loss}, val {val_loss}); lower --learning-rate "
                        "or check the input data"
                    )
                metrics = {"train_loss": train_loss, "val_loss": val_loss}
                result.history.append({"epoch": epoch, **metrics})
                result.epochs_trained = epoch
                if on_epoch_end is not None:
                    on_epoch_end(epoch, metrics)
                if val_loss < result.best_val_loss:
                    result.best_val_loss, result.best_epoch = val_loss, epoch
                    if settings.patience is not None:
                        best_state = _snapshot(model)
                elif (
                    settings.patience is not None and epoch - result.best_epoch >= settings.patience
                ):
                    break
        finally:
            stepper.release()
    if settings.patience is not None:
        model.load_state_dict(best_state)
    result.train_seconds = time.perf_counter() - started
    return result
