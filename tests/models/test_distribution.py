"""The distributional head: its two NLLs agree, its parameters stay in range, the fused
step learns it as autograd does, and a non-finite loss stops training."""

import copy
import itertools
import math

import numpy as np
import pytest
import torch

from closecast.core.config import DistributionName
from closecast.models.calibration import INTERVAL_COLUMNS, LEVELS, bound_columns, normal_calibration
from closecast.models.distribution import (
    LOG_MULTIPLIER_LIMIT,
    head_outputs,
    nll_numpy,
    nll_torch,
    parameters,
)
from closecast.models.encoding import Encoding
from closecast.models.forecaster import HEADS, Forecaster, head_sigma
from closecast.models.fused_step import FusedLSTMStep
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import SIGMA_FLOOR, ScaleModel
from closecast.models.training import AutogradStep, FitSettings, TrainingDiverged, fit

FAMILIES: tuple[DistributionName, ...] = ("normal", "student_t")
FEATURES = ("close", "volume", "open")
COLUMNS = (*FEATURES, "high", "low")
EXTREMES = (-1e30, -1e6, -50.0, 0.0, 50.0, 1e6, 1e30)


def _outputs(distribution: DistributionName, n: int, seed: int = 0) -> np.ndarray:
    """Random head outputs (n, K); the multiplier column also beyond ±LOG_MULTIPLIER_LIMIT."""
    rng = np.random.default_rng(seed)
    out = rng.normal(0.0, 1.0, (n, head_outputs(distribution)))
    out[:, 1] = rng.uniform(-2.0, 2.0, n) * LOG_MULTIPLIER_LIMIT  # about half are clipped
    return out


def _reference_grad(
    distribution: DistributionName, outputs: np.ndarray, z: np.ndarray
) -> tuple[float, np.ndarray]:
    """nll_torch's summed loss and autograd's d(mean loss) / d outputs, (N, K), in float64."""
    out = torch.tensor(outputs, dtype=torch.float64, requires_grad=True)
    loss = nll_torch(distribution, out, torch.tensor(z, dtype=torch.float64))  # (N,)
    loss.mean().backward()
    assert out.grad is not None
    return float(loss.detach().sum()), out.grad.numpy()


@pytest.mark.parametrize("distribution", FAMILIES)
def test_numpy_nll_and_its_gradient_equal_torch_autograd_in_float64(
    distribution: DistributionName,
) -> None:
    """The fused step's NLL equals the autograd one, and its hand-written gradient equals
    autograd's, clipped multipliers (zero gradient) included."""
    outputs = _outputs(distribution, 64)
    z = np.random.default_rng(1).standard_t(4, 64) * 2.0
    clipped = np.abs(outputs[:, 1]) > LOG_MULTIPLIER_LIMIT
    assert 10 < clipped.sum() < 54  # both sides of the clip are exercised
    expected_loss, expected_grad = _reference_grad(distribution, outputs, z)
    grad = np.full(outputs.T.shape, np.nan)  # (K, N): every entry must be written
    loss = nll_numpy(distribution, np.ascontiguousarray(outputs.T), z, grad)
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grad.T, expected_grad, rtol=1e-9, atol=1e-13)
    assert np.all(grad[1, clipped] == 0.0)
    assert np.all(grad[1, ~clipped] != 0.0)


@pytest.mark.parametrize("distribution", FAMILIES)
def test_numpy_nll_in_float32_as_the_fused_step_uses_it(distribution: DistributionName) -> None:
    """On float32 arrays (the fused step's (K, B) buffers) the loss and gradient stay within
    float32 rounding of the float64 autograd reference, and the gradient stays float32."""
    outputs = _outputs(distribution, 32, seed=2)
    z = np.random.default_rng(3).normal(0.0, 1.5, 32)
    outputs32, z32 = outputs.astype(np.float32), z.astype(np.float32)
    expected_loss, expected_grad = _reference_grad(
        distribution, outputs32.astype(np.float64), z32.astype(np.float64)
    )
    grad = np.zeros(outputs32.T.shape, dtype=np.float32)
    loss = nll_numpy(distribution, np.ascontiguousarray(outputs32.T), z32, grad)
    assert grad.dtype == np.float32
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grad.T, expected_grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distribution", FAMILIES)
def test_torch_nll_is_the_negative_log_density_of_torch_distributions(
    distribution: DistributionName,
) -> None:
    """nll_torch is -log p(z) of Normal(μ, m) or StudentT(ν, μ, m), with the parameters
    `parameters` reads off the same outputs."""
    outputs = _outputs(distribution, 50, seed=4)
    z = np.random.default_rng(5).normal(0.0, 2.0, 50)
    found = parameters(distribution, outputs)
    mu, m = torch.tensor(found.location), torch.tensor(found.multiplier)
    if distribution == "normal":
        reference = torch.distributions.Normal(mu, m)
    else:
        assert found.nu is not None
        reference = torch.distributions.StudentT(df=torch.tensor(found.nu), loc=mu, scale=m)
    expected = -reference.log_prob(torch.tensor(z))
    actual = nll_torch(distribution, torch.tensor(outputs), torch.tensor(z))
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-12)


