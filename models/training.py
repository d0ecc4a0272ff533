"""The training loop: small named steps, no MLflow, no Prefect.

Callers observe progress through `on_epoch_end(epoch, metrics)`.
"""

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

EpochCallback = Callable[[int, dict[str, float]], None]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass(frozen=True)
class FitSettings:
    """How to optimise: Adam on MSE, early stopping on validation loss."""

    epochs: int = 50
    batch_size: int = 32
    learning_rate: float = 1e-3
    patience: int | None = 5  # None: train every epoch, keep the last weights
    grad_clip: float | None = 1.0
    seed: int = 42


@dataclass
class FitResult:
    """What training did, epoch by epoch."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = 0
    epochs_trained: int = 0
    train_seconds: float = 0.0


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weights, dropout) and return a generator for shuffling."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def train_epoch(
    model: nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    settings: FitSettings,
    generator: torch.Generator,
) -> float:
    """One pass over shuffled training windows; returns the mean MSE."""
    model.train()
    n = len(inputs)
    order = torch.randperm(n, generator=generator).to(inputs.device)
    total = torch.zeros((), device=inputs.device)
    for start in range(0, n, settings.batch_size):
        index = order[start : start + settings.batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(inputs[index]), targets[index])  # (b, T, F) -> (b,)
        loss.backward()
        if settings.grad_clip is not None:
            nn.utils.clip_grad_norm_(model.parameters(), settings.grad_clip)
        optimizer.step()
        total += loss.detach() * len(index)
    return float(total) / n


def evaluate(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean MSE over all windows, in eval mode (no dropout)."""
    model.eval()
    with torch.inference_mode():
        return float(F.mse_loss(model(inputs), targets))


def make_optimizer(model: nn.Module, learning_rate: float) -> torch.optim.Optimizer:
    """Adam; the fused kernel does one launch per step instead of one per tensor."""
    return torch.optim.Adam(model.parameters(), lr=learning_rate, fused=True)


def fit(
    model: nn.Module,
    train: tuple[torch.Tensor, torch.Tensor],
    validation: tuple[torch.Tensor, torch.Tensor],
    settings: FitSettings,
    on_epoch_end: EpochCallback | None = None,
) -> FitResult:
    """Train `model` in place; with early stopping, the best weights are restored.

    Raises:
        TrainingDiverged: when a loss is NaN or infinite.
        ValueError: when there are no training or validation windows.
    """
    if len(train[0]) == 0 or len(validation[0]) == 0:
        raise ValueError(
            f"need training and validation windows, got {len(train[0])} and {len(validation[0])}"
        )
    generator = seed_everything(settings.seed)
    optimizer = make_optimizer(model, settings.learning_rate)
    result = FitResult()
    best_state = copy.deepcopy(model.state_dict())
    started = time.perf_counter()
    for epoch in range(1, settings.epochs + 1):
        train_loss = train_epoch(model, *train, optimizer, settings, generator)
        val_loss = evaluate(model, *validation)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(
                f"loss became non-finite at epoch {epoch} (train {train_loss}, val {val_loss})"
            )
        metrics = {"train_loss": train_loss, "val_loss": val_loss}
        result.history.append({"epoch": epoch, **metrics})
        result.epochs_trained = epoch
        if on_epoch_end is not None:
            on_epoch_end(epoch, metrics)
        if val_loss < result.best_val_loss:
            result.best_val_loss, result.best_epoch = val_loss, epoch
            if settings.patience is not None:
                best_state = copy.deepcopy(model.state_dict())
        elif settings.patience is not None and epoch - result.best_epoch >= settings.patience:
            break
    if settings.patience is not None:
        model.load_state_dict(best_state)
    result.train_seconds = time.perf_counter() - started
    return result
