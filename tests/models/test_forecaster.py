"""Forecaster.predict_frame: one row per ticker with a status, in memory (no MLflow)."""

import json
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from closecast.core.config import DistributionName
from closecast.models.calibration import Calibration
from closecast.models.encoding import Encoding
from closecast.models.forecaster import OUTPUT_COLUMNS, Forecaster
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import ScaleModel, spans_for_window

FEATURES = ("close", "volume", "open")
# A HAR scale on a 5-row window's spans (1, 4): |r| terms, then range terms.
SCALE = ScaleModel(spans_for_window(5), (0.4, 0.2, 0.3, 0.3))
# Asymmetric quantiles, as conformal ones are: a bound tells which side it came from.
CALIBRATION = Calibration(levels=(0.8, 0.95), lower=(-1.2, -2.1), upper=(1.3, 2.0), n=200)


def _forecaster(target: str = "vol_return") -> Forecaster:
    """A point head by hand (distribution none, no intervals): a spec-1 model."""
    torch.manual_seed(0)
    config = LSTMConfig(hidden_size=8, distribution="none")
    module = LSTMForecaster(config, n_features=len(FEATURES))
    return Forecaster(module, Encoding(features=FEATURES, target=target), window=5)


def _distributional(head: str = "lstm", distribution: DistributionName = "student_t") -> Forecaster:
    """A spec-3 model by hand: a Student-t head (the widest; or `distribution`) with the HAR
    scale and a calibration, as train_model leaves one. Its head gets random weights: at its
    zero initialisation every window would predict location 0 and multiplier 1."""
    torch.manual_seed(0)
    config = LSTMConfig(hidden_size=8, distribution=distribution)
    module = LSTMForecaster(config, n_features=len(FEATURES))
    with torch.no_grad():
        module.head.weight.normal_(0, 0.3)
        module.head.bias.normal_(0, 0.1)
    return Forecaster(
        module,
        Encoding(features=FEATURES),
        window=5,
        intervals=Intervals(SCALE, CALIBRATION),
        head=head,
        head_scores={"lstm": 0.031, "har": 0.032},
    )