def test_a_zero_output_is_location_0_multiplier_1_and_five_degrees_of_freedom() -> None:
    """The initial head's parameters: the HAR recipe (μ 0, m 1) with a t tail of ν = 5."""
    found = parameters("student_t", np.zeros((3, 3)))
    assert found.nu is not None
    np.testing.assert_array_equal(found.location, 0.0)
    np.testing.assert_array_equal(found.multiplier, 1.0)
    np.testing.assert_allclose(found.nu, 5.0, rtol=1e-12)
    assert parameters("normal", np.zeros((2, 2))).nu is None


@pytest.mark.parametrize("width", [1, 2, 4])
def test_parameters_refuse_a_point_head_and_the_wrong_width(width: int) -> None:
    """`none` has no distribution; a student_t head needs exactly 3 outputs per window."""
    with pytest.raises(ValueError, match="not \\(N, K\\)"):
        parameters("student_t", np.zeros((2, width)))
    with pytest.raises(ValueError, match="not \\(N, K\\)"):
        parameters("none", np.zeros((2, 1)))


def _check_parameters(distribution: DistributionName, outputs: np.ndarray) -> None:
    found = parameters(distribution, outputs)
    low, high = math.exp(-LOG_MULTIPLIER_LIMIT), math.exp(LOG_MULTIPLIER_LIMIT)
    assert np.all(np.isfinite(found.multiplier))
    assert np.all((found.multiplier >= low) & (found.multiplier <= high))
    if distribution == "student_t":
        assert found.nu is not None
        assert np.all(np.isfinite(found.nu)), found.nu
        low_nu = found.nu <= 2.0
        assert not low_nu.any(), f"ν = 2 for tail outputs {np.unique(outputs[low_nu, 2])}"


@pytest.mark.parametrize("distribution", FAMILIES)
def test_extreme_outputs_keep_nu_above_2_and_the_multiplier_in_range(
    distribution: DistributionName,
) -> None:
    """Every combination of outputs from -1e30 to 1e30: ν > 2 and finite, m finite within
    e^±3 (the issue: "ν > 2 and σ above the floor always hold")."""
    grid = np.array(np.meshgrid(*[EXTREMES] * head_outputs(distribution))).reshape(
        head_outputs(distribution), -1
    )  # (K, 7^K)
    _check_parameters(distribution, grid.T)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
@pytest.mark.parametrize("distribution", FAMILIES)
def test_extreme_multiplier_and_tail_outputs_give_a_finite_nll_equal_to_autograds(
    distribution: DistributionName,
) -> None:
    """Multiplier and tail outputs from -1e30 to 1e30 (locations within ±5, z within ±10):
    the fused step's NLL and gradient are finite and still equal autograd's."""
    grid = itertools.product((-5.0, 0.0, 5.0), *[EXTREMES] * (head_outputs(distribution) - 1))
    outputs = np.array(list(grid))  # (N, K)
    z = np.linspace(-10.0, 10.0, len(outputs))
    expected_loss, expected_grad = _reference_grad(distribution, outputs, z)
    grad = np.zeros(outputs.T.shape)
    loss = nll_numpy(distribution, np.ascontiguousarray(outputs.T), z, grad)
    assert math.isfinite(loss) and np.all(np.isfinite(grad))
    assert loss == pytest.approx(expected_loss, rel=1e-12)
    np.testing.assert_allclose(grad.T, expected_grad, rtol=1e-9, atol=1e-12)


def _huge_head_model(distribution: DistributionName, scale: float, seed: int = 0) -> LSTMForecaster:
    torch.manual_seed(seed)
    model = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), len(FEATURES))
    with torch.no_grad():
        model.head.weight.normal_(0.0, scale)
        model.head.bias.normal_(0.0, scale)
    return model.eval()


def _extreme_inputs() -> torch.Tensor:
    """Encoded windows (N, 6, 3): huge, tiny, zero, alternating and random values."""
    gen = torch.Generator().manual_seed(6)
    values = [torch.full((6, 3), v) for v in (1e30, -1e30, 1e6, -1e6, 0.0, 1e-30)]  # 6 × (T, F)
    values.append(torch.tensor([1e30, -1e30, 0.0]).repeat(6, 1))
    values.append(1e4 * torch.randn(6, 3, generator=gen))
    return torch.stack(values)  # -> (N, T, F)


