"""The training loop: fused and autograd steps agree, early stopping, clipping, divergence."""

import os
from dataclasses import replace

import pytest
import torch
from threadpoolctl import threadpool_info
from torch.nn import functional as F

from closecast.core.config import DistributionName
from closecast.models.distribution import nll_torch
from closecast.models.fused_step import FusedLSTMStep
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.training import (
    MAX_BATCH_GROWTH,
    MIN_PATIENCE,
    AutogradStep,
    FitSettings,
    TrainingDiverged,
    fit,
    fit_output_scale,
    make_stepper,
    scale_output,
    scale_to_windows,
    training_threads,
)


def _model(n_features: int, seed: int = 0, **config: float | str) -> LSTMForecaster:
    """A hidden-8 network; the default head (normal) unless `distribution` says otherwise."""
    torch.manual_seed(seed)
    return LSTMForecaster(LSTMConfig(hidden_size=8, **config), n_features=n_features)  # type: ignore[arg-type]


# The point head (MSE, the reference design) and the distributional heads (NLL): normal,
# the default, and student_t.
MSE_AND_NLL = ["none", "normal", "student_t"]


def _data(n: int, n_features: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (n, 6, F) whose target is a noisy function of the last step."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, n_features, generator=gen)
    y = 0.8 * x[:, -1, 0] - 0.3 * x[:, -2, 0] + 0.05 * torch.randn(n, generator=gen)
    return x, y


def _grad_norm(tensors: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.cat([t.reshape(-1) for t in tensors])))


def _autograd_step(
    model: LSTMForecaster,
    optimizer: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    grad_clip: float | None,
) -> float:
    """The reference step: autograd, clip_grad_norm_, Adam; returns the batch's mean loss
    (MSE for the point head, the torch NLL of models/distribution.py otherwise)."""
    optimizer.zero_grad()
    distribution = model.config.distribution
    if distribution == "none":
        loss = F.mse_loss(model(x), y)
    else:
        loss = nll_torch(distribution, model(x), y).mean()
    loss.backward()
    if grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    return loss.item()


def _step_both_ways(
    n_features: int,
    x: torch.Tensor,
    y: torch.Tensor,
    batches: list[slice],
    grad_clip: float | None,
    distribution: DistributionName,
) -> None:
    """One fused and one autograd step per batch, same dropout masks; same losses, weights.

    A distributional head starts at zero, so its first step moves only the head; the
    LSTM's weights follow from the second step on.
    """
    fused_model = _model(n_features, distribution=distribution)
    reference = _model(n_features, distribution=distribution)
    fused = FusedLSTMStep(fused_model, 1e-2, grad_clip)
    optimizer = torch.optim.Adam(reference.parameters(), lr=1e-2)
    reference.train()
    for step, rows in enumerate(batches):
        torch.manual_seed(100 + step)  # the same dropout mask on both sides
        sse = fused.step(x[rows], y[rows])
        torch.manual_seed(100 + step)
        loss = _autograd_step(reference, optimizer, x[rows], y[rows], grad_clip)
        assert float(sse) / len(y[rows]) == pytest.approx(loss, rel=1e-5), step
    fused.release()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fused_model.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    initial = _model(n_features, distribution=distribution).state_dict()
    for name in ("head.weight", "lstm.weight_hh_l0"):
        moved = fused_model.state_dict()[name] - initial[name]
        assert float(moved.abs().max()) > 1e-3, name  # the weights did move


@pytest.mark.parametrize("distribution", ["none", "normal", "student_t"])
@pytest.mark.parametrize("n_features", [1, 3])
@pytest.mark.parametrize("grad_clip", [0.05, None])
def test_fused_step_matches_autograd_and_adam(
    n_features: int, grad_clip: float | None, distribution: DistributionName
) -> None:
    """Three steps by hand leave the same weights as autograd + clip_grad_norm_ + Adam,
    on MSE (point head) and on each distribution's NLL."""
    x, y = _data(16, n_features)
    _step_both_ways(n_features, x, y, [slice(None)] * 3, grad_clip, distribution)


@pytest.mark.parametrize("distribution", ["none", "normal", "student_t"])
@pytest.mark.parametrize("grad_clip", [0.05, None])
def test_fused_step_matches_autograd_and_adam_on_a_partial_last_batch(
    grad_clip: float | None, distribution: DistributionName
) -> None:
    """21 windows in batches of 8, 8 and 5, twice over: the short last batch (its own
    buffers, its own mean) and the full batches after it match autograd + Adam."""
    x, y = _data(21, 3)
    epoch = [slice(0, 8), slice(8, 16), slice(16, 21)]
    _step_both_ways(3, x, y, epoch * 2, grad_clip, distribution)


