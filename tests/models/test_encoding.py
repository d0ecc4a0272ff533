"""Encodings: inputs from each window alone, targets that decode back to the close."""

import numpy as np
import pytest

from closecast.models.encoding import VOL_FLOOR, Bounds, Encoding, fit_bounds

CLOSES = np.array([100.0, 101.0, 99.0, 102.0, 104.0])
VOLUMES = np.array([1e6, 2e6, 1.5e6, 1e6, 3e6])


def _windows() -> np.ndarray:
    """Two windows of close, volume, open: the second is the first at 3x the price."""
    one = np.stack([CLOSES, VOLUMES, CLOSES * 0.99], axis=-1)  # (T, F)
    two = one * np.array([3.0, 1.0, 3.0])
    return np.stack([one, two])  # (2, T, F)


@pytest.mark.parametrize("target", ["vol_return", "log_return", "minmax_close"])
def test_decoding_the_target_gives_back_the_next_close(target: str) -> None:
    """decode(targets(next close)) is the next close, for every target."""
    windows, next_close = _windows(), np.array([105.0, 300.0])
    encoding = Encoding(features=("close", "volume", "open"), target=target)
    bounds = None
    if encoding.needs_bounds:
        lo, hi = fit_bounds(windows[0])
        bounds = Bounds(lo=np.array([lo, lo]), hi=np.array([hi, hi]))
    encoded = encoding.targets(next_close, windows, bounds)
    np.testing.assert_allclose(encoding.decode(encoded, windows, bounds), next_close, rtol=1e-5)


@pytest.mark.parametrize("target", ["vol_return", "log_return"])
def test_return_inputs_do_not_depend_on_the_price_level(target: str) -> None:
    """A window at 3x the price encodes to the same inputs; 0 decodes to the last close."""
    windows = _windows()
    encoding = Encoding(features=("close", "volume", "open"), target=target)
    inputs = encoding.inputs(windows)
    assert inputs.shape == (2, 5, 3) and inputs.dtype == np.float32
    np.testing.assert_allclose(inputs[0], inputs[1], atol=1e-5)
    assert inputs[0, -1, 0] == 0.0  # the last close relative to itself
    np.testing.assert_allclose(encoding.decode(np.zeros(2), windows), [104.0, 312.0])
    assert encoding.predicts_return


def test_vol_return_is_log_return_in_units_of_the_window_volatility() -> None:
    """The target and price inputs are the log_return ones divided by the window's σ."""
    windows = _windows()
    sigma = np.std(100 * np.diff(np.log(CLOSES)))
    vol, plain = (
        Encoding(("close", "volume", "open")),
        Encoding(("close", "volume", "open"), "log_return"),
    )
    np.testing.assert_allclose(vol.volatility(windows), [sigma, sigma])
    np.testing.assert_allclose(
        vol.inputs(windows)[..., [0, 2]], plain.inputs(windows)[..., [0, 2]] / sigma, rtol=1e-5
    )
    np.testing.assert_allclose(
        vol.inputs(windows)[..., 1], plain.inputs(windows)[..., 1], rtol=1e-6
    )
    next_close = np.array([105.0, 315.0])
    np.testing.assert_allclose(
        vol.targets(next_close, windows), plain.targets(next_close, windows) / sigma, rtol=1e-5
    )


def test_a_flat_window_uses_the_volatility_floor() -> None:
    """A window with no movement has σ = VOL_FLOOR, not 0: its encoding stays finite."""
    flat = np.full((1, 4, 1), 50.0)
    encoding = Encoding(features=("close",))
    assert encoding.volatility(flat)[0] == VOL_FLOOR
    assert np.isfinite(encoding.targets(np.array([51.0]), flat)).all()
    assert np.isfinite(encoding.inputs(flat)).all()


def test_minmax_bounds_come_from_the_training_rows_only() -> None:
    """fit_bounds takes min/max per feature; a later huge value cannot move them."""
    train = np.array([[10.0, 5.0], [12.0, 1.0], [11.0, 3.0]])
    assert fit_bounds(train) == ([10.0, 1.0], [12.0, 5.0])
    with pytest.raises(ValueError, match="empty training span"):
        fit_bounds(np.empty((0, 2)))


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"features": ("close",), "target": "price"}, "'price'"),
        ({"features": ("volume",)}, "'close'"),
    ],
)
def test_bad_encodings_are_refused(kwargs: dict[str, object], named: str) -> None:
    """An unknown target or features without close: a ValueError naming it."""
    with pytest.raises(ValueError, match=named):
        Encoding(**kwargs)  # type: ignore[arg-type]


def test_minmax_without_bounds_is_refused() -> None:
    """minmax_close needs the ticker bounds; without them the error says so."""
    with pytest.raises(ValueError, match="per-ticker bounds"):
        Encoding(("close",), "minmax_close").inputs(_windows()[:, :, :1])