@pytest.mark.parametrize("distribution", FAMILIES)
@pytest.mark.parametrize("scale", [1e3, 1e8])
def test_an_lstm_with_huge_head_weights_on_extreme_windows_keeps_its_parameters_in_range(
    distribution: DistributionName, scale: float
) -> None:
    """Head weights of order 1e3 and 1e8 on windows of ±1e30: finite outputs, ν > 2,
    m within e^±3."""
    model = _huge_head_model(distribution, scale)
    with torch.inference_mode():
        outputs = model(_extreme_inputs()).double().numpy()  # (N, K)
    assert np.all(np.isfinite(outputs))
    assert np.abs(outputs).max() > 10 * LOG_MULTIPLIER_LIMIT  # the clip is reached
    _check_parameters(distribution, outputs)


def _raw_windows() -> np.ndarray:
    """Raw windows (N, 10, 5) of close, volume, open, high, low: flat, calm, wild, a crash
    to a tenth, a jump from a cent to a thousand, near-zero volume."""
    rng = np.random.default_rng(7)
    steps = np.arange(10)
    closes = [
        np.full(10, 30.0),  # flat: σ̂ is the floor
        50 * np.exp(np.cumsum(rng.normal(0, 0.01, 10))),
        50 * np.exp(np.cumsum(rng.normal(0, 0.5, 10))),
        np.where(steps < 9, 100.0, 10.0),
        np.where(steps < 5, 0.01, 1000.0),
        1e-4 * np.exp(np.cumsum(rng.normal(0, 0.05, 10))),
    ]
    windows = []
    for i, close in enumerate(closes):
        spread = 0.0 if i == 0 else 0.02
        volume = np.full(10, 1e-9 if i == 5 else 1e6)
        high, low = close * (1 + spread), close * (1 - spread)
        windows.append(np.stack([close, volume, close, high, low], axis=-1))  # (T, C)
    return np.stack(windows)  # (N, T, C)


def _distributional_forecaster(model: LSTMForecaster, head: str) -> Forecaster:
    scale = ScaleModel((1, 5, 9), (0.1, 0.1, 0.1, 0.2, 0.2, 0.2))
    return Forecaster(
        model,
        Encoding(features=FEATURES, target="vol_return"),
        window=10,
        intervals=Intervals(scale, normal_calibration()),
        head=head,
    )


@pytest.mark.parametrize("distribution", FAMILIES)
@pytest.mark.parametrize("head", HEADS)
def test_a_huge_head_on_extreme_windows_keeps_sigma_above_the_floor_and_bounds_ordered(
    distribution: DistributionName, head: str
) -> None:
    """Through a spec-3 Forecaster: the multiplier and tail rows' weights are huge (the
    location's are small, so the median stays a price), and the windows run from flat to a
    100000-fold jump. Each head's σ is finite and at least SIGMA_FLOOR, and every forecast is
    finite with lower_95 ≤ lower_80 < predicted_close < upper_80 ≤ upper_95."""
    model = _huge_head_model(distribution, 1e6)
    with torch.no_grad():
        model.head.weight[0].mul_(1e-7)
        model.head.bias[0].mul_(1e-7)
        model.head.bias[1] = -1e6  # m at e^-3 wherever the weights do not outweigh it
    forecaster = _distributional_forecaster(model, head)
    windows = _raw_windows()
    tickers = np.array(["AAA"] * len(windows), dtype=object)
    _, sigma_hat, multiplier = forecaster.distribution_parts(windows, tickers)
    assert sigma_hat[0] == SIGMA_FLOOR  # the flat window
    assert multiplier.min() == pytest.approx(math.exp(-LOG_MULTIPLIER_LIMIT))
    sigma = head_sigma(head, sigma_hat, multiplier)
    assert np.all(np.isfinite(sigma)) and np.all(sigma >= SIGMA_FLOOR)
    forecast = forecaster.predict_distribution(windows, tickers)
    point = forecast["predicted_close"]
    assert all(np.all(np.isfinite(forecast[c])) for c in ("predicted_close", *INTERVAL_COLUMNS))
    (lower_80, upper_80), (lower_95, upper_95) = (
        (forecast[lo], forecast[hi]) for lo, hi in (bound_columns(level) for level in LEVELS)
    )
    assert np.all(lower_95 <= lower_80) and np.all(lower_80 < point)
    assert np.all(point < upper_80) and np.all(upper_80 <= upper_95)