@pytest.mark.parametrize("distribution", MSE_AND_NLL)
@pytest.mark.parametrize("fused_step", [True, False])
def test_gradients_are_clipped_to_the_norm(fused_step: bool, distribution: str) -> None:
    """After a step the applied gradient's norm is the clip; without clipping it is larger."""
    x, y = _data(32, 2)
    norms = {}
    for clip in (0.01, None):
        model = _model(2, distribution=distribution)
        stepper = make_stepper(model, FitSettings(grad_clip=clip, fused_step=fused_step))
        stepper.step(x, y)
        if isinstance(stepper, FusedLSTMStep):
            norms[clip] = _grad_norm([stepper.grad])
        else:
            norms[clip] = _grad_norm([p.grad for p in model.parameters() if p.grad is not None])
    assert norms[0.01] == pytest.approx(0.01, rel=1e-4)
    assert norms[None] > 0.05


@pytest.mark.parametrize("distribution", MSE_AND_NLL)
def test_fused_and_autograd_fits_agree(distribution: str) -> None:
    """A whole fit with the fused step follows the autograd fit epoch by epoch."""
    train, validation = _data(96, 3), _data(32, 3, seed=2)
    results, states = [], []
    for fused_step in (True, False):
        model = _model(3, distribution=distribution)
        settings = FitSettings(epochs=4, batch_size=16, patience=None, fused_step=fused_step)
        results.append(fit(model, train, validation, settings))
        states.append(model.state_dict())
    for fused_epoch, autograd_epoch in zip(results[0].history, results[1].history, strict=True):
        assert fused_epoch["train_loss"] == pytest.approx(autograd_epoch["train_loss"], rel=1e-4)
        assert fused_epoch["val_loss"] == pytest.approx(autograd_epoch["val_loss"], rel=1e-4)
    for name, value in states[1].items():
        torch.testing.assert_close(states[0][name], value, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("distribution", MSE_AND_NLL)
def test_fit_learns_and_releases_the_flat_buffer(distribution: str) -> None:
    """Training lowers the validation loss (MSE halves; the NLL, which can go below zero,
    falls by more than a nat); afterwards each parameter owns its storage."""
    model = _model(1, distribution=distribution)
    result = fit(
        model,
        _data(128, 1),
        _data(64, 1, seed=2),
        FitSettings(epochs=8, batch_size=16, learning_rate=1e-2),
    )
    first, last = result.history[0]["val_loss"], result.history[-1]["val_loss"]
    if distribution == "none":
        assert last < 0.5 * first
    else:
        assert last < first - 1.0
    for p in model.parameters():
        assert p.untyped_storage().nbytes() == p.numel() * p.element_size()


@pytest.mark.parametrize("distribution", MSE_AND_NLL)
def test_early_stopping_restores_the_best_weights(distribution: str) -> None:
    """When validation loss only rises, training stops after `patience` and keeps epoch 1."""
    x, y = _data(64, 1)
    validation = (x, -y)  # the opposite of what training teaches: val loss keeps rising
    model = _model(1, distribution=distribution)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def remember(epoch: int, metrics: dict[str, float]) -> None:
        snapshots[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    settings = FitSettings(epochs=30, batch_size=16, learning_rate=1e-2, patience=3)
    result = fit(model, (x, y), validation, settings, on_epoch_end=remember)
    assert result.best_epoch == 1
    assert result.epochs_trained == 4
    assert result.best_val_loss == result.history[0]["val_loss"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, snapshots[1][name])
    assert not torch.equal(model.head.weight, snapshots[4]["head.weight"])


@pytest.mark.parametrize("distribution", MSE_AND_NLL)
@pytest.mark.parametrize("fused_step", [True, False])
def test_a_non_finite_loss_raises_training_diverged(fused_step: bool, distribution: str) -> None:
    """A NaN in the targets stops training with an error naming the epoch."""
    x, y = _data(32, 1)
    y[5] = float("nan")
    settings = FitSettings(epochs=3, batch_size=8, fused_step=fused_step)
    with pytest.raises(TrainingDiverged, match="non-finite at epoch 1"):
        fit(_model(1, distribution=distribution), (x, y), _data(8, 1), settings)


def test_same_seed_same_weights_other_seed_other_weights() -> None:
    """Two fits from the same seed end bit-identical on the CPU; another seed differs."""
    train, validation = _data(64, 2), _data(16, 2, seed=2)
    final = []
    for seed in (7, 7, 8):
        model = _model(2, seed=seed)
        fit(model, train, validation, FitSettings(epochs=3, batch_size=16, seed=seed))
        final.append(model.head.weight.detach().clone())
    assert torch.equal(final[0], final[1])
    assert not torch.equal(final[0], final[2])


def test_fit_restores_the_thread_count() -> None:
    """Training picks its own thread count and leaves the process setting as it was."""
    before = torch.get_num_threads()
    fit(_model(1), _data(32, 1), _data(8, 1), FitSettings(epochs=1, batch_size=8))
    assert torch.get_num_threads() == before
    assert training_threads(32, 32) == 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
    assert training_threads(4096, 32) == cores  # large batches use every core


def test_fit_limits_numpys_blas_threads_to_the_training_threads() -> None:
    """The fused step's matrix products run in NumPy's BLAS: while fitting, it gets the
    training thread count (one at batch 8), and its own setting back afterwards."""

    def blas_threads() -> set[int]:
        return {pool["num_threads"] for pool in threadpool_info() if pool["user_api"] == "blas"}

    before = blas_threads()
    during: list[set[int]] = []
    settings = FitSettings(epochs=2, batch_size=8)
    fit(_model(1), _data(32, 1), _data(8, 1), settings, lambda *_: during.append(blas_threads()))
    assert during == [{1}, {1}]
    assert blas_threads() == before


@pytest.mark.parametrize(
    ("windows", "batch", "learning_rate", "patience"),
    [
        (99_999, 32, 1e-3, 5),  # under twice the windows per batch: as configured
        (100_000, 64, 1e-3 * 2**0.5, 5),
        (200_000, 128, 1e-3 * 4**0.5, 3),  # 5 epochs of 100k windows: 2.5 epochs, rounded up
        (487_988, 256, 1e-3 * 8**0.5, 2),  # the S&P 500 universe
        (10**9, 32 * MAX_BATCH_GROWTH, 1e-3 * MAX_BATCH_GROWTH**0.5, MIN_PATIENCE),
    ],
)
def test_many_windows_take_larger_steps_and_wait_fewer_epochs(
    windows: int, batch: int, learning_rate: float, patience: int
) -> None:
    """Per doubling of the windows beyond 50k, the batch doubles and the rate grows √2-fold;
    early stopping waits as many windows as 5 epochs of 100k hold, at least 2 epochs."""
    settings = FitSettings(batch_size=32, learning_rate=1e-3, epochs=7, patience=5)
    scaled = scale_to_windows(settings, windows, 50_000)
    assert (scaled.batch_size, scaled.patience, scaled.epochs) == (batch, patience, 7)
    assert scaled.learning_rate == pytest.approx(learning_rate)
    assert scale_to_windows(settings, 10**9, None) == settings
    no_stopping = scale_to_windows(replace(settings, patience=None), windows, 50_000)
    assert no_stopping.patience is None


def test_a_float64_model_trains_with_the_autograd_step() -> None:
    """The NumPy step works in float32; a float64 model falls back to autograd and trains."""
    model = _model(1).double()
    stepper = make_stepper(model, FitSettings())
    assert isinstance(stepper, AutogradStep)
    x, y = _data(16, 1)
    before = model.head.weight.detach().clone()
    stepper.step(x.double(), y.double())
    assert not torch.equal(model.head.weight, before)


def test_stacked_layers_use_the_autograd_step() -> None:
    """The fused step refuses two layers; make_stepper then falls back to autograd."""
    model = _model(1, num_layers=2)
    with pytest.raises(ValueError, match="one LSTM layer"):
        FusedLSTMStep(model, 1e-3, 1.0)
    assert isinstance(make_stepper(model, FitSettings()), AutogradStep)


def test_fit_refuses_empty_splits() -> None:
    """No validation windows: a ValueError that says how many of each there were."""
    empty = (torch.empty(0, 6, 1), torch.empty(0))
    with pytest.raises(ValueError, match="got 32 and 0"):
        fit(_model(1), _data(32, 1), empty, FitSettings(epochs=1))


class _Scaled(torch.nn.Module):
    """Outputs a fixed multiple of the last input step: a model with a known error."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x[:, -1, 0]


@pytest.mark.parametrize(("factor", "expected"), [(2.0, 0.5), (1.0, 1.0), (0.5, 1.0), (-1.0, 0.0)])
def test_output_scale_is_the_least_squares_shrink_clipped_to_0_1(
    factor: float, expected: float
) -> None:
    """Predicting 2y needs halving; y is kept; y/2 is not inflated; -y falls back to naive."""
    x = torch.randn(50, 3, 1)
    assert fit_output_scale(_Scaled(factor), x, x[:, -1, 0]) == pytest.approx(expected)


def test_scale_output_multiplies_every_prediction() -> None:
    """Scaling the point head by 0.25 scales the module's outputs by 0.25."""
    model, x = _model(2, distribution="none"), _data(8, 2)[0]
    model.eval()
    before = model(x).detach()
    assert float(before.abs().min()) > 0  # a zero output would pass whatever the scale
    scale_output(model, 0.25)
    torch.testing.assert_close(model(x).detach(), 0.25 * before)


@pytest.mark.parametrize("distribution", ["normal", "student_t"])
def test_scale_output_scales_only_a_distributions_location(distribution: str) -> None:
    """On a distributional head, 0.25 scales the location (output 0); the multiplier and
    tail outputs stay as they were."""
    model, x = _model(2, distribution=distribution), _data(8, 2)[0]
    with torch.no_grad():  # the head starts at zero, which any scale keeps: give it weights
        model.head.weight.normal_(0, 0.5)
        model.head.bias.normal_(0, 0.5)
    model.eval()
    before = model(x).detach()  # (8, K)
    assert float(before.abs().min()) > 0
    scale_output(model, 0.25)
    after = model(x).detach()
    torch.testing.assert_close(after[:, 0], 0.25 * before[:, 0])
    torch.testing.assert_close(after[:, 1:], before[:, 1:], rtol=0, atol=0)


class _Located(torch.nn.Module):
    """Outputs K = 3 columns: the location a fixed multiple of the last input step, the
    others noise that the shrink must not read."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        location = self.factor * x[:, -1, 0]  # (B, T, F) -> (B,)
        noise = 5.0 * x[:, 0, :1].expand(-1, 2)  # (B, 2), unrelated to the target
        return torch.cat([location[:, None], noise], dim=1)  # (B, 3)


@pytest.mark.parametrize(("factor", "expected"), [(2.0, 0.5), (1.0, 1.0), (-1.0, 0.0)])
def test_output_scale_of_a_distributional_model_reads_its_location(
    factor: float, expected: float
) -> None:
    """The shrink of a (B, K) model is the least-squares factor of its location column."""
    x = torch.randn(50, 3, 1)
    assert fit_output_scale(_Located(factor), x, x[:, -1, 0]) == pytest.approx(expected)


def test_output_scale_drops_moves_that_validation_cannot_tell_from_chance() -> None:
    """A weak link (λ̂ about 0.1, standard error about 0.07) gates to 0; a strong one stays 1."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 3, 1, generator=gen)
    predicted = x[:, -1, 0]  # what _Scaled(1.0) outputs
    noise = torch.randn(200, generator=gen)
    noise -= (noise @ predicted) / (predicted @ predicted) * predicted  # orthogonal: λ̂ = 0.1
    weak = 0.1 * predicted + noise
    model = _Scaled(1.0)
    assert fit_output_scale(model, x, weak, z=0.0) == pytest.approx(0.1, abs=1e-4)
    assert fit_output_scale(model, x, weak) == 0.0
    strong = predicted + 0.1 * torch.randn(200, generator=gen)
    assert fit_output_scale(model, x, strong) == pytest.approx(1.0, abs=0.05)


def test_fit_asks_for_each_epochs_windows_in_order() -> None:
    """Given a function of the epoch, fit trains epoch e on what it returns for e."""
    torch.manual_seed(0)
    inputs, targets = torch.randn(40, 5, 2), torch.randn(40)
    asked: list[int] = []

    def windows(epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
        asked.append(epoch)
        return inputs[epoch : epoch + 30], targets[epoch : epoch + 30]

    model = LSTMForecaster(LSTMConfig(hidden_size=4), n_features=2)
    settings = FitSettings(epochs=3, batch_size=8, patience=None)
    result = fit(model, windows, (inputs[:10], targets[:10]), settings)
    assert asked == [1, 2, 3] and result.epochs_trained == 3
    with pytest.raises(ValueError, match="got 0 and 10"):
        fit(model, lambda epoch: (inputs[:0], targets[:0]), (inputs[:10], targets[:10]), settings)
