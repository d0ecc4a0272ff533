"""Each run keeps the better head: choose_head scores `lstm` and `har` on validation, a zero
head is today's recipe, and spec 3 (and spec 2) models save, load and predict the same."""

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from closecast.core.config import TrainConfig, WindowConfig
from closecast.models import heads as heads_module
from closecast.models.calibration import (
    INTERVAL_COLUMNS,
    LEVELS,
    Calibration,
    bound_columns,
    close_intervals,
    normal_calibration,
)
from closecast.models.distribution import parameters
from closecast.models.forecaster import FORECAST_COLUMNS, HEADS, Forecaster
from closecast.models.heads import choose_head, mean_interval_score
from closecast.models.interval_scores import interval_score
from closecast.models.intervals import Intervals, calibrate, fit_base_scale
from closecast.models.lstm import LSTMConfig
from closecast.models.scale import SIGMA_FLOOR
from closecast.tasks.modeling.training import train_model
from closecast.tasks.modeling.windows import Dataset, WindowSet, build_windows
from tests.fixtures import walk_frames


def _frames(n: int = 120) -> dict[str, pd.DataFrame]:
    """Two tickers of n business days of random-walk features, the derived ones read from
    WARM_UP rows more of prices (as tests/tasks/test_training.py)."""
    return walk_frames(n)


@pytest.fixture(scope="module")
def dataset() -> Dataset:
    frames = _frames()
    return build_windows(frames, WindowConfig(), frames["AAA"].index[-1].date())


def _train(dataset: Dataset, distribution: str = "student_t") -> Forecaster:
    """Two epochs of a hidden-8 model, unshrunk (so the location is not gated to zero)."""
    config = TrainConfig(epochs=2, device="cpu", shrink_output=False)
    lstm = LSTMConfig(hidden_size=8, distribution=distribution)  # type: ignore[arg-type]
    return train_model(dataset, lstm, config).forecaster


@pytest.fixture(scope="module")
def trained(dataset: Dataset) -> Forecaster:
    return _train(dataset)


def _copy(forecaster: Forecaster) -> Forecaster:
    """A forecaster with its own module, so a test may change its weights or head."""
    module = type(forecaster.module)(forecaster.module.config, forecaster.module.n_features)
    module.load_state_dict(forecaster.module.state_dict())
    return replace(forecaster, module=module.eval(), head_scores=dict(forecaster.head_scores))


def _reference(
    forecaster: Forecaster, dataset: Dataset, head: str
) -> tuple[Calibration, float, Intervals]:
    """One head's calibration and validation score, computed from the module directly:
    centre μ·σ̂ from the head's first output, σ = σ̂ (har) or max(σ̂·m, floor) (lstm),
    conformal quantiles of (r − centre) / σ on train + validation, scored on validation."""
    scale = fit_base_scale(dataset.window, dataset.columns, dataset.train)
    har = Intervals(scale, normal_calibration())

    def parts(split: WindowSet) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        inputs = forecaster.encoding.inputs(split.windows)  # (N, T, C) -> (N, T, F)
        with torch.no_grad():
            out = forecaster.module.eval()(torch.from_numpy(inputs)).double().numpy()  # (N, K)
        sigma_hat = har.base_scale(split.windows, dataset.columns)  # (N,)
        multiplier = np.exp(np.clip(out[:, 1], -3.0, 3.0))
        sigma = np.maximum(sigma_hat * multiplier, SIGMA_FLOOR) if head == "lstm" else sigma_hat
        r = np.log(split.next_close / split.last_close)
        return out[:, 0] * sigma_hat, sigma, r

    (c_train, s_train, r_train), (c_val, s_val, r_val) = map(
        parts, (dataset.train, dataset.validation)
    )
    z = np.concatenate([(r_train - c_train) / s_train, (r_val - c_val) / s_val])
    calibration = calibrate(z)
    val = dataset.validation
    score = mean_interval_score(val.last_close, val.next_close, c_val, s_val, calibration)
    return calibration, score, Intervals(scale, calibration)