@pytest.mark.parametrize("distribution", FAMILIES)
def test_an_untrained_head_predicts_location_0_and_multiplier_1_for_any_window(
    distribution: DistributionName,
) -> None:
    """A fresh distributional LSTMForecaster starts as the HAR recipe: its head is zero, so
    every window, however extreme and with dropout on, gets μ = 0 and m = 1."""
    torch.manual_seed(8)
    model = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), len(FEATURES))
    assert model.outputs == head_outputs(distribution)
    assert not model.head.weight.any() and not model.head.bias.any()
    inputs = torch.cat([_extreme_inputs(), torch.randn(16, 6, 3)])  # (N, T, F)
    for train in (False, True):
        model.train(train)
        with torch.no_grad():
            outputs = model(inputs)  # (N, K)
        assert outputs.shape == (len(inputs), head_outputs(distribution))
        found = parameters(distribution, outputs.numpy())
        np.testing.assert_array_equal(found.location, 0.0)
        np.testing.assert_array_equal(found.multiplier, 1.0)


def _data(n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows (n, 6, 3) and a heavy-tailed z whose location and width follow the inputs."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, 3, generator=gen)
    width = torch.exp(0.5 * x[:, -1, 1])
    noise = torch.distributions.StudentT(4.0).sample((n,))
    return x, 0.5 * x[:, -1, 0] + width * noise


def _perturbed_model(distribution: DistributionName) -> LSTMForecaster:
    """A model whose head is small random weights, not zero: so the LSTM's gradients are
    not zero from the first step."""
    torch.manual_seed(0)
    model = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), len(FEATURES))
    with torch.no_grad():
        model.head.weight.normal_(0.0, 0.3)
        model.head.bias.normal_(0.0, 0.1)
    return model


@pytest.mark.parametrize("distribution", FAMILIES)
@pytest.mark.parametrize("grad_clip", [0.05, None])
def test_fused_step_matches_the_autograd_step_on_the_nll(
    distribution: DistributionName, grad_clip: float | None
) -> None:
    """Per step the fused step's summed NLL and clipped gradient equal AutogradStep's
    (same dropout masks); after five steps (one a short batch) the weights agree to the
    point head's tolerance."""
    torch.manual_seed(9)
    x, y = _data(21)
    fused_model = _perturbed_model(distribution)
    reference = copy.deepcopy(fused_model)
    start = copy.deepcopy(fused_model.state_dict())
    fused = FusedLSTMStep(fused_model, 1e-2, grad_clip)
    autograd = AutogradStep(reference, FitSettings(learning_rate=1e-2, grad_clip=grad_clip))
    fused_model.train(), reference.train()
    names = ["weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"]
    params = [*(reference.get_parameter(f"lstm.{n}") for n in names)]
    params += [reference.head.weight, reference.head.bias]
    batches = [slice(0, 8), slice(8, 16), slice(16, 21), slice(0, 8), slice(8, 16)]
    for step, rows in enumerate(batches):
        torch.manual_seed(100 + step)  # the same dropout mask on both sides
        fused_loss = fused.step(x[rows], y[rows])
        torch.manual_seed(100 + step)
        autograd_loss = float(autograd.step(x[rows], y[rows]))
        assert fused_loss == pytest.approx(autograd_loss, rel=1e-5), step
        for grad, p in zip(fused.grads, params, strict=True):
            assert p.grad is not None
            torch.testing.assert_close(torch.from_numpy(grad), p.grad, atol=1e-6, rtol=1e-4)
        if step == 0:  # the LSTM learns from the first step: its gradient is not zero
            assert np.abs(fused.grads[1]).max() > 1e-4
    fused.release()
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fused_model.state_dict()[name], value, atol=1e-6, rtol=1e-5)
    for name in ("lstm.weight_hh_l0", "head.weight"):
        moved = fused_model.state_dict()[name] - start[name]
        assert float(moved.abs().max()) > 1e-3, name


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("distribution", FAMILIES)
@pytest.mark.parametrize("fused_step", [True, False])
@pytest.mark.parametrize(
    ("split", "bad"), [("train", math.nan), ("train", math.inf), ("validation", -math.inf)]
)
def test_a_non_finite_nll_raises_training_diverged(
    distribution: DistributionName, fused_step: bool, split: str, bad: float
) -> None:
    """A NaN or infinite target z, in training or validation windows, makes the NLL
    non-finite: the fit stops with TrainingDiverged naming epoch 1."""
    torch.manual_seed(11)
    train, validation = _data(32), _data(8, seed=2)
    (train if split == "train" else validation)[1][5] = bad
    model = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), len(FEATURES))
    settings = FitSettings(epochs=3, batch_size=8, fused_step=fused_step)
    with pytest.raises(TrainingDiverged, match="non-finite at epoch 1"):
        fit(model, train, validation, settings)
