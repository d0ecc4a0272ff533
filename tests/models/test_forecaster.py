"""Forecaster.predict_frame: one row per ticker with a status, in memory (no MLflow)."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from closecast.models.encoding import Encoding
from closecast.models.forecaster import OUTPUT_COLUMNS, Forecaster
from closecast.models.lstm import LSTMConfig, LSTMForecaster

FEATURES = ("close", "volume", "open")


def _forecaster(target: str = "vol_return") -> Forecaster:
    torch.manual_seed(0)
    module = LSTMForecaster(LSTMConfig(hidden_size=8), n_features=len(FEATURES))
    return Forecaster(module, Encoding(features=FEATURES, target=target), window=5)


def _rows(tickers: list[str], n: int = 8) -> pd.DataFrame:
    """n sessions per ticker of smooth positive prices, canonical column names."""
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
                }
            )
        )
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("target", ["vol_return", "minmax_close"])
def test_windows_predicted_in_chunks_equal_all_at_once(target: str) -> None:
    """Encoding and predicting 3 windows at a time gives the same closes (to float32
    rounding: the LSTM kernels' sums depend on the batch size; the encoding is per window)."""
    forecaster = _forecaster(target)
    rng = np.random.default_rng(1)
    windows = 50 * np.exp(np.cumsum(rng.normal(0, 0.02, (10, 5, 3)), axis=1))  # (N, T, F)
    tickers = np.array(["AAA", "BBB"] * 5, dtype=object)
    forecaster.bounds = {"AAA": ([40.0] * 3, [60.0] * 3), "BBB": ([30.0] * 3, [70.0] * 3)}
    whole = forecaster.predict_windows(windows, tickers)
    chunked = forecaster.predict_windows(windows, tickers, chunk=3)
    np.testing.assert_allclose(chunked, whole, rtol=1e-6)
    assert whole.shape == (10,) and np.isfinite(whole).all()


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


def test_a_nan_prediction_is_never_ok() -> None:
    """A model whose output is NaN reports invalid_data, not an ok row without a number."""
    forecaster = _forecaster()
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
    spec.write_text(json.dumps(data | {"spec_version": 99}))
    weights.write_bytes(b"not read")
    with pytest.raises(ValueError, match=r"^unsupported model spec version 99$"):
        Forecaster.load(weights, spec)