def _rows(tickers: list[str], n: int = 8) -> pd.DataFrame:
    """n sessions per ticker of smooth positive prices, canonical column names (the high
    and low that a model with intervals reads, too)."""
    parts = []
    for i, ticker in enumerate(tickers):
        close = 20.0 + 10 * i + np.sin(np.arange(n))
        parts.append(
            pd.DataFrame(
                {
                    "ticker": ticker,
                    "date": pd.bdate_range("2024-01-01", periods=n),
                    "open": close * 0.99,
                    "close": close,
                    "volume": 1_000_000.0 + 1000 * np.arange(n),
                    "high": close * (1.01 + 0.002 * np.cos(np.arange(n))),
                    "low": close * 0.985,
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


def _windows(forecaster: Forecaster, rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each ticker's last raw window, (N, T, C), and the tickers (N,)."""
    groups = rows.sort_values("date").groupby("ticker")
    tickers = np.array([str(t) for t, _ in groups], dtype=object)
    return np.stack([forecaster.window_values(g) for _, g in groups]), tickers


@pytest.mark.parametrize(
    "build",
    [
        partial(_forecaster, "vol_return"),
        partial(_forecaster, "minmax_close"),
        _distributional,
        partial(_distributional, distribution="normal"),
    ],
    ids=["vol_return", "minmax_close", "student_t", "normal"],
)
def test_windows_predicted_in_chunks_equal_all_at_once(
    build: Callable[[], Forecaster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Encoding and predicting 3 windows at a time gives the same outputs and closes (to
    float32 rounding: the LSTM kernels' sums depend on the batch size; the encoding is per
    window)."""
    forecaster = build()
    rng = np.random.default_rng(1)
    prices = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (10, 5, 3)), axis=1))  # (N, T, F)
    high_low = prices[:, :, :1] * np.array([1.01, 0.99])  # (N, T, 1) -> (N, T, 2)
    windows = np.concatenate([prices, high_low], axis=2)[:, :, : len(forecaster.columns)]
    tickers = np.array(["AAA", "BBB"] * 5, dtype=object)
    forecaster.bounds = {"AAA": ([40.0] * 3, [60.0] * 3), "BBB": ([30.0] * 3, [70.0] * 3)}
    outputs = forecaster.predict_outputs(windows, tickers)
    np.testing.assert_allclose(
        forecaster.predict_outputs(windows, tickers, chunk=3), outputs, rtol=1e-6
    )
    whole = forecaster.predict_windows(windows, tickers)
    by_three = partial(Forecaster.predict_outputs, forecaster, chunk=3)
    monkeypatch.setattr(forecaster, "predict_outputs", by_three)  # what predict_windows calls
    chunked = forecaster.predict_windows(windows, tickers)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    assert whole.shape == (10,) and np.isfinite(whole).all()
    widths = {"none": (10,), "normal": (10, 2), "student_t": (10, 3)}
    assert outputs.shape == widths[forecaster.module.config.distribution]


def test_a_distributional_model_predicts_its_median_with_the_chosen_heads_scale() -> None:
    """Spec 3: the point is the median, last close · exp(μ·σ̂); each bound is
    point · exp(q·σ), with q the calibrated quantile and σ = σ̂·m (head lstm) or σ̂ (har)."""
    rows = _rows(["AAA", "BBB"])
    lstm, har = _distributional("lstm"), _distributional("har")
    windows, tickers = _windows(lstm, rows)  # (2, 5, 5): close, volume, open, high, low
    outputs = lstm.predict_outputs(windows, tickers)  # (2, 3): μ, log m, ν's raw output
    moves = np.abs(np.diff(np.log(windows[:, :, 0]), axis=1))  # (2, 4) |log return|
    ranges = np.log(windows[:, :, 3] / windows[:, :, 4])  # (2, 5) log(high / low)
    # The HAR terms of the last row: mean |r| over 1 and 4 days, then mean range over 1 and 4.
    terms = np.stack([moves[:, -1], moves[:, -4:].mean(1), ranges[:, -1], ranges[:, -4:].mean(1)])
    sigma_hat = np.array(SCALE.coefficients) @ terms  # (4,) @ (4, 2) -> (2,)
    multiplier = np.exp(outputs[:, 1])
    assert np.abs(outputs[:, 1]).min() > 0.01  # the two heads' scales differ
    point = windows[:, -1, 0] * np.exp(outputs[:, 0] * sigma_hat)
    for forecaster, sigma in ((lstm, sigma_hat * multiplier), (har, sigma_hat)):
        table = forecaster.predict_frame(rows).set_index("ticker")
        assert list(table["status"]) == ["ok", "ok"]
        np.testing.assert_allclose(table["predicted_close"], point, rtol=1e-6)
        for column, q in [
            ("lower_95", -2.1), ("lower_80", -1.2), ("upper_80", 1.3), ("upper_95", 2.0)
        ]:  # fmt: skip
            np.testing.assert_allclose(
                np.log(table[column] / table["predicted_close"]), q * sigma, rtol=1e-5
            )


@pytest.mark.parametrize(
    ("column", "value", "status", "says"),
    [
        ("close", np.nan, "invalid_data", "close is nan on 2024-01-10"),
        ("close", np.inf, "invalid_data", "close is inf on 2024-01-10"),
        ("open", 0.0, "invalid_data", "open is 0 on 2024-01-10"),
        ("close", -3.0, "invalid_data", "close is -3 on 2024-01-10"),
        ("volume", -1.0, "invalid_data", "volume is -1 on 2024-01-10"),
        ("volume", 0.0, "ok", ""),
    ],
)
def test_a_bad_value_in_the_last_window_marks_only_that_ticker(
    column: str, value: float, status: str, says: str
) -> None:
    """Prices must be finite and > 0, volume finite and >= 0; the other ticker is predicted."""
    rows = _rows(["AAA", "BBB"])
    rows.loc[rows.index[rows["ticker"] == "BBB"][-1], column] = value
    predicted = _forecaster().predict_frame(rows).set_index("ticker")
    assert predicted.loc["AAA", "status"] == "ok"
    assert np.isfinite(predicted.loc["AAA", "predicted_close"])
    assert predicted.loc["BBB", "status"] == status
    assert predicted.loc["BBB", "message"] == says
    assert np.isfinite(predicted.loc["BBB", "predicted_close"]) == (status == "ok")


def test_a_nan_before_the_last_window_does_not_matter() -> None:
    """Only the last `window` rows feed the model."""
    rows = _rows(["AAA"])
    rows.loc[0, "close"] = np.nan
    predicted = _forecaster().predict_frame(rows)
    assert list(predicted["status"]) == ["ok"]


def test_too_few_rows_is_insufficient_history() -> None:
    """A ticker with fewer rows than the window gets insufficient_history and no number."""
    rows = pd.concat([_rows(["AAA"]), _rows(["BBB"], n=3)], ignore_index=True)
    predicted = _forecaster().predict_frame(rows)
    assert list(predicted["status"]) == ["ok", "insufficient_history"]
    assert predicted["message"][1] == "3 rows; the model's window needs 5"
    assert np.isnan(predicted["predicted_close"][1])


def test_a_duplicated_date_is_invalid_data() -> None:
    """Two rows for one date would make a window that is not consecutive sessions."""
    rows = _rows(["AAA"])
    rows.loc[rows.index[-1], "date"] = rows["date"].iloc[-2]
    predicted = _forecaster().predict_frame(rows)
    assert list(predicted["status"]) == ["invalid_data"]
    assert predicted["message"][0] == "date 2024-01-09 appears more than once"


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN in, NaN out
@pytest.mark.parametrize("build", [_forecaster, _distributional], ids=["none", "student_t"])
def test_a_nan_prediction_is_never_ok(build: Callable[[], Forecaster]) -> None:
    """A model whose output is NaN reports invalid_data, not an ok row without a number."""
    forecaster = build()
    with torch.no_grad():
        for parameter in forecaster.module.parameters():
            parameter.fill_(float("nan"))
    predicted = forecaster.predict_frame(_rows(["AAA", "BBB"]))
    assert list(predicted["status"]) == ["invalid_data", "invalid_data"]
    assert predicted["predicted_close"].isna().all()
    assert set(predicted["message"]) == {"the model returned a non-finite prediction (nan)"}


def test_a_ticker_without_minmax_bounds_is_insufficient_history() -> None:
    """A minmax model never trained on a ticker cannot scale it; the others are predicted."""
    forecaster = _forecaster("minmax_close")
    forecaster.bounds = {"AAA": ([19.0, 0.0, 19.0], [22.0, 2e6, 22.0])}
    predicted = forecaster.predict_frame(_rows(["AAA", "BBB"]))
    assert list(predicted["status"]) == ["ok", "insufficient_history"]
    assert "no MinMax bounds" in predicted["message"][1]


def test_no_rows_give_an_empty_table_with_every_column() -> None:
    """Empty in, empty out, with the columns a reader matches by name."""
    predicted = _forecaster().predict_frame(_rows(["AAA"]).iloc[:0])
    assert predicted.empty
    assert list(predicted.columns) == list(OUTPUT_COLUMNS)


def test_a_missing_feature_column_is_refused_naming_it() -> None:
    """The in-memory path refuses a frame without a feature column, in one line."""
    with pytest.raises(ValueError, match="volume"):
        _forecaster().predict_frame(_rows(["AAA"]).drop(columns="volume"))


def test_save_and_load_round_trip_and_an_unknown_spec_version_is_refused(tmp_path: Path) -> None:
    """What `save` wrote loads back and predicts the same; spec_version 99 is a one-line
    ValueError naming it, before any weight is read."""
    original = _forecaster()
    weights, spec = original.save(tmp_path / "model")
    rows = _rows(["AAA", "BBB"])
    pd.testing.assert_frame_equal(
        Forecaster.load(weights, spec).predict_frame(rows), original.predict_frame(rows)
    )

    data = json.loads(spec.read_text())
    assert data["spec_version"] == 3 and data["lstm"]["distribution"] == "none"
    # A version 1-2 spec predates `distribution`: its one output loads as a point head.
    older = {k: v for k, v in data.items() if k not in ("head", "head_scores")}
    older["lstm"] = {k: v for k, v in data["lstm"].items() if k != "distribution"}
    spec.write_text(json.dumps(older | {"spec_version": 2}))
    loaded = Forecaster.load(weights, spec)
    assert loaded.module.config.distribution == "none" and not loaded.distributional
    pd.testing.assert_frame_equal(loaded.predict_frame(rows), original.predict_frame(rows))

    spec.write_text(json.dumps(data | {"spec_version": 99}))
    weights.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"^unsupported model spec version 99$"):
        Forecaster.load(weights, spec)


@pytest.mark.parametrize("distribution", ["student_t", "normal"])
def test_a_distributional_model_round_trips_with_its_head(
    tmp_path: Path, distribution: DistributionName
) -> None:
    """Spec 3 saves the distribution, the chosen head and both heads' scores; what loads
    back predicts the same bounds."""
    original = _distributional("har", distribution)
    weights, spec = original.save(tmp_path / "model")
    data = json.loads(spec.read_text())
    assert data["spec_version"] == 3 and data["lstm"]["distribution"] == distribution
    assert (data["head"], data["head_scores"]) == ("har", {"lstm": 0.031, "har": 0.032})
    loaded = Forecaster.load(weights, spec)
    assert loaded.distributional and loaded.intervals == original.intervals
    assert (loaded.head, loaded.head_scores) == ("har", original.head_scores)
    rows = _rows(["AAA", "BBB"])
    predicted = loaded.predict_frame(rows)
    assert list(predicted["status"]) == ["ok", "ok"]
    pd.testing.assert_frame_equal(predicted, original.predict_frame(rows))
