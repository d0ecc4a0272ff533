"""The module is the LSTM of the design, checked against the equations in NumPy."""

import numpy as np
import pytest
import torch

from closecast.core.config import DEFAULT_DISTRIBUTION, DistributionName
from closecast.models.distribution import head_outputs, parameters
from closecast.models.lstm import LSTMConfig, LSTMForecaster


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def lstm_by_hand(state: dict[str, torch.Tensor], x: np.ndarray) -> np.ndarray:
    """The design's equations, step by step, in float64 NumPy.

    Each gate is σ/tanh(W·[h_{t-1}, x_t] + b), with W the input and
    recurrent weights side by side; torch stores them as weight_ih and
    weight_hh (blocks i, f, g, o) and splits b into two biases.
    """
    w_ih = state["lstm.weight_ih_l0"].double().numpy()  # (4H, F)
    w_hh = state["lstm.weight_hh_l0"].double().numpy()  # (4H, H)
    b = (state["lstm.bias_ih_l0"] + state["lstm.bias_hh_l0"]).double().numpy()  # (4H,)
    hidden = w_hh.shape[1]
    w = np.concatenate([w_hh, w_ih], axis=1)  # (4H, H + F), acting on [h_{t-1}, x_t]
    w_i, w_f, w_c, w_o = np.split(w, 4)  # 4 × (H, H + F)
    b_i, b_f, b_c, b_o = np.split(b, 4)
    batch, steps, _ = x.shape
    h = np.zeros((batch, hidden))  # zero initial states
    c = np.zeros((batch, hidden))
    for t in range(steps):
        hx = np.concatenate([h, x[:, t, :]], axis=1)  # (B, H + F)
        forget = _sigmoid(hx @ w_f.T + b_f)
        input_ = _sigmoid(hx @ w_i.T + b_i)
        candidate = np.tanh(hx @ w_c.T + b_c)
        output = _sigmoid(hx @ w_o.T + b_o)
        c = forget * c + input_ * candidate
        h = output * np.tanh(c)
    w_head = state["head.weight"].double().numpy()  # (K, H)
    b_head = state["head.bias"].double().numpy()  # (K,)
    return h @ w_head.T + b_head  # (B, K); dropout is the identity in eval mode


@pytest.mark.parametrize("distribution", ["none", "normal", "student_t"])
@pytest.mark.parametrize("n_features", [1, 3])
def test_module_computes_the_design_equations(
    n_features: int, distribution: DistributionName
) -> None:
    """On random weights and inputs, the module's output matches the equations to 1e-5:
    one number per window for the point head, K for a distributional one."""
    torch.manual_seed(n_features)
    config = LSTMConfig(hidden_size=8, dropout=0.2, distribution=distribution)
    model = LSTMForecaster(config, n_features=n_features)
    with torch.no_grad():  # weights well away from torch's small uniform initialisation
        for p in model.parameters():
            p.normal_(0, 0.5)
    x = np.random.default_rng(n_features).normal(size=(16, 7, n_features)).astype(np.float32)
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    expected = lstm_by_hand(model.state_dict(), x.astype(np.float64))  # (16, K)
    k = head_outputs(distribution)
    if k == 1:
        assert out.shape == (16,)
        expected = expected[:, 0]  # (16, 1) -> (16,)
    else:
        assert out.shape == (16, k)
    np.testing.assert_allclose(out, expected, atol=1e-5, rtol=0)
    assert np.std(expected, axis=0).min() > 0.01  # not passing on a constant output


def test_the_default_head_is_the_products_default_distribution() -> None:
    """LSTMConfig() predicts closecast.core.config's DEFAULT_DISTRIBUTION, normal (issue 20):
    location and log multiplier, zero-initialised; `none` keeps torch's own init."""
    model = LSTMForecaster(LSTMConfig(hidden_size=8), n_features=2)
    assert model.config.distribution == DEFAULT_DISTRIBUTION == "normal"
    assert model.outputs == head_outputs(DEFAULT_DISTRIBUTION) == 2
    assert not model.head.weight.any() and not model.head.bias.any()
    point = LSTMForecaster(LSTMConfig(hidden_size=8, distribution="none"), n_features=2)
    assert point.outputs == 1 and point.head.weight.abs().sum() > 0  # torch's own init


@pytest.mark.parametrize(("distribution", "width"), [("normal", 2), ("student_t", 3)])
def test_an_untrained_distributional_head_is_the_har_recipe(
    distribution: DistributionName, width: int
) -> None:
    """Untrained, every window gets location 0, multiplier 1 (and, for a Student-t, ν = 5)
    whatever its input, so the network starts as the HAR-scale recipe."""
    torch.manual_seed(0)
    model = LSTMForecaster(LSTMConfig(hidden_size=8, distribution=distribution), n_features=2)
    assert model.outputs == width
    model.eval()
    with torch.no_grad():
        out = model(10 * torch.randn(32, 6, 2)).numpy()  # (32, K)
    assert out.shape == (32, width) and not out.any()
    found = parameters(distribution, out)
    np.testing.assert_array_equal(found.location, 0.0)
    np.testing.assert_array_equal(found.multiplier, 1.0)
    if distribution == "student_t":
        assert found.nu is not None
        np.testing.assert_allclose(found.nu, 5.0, rtol=1e-12)
    else:
        assert found.nu is None


@pytest.mark.parametrize("distribution", ["none", "student_t"])
def test_dropout_acts_in_train_mode_with_one_layer(distribution: DistributionName) -> None:
    """With one layer, dropout still changes training outputs; in eval mode it does not."""
    torch.manual_seed(0)
    config = LSTMConfig(hidden_size=16, num_layers=1, dropout=0.5, distribution=distribution)
    model = LSTMForecaster(config, n_features=1)
    if model.outputs > 1:  # a zero-initialised head would hide dropout: give it weights
        with torch.no_grad():
            model.head.weight.normal_(0, 0.5)
    x = torch.randn(64, 5, 1)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
        clean = model(x)
    model.train()
    with torch.no_grad():
        first, second = model(x), model(x)
    assert not torch.allclose(first, clean)
    assert not torch.allclose(first, second)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"hidden_size": 0}, "hidden_size"),
        ({"dropout": 1.0}, "dropout"),
        ({"distribution": "laplace"}, "distribution"),
    ],
)
def test_config_rejects_impossible_values(kwargs: dict[str, float], named: str) -> None:
    """A zero hidden size, dropout of 1 or an unknown distribution is refused, named."""
    with pytest.raises(ValueError, match=named):
        LSTMConfig(**kwargs)  # type: ignore[arg-type]