def test_mean_interval_score_is_the_mean_winkler_score_relative_to_the_last_close() -> None:
    """Over LEVELS, the mean of (u − l) + 2/α·(l − y)⁺ + 2/α·(y − u)⁺ on closes / last close."""
    last = np.array([100.0, 50.0, 20.0])
    nxt = np.array([101.0, 40.0, 20.0])
    centre, sigma = np.array([0.0, 0.01, -0.01]), np.array([0.01, 0.02, 0.005])
    calibration = normal_calibration()
    bounds = close_intervals(last, centre, sigma, calibration)
    expected = []
    for level in LEVELS:
        alpha = 1.0 - level
        lo, hi = (bounds[c] / last for c in bound_columns(level))
        y = nxt / last
        by_hand = (hi - lo) + 2 / alpha * np.maximum(lo - y, 0) + 2 / alpha * np.maximum(y - hi, 0)
        np.testing.assert_allclose(interval_score(lo, hi, y, alpha), by_hand)
        expected.append(by_hand.mean())
    assert mean_interval_score(last, nxt, centre, sigma, calibration) == pytest.approx(
        np.mean(expected), rel=1e-12
    )


def test_a_run_keeps_lstm_exactly_when_it_scores_lower_and_the_scores_are_the_recipes(
    trained: Forecaster, dataset: Dataset
) -> None:
    """train_model's head is `lstm` exactly when its validation score is lower; each score
    and the shipped calibration equal an independent computation of the recipe."""
    scores = trained.head_scores
    assert set(scores) == set(HEADS)
    assert trained.head == ("lstm" if scores["lstm"] < scores["har"] else "har")
    assert trained.intervals is not None
    references = {head: _reference(trained, dataset, head) for head in HEADS}
    for head, (calibration, score, intervals) in references.items():
        assert scores[head] == pytest.approx(score, rel=1e-9), head
        assert intervals.scale == trained.intervals.scale
        if head == trained.head:
            assert trained.intervals.calibration == calibration
    assert references["lstm"][0] != references["har"][0]  # the multiplier varies by window


@pytest.mark.parametrize(
    ("lstm_score", "har_score", "kept"),
    [(0.01, 0.02, "lstm"), (0.02, 0.01, "har"), (0.015, 0.015, "har")],
)
def test_choose_head_ships_lstm_only_on_a_strictly_lower_score(
    trained: Forecaster,
    dataset: Dataset,
    monkeypatch: pytest.MonkeyPatch,
    lstm_score: float,
    har_score: float,
    kept: str,
) -> None:
    """With the scores fixed, the lower one wins and a tie keeps `har` (the recipe); the
    forecaster then carries that head's calibration and both scores."""
    forecaster = _copy(trained)
    assert forecaster.intervals is not None
    scale = forecaster.intervals.scale
    given = iter([lstm_score, har_score])  # choose_head scores the heads in HEADS order
    monkeypatch.setattr(heads_module, "mean_interval_score", lambda *_: next(given))
    choose_head(forecaster, scale, dataset.train, dataset.validation)
    assert forecaster.head == kept
    assert forecaster.head_scores == {"lstm": lstm_score, "har": har_score}
    assert forecaster.intervals.calibration == _reference(forecaster, dataset, kept)[0]


def _zero_head(forecaster: Forecaster) -> Forecaster:
    zeroed = _copy(forecaster)
    with torch.no_grad():
        zeroed.module.head.weight.zero_()
        zeroed.module.head.bias.zero_()
    return zeroed


def test_a_zero_head_is_the_har_recipe_centred_on_the_last_close(
    trained: Forecaster, dataset: Dataset
) -> None:
    """With the head zeroed both heads calibrate and score identically (so `har`, the tie,
    is kept) and the forecast is today's recipe: last close, and close_intervals(last, 0,
    σ̂, conformal quantiles of r / σ̂ on train + validation)."""
    forecaster = _zero_head(trained)
    assert forecaster.intervals is not None
    scale = forecaster.intervals.scale
    choose_head(forecaster, scale, dataset.train, dataset.validation)
    assert forecaster.head_scores["lstm"] == forecaster.head_scores["har"]
    assert forecaster.head == "har"
    references = {head: _reference(forecaster, dataset, head) for head in HEADS}
    assert references["lstm"][0] == references["har"][0]

    har = Intervals(scale, normal_calibration())
    z = [
        np.log(s.next_close / s.last_close) / har.base_scale(s.windows, dataset.columns)
        for s in (dataset.train, dataset.validation)
    ]
    recipe = calibrate(np.concatenate(z))
    assert forecaster.intervals.calibration == recipe
    test = dataset.test
    sigma_hat = har.base_scale(test.windows, dataset.columns)
    expected = close_intervals(test.last_close, np.zeros(len(test)), sigma_hat, recipe)
    for head in HEADS:
        forecaster.head = head
        forecast = forecaster.predict_distribution(test.windows, test.tickers)
        np.testing.assert_array_equal(forecast["predicted_close"], test.last_close)
        for column in INTERVAL_COLUMNS:
            np.testing.assert_allclose(forecast[column], expected[column], rtol=1e-13)


def test_the_head_changes_only_the_interval_widths(trained: Forecaster, dataset: Dataset) -> None:
    """Forcing `har` or `lstm` (same calibration) leaves predicted_close as it was; each
    bound's log distance from it scales by max(σ̂·m, floor) / σ̂ from har to lstm."""
    forecaster = _copy(trained)
    assert forecaster.intervals is not None
    test = dataset.test
    forecasts = {}
    for head in HEADS:
        forecaster.head = head
        forecasts[head] = forecaster.predict_distribution(test.windows, test.tickers)
    np.testing.assert_array_equal(
        forecasts["lstm"]["predicted_close"], forecasts["har"]["predicted_close"]
    )
    point = forecasts["har"]["predicted_close"]
    assert not np.allclose(point, test.last_close, rtol=1e-9)  # a real centre, not naive
    _, sigma_hat, multiplier = forecaster.distribution_parts(test.windows, test.tickers)
    ratio = np.maximum(sigma_hat * multiplier, SIGMA_FLOOR) / sigma_hat
    assert np.ptp(ratio) > 0  # the widths differ by window
    for column in INTERVAL_COLUMNS:
        lstm, har = (np.log(forecasts[h][column] / point) for h in ("lstm", "har"))
        np.testing.assert_allclose(lstm, ratio * har, rtol=1e-9)


def test_a_spec_3_model_saves_and_loads_its_head_and_predicts_the_same(
    trained: Forecaster, dataset: Dataset, tmp_path: Path
) -> None:
    """spec.json says version 3 and the distribution; the loaded model keeps the head, both
    scores and predicts the same closes and bounds."""
    weights, spec = trained.save(tmp_path / "model")
    data = json.loads(spec.read_text())
    assert data["spec_version"] == 3 and data["lstm"]["distribution"] == "student_t"
    loaded = Forecaster.load(weights, spec)
    assert loaded.distributional
    assert (loaded.head, loaded.head_scores) == (trained.head, trained.head_scores)
    for split in (dataset.test, dataset.latest):
        before = trained.predict_distribution(split.windows, split.tickers)
        after = loaded.predict_distribution(split.windows, split.tickers)
        for column in FORECAST_COLUMNS:
            np.testing.assert_array_equal(after[column], before[column])
    lstm = parameters(
        "student_t", loaded.predict_outputs(dataset.test.windows, dataset.test.tickers)
    )
    assert lstm.nu is not None and np.all(lstm.nu > 2.0)


def test_a_spec_2_model_still_loads_as_a_point_head_and_predicts_the_same(
    dataset: Dataset, tmp_path: Path
) -> None:
    """A point-head model's spec written as version 2 (no head, no head_scores, no
    lstm.distribution) loads as a point head and predicts what it did before saving."""
    point = _train(dataset, distribution="none")
    assert not point.distributional and point.head is None
    weights, spec = point.save(tmp_path / "model")
    data = json.loads(spec.read_text())
    del data["head"], data["head_scores"], data["lstm"]["distribution"]
    spec.write_text(json.dumps({**data, "spec_version": 2}))
    loaded = Forecaster.load(weights, spec)
    assert loaded.module.config.distribution == "none" and loaded.module.outputs == 1
    assert (loaded.distributional, loaded.head, loaded.head_scores) == (False, None, {})
    test = dataset.test
    before = point.predict_distribution(test.windows, test.tickers)
    after = loaded.predict_distribution(test.windows, test.tickers)
    for column in FORECAST_COLUMNS:
        np.testing.assert_array_equal(after[column], before[column])
    assert np.all(np.isfinite(after["upper_95"]))
