"""The logged pyfunc takes natural OHLCV input: the README's call, through real MLflow."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yfinance
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PyFuncModel

from closecast.core.config import MODEL_NAME
from closecast.models.calibration import Calibration
from closecast.models.encoding import Encoding
from closecast.models.forecaster import FORECAST_COLUMNS, OUTPUT_COLUMNS, Forecaster
from closecast.models.intervals import Intervals
from closecast.models.lstm import LSTMConfig, LSTMForecaster
from closecast.models.scale import ScaleModel, spans_for_window
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.registry.logged_model import log_forecaster
from tests.fakes import FakeYahoo, yahoo_frame
from tests.mlflow_fixtures import new_home

WINDOW = 10


def _forecaster(features: tuple[str, ...], seed: int = 0) -> Forecaster:
    """A randomly initialised (untrained) point-head forecaster: enough to check the plumbing."""
    torch.manual_seed(seed)
    module = LSTMForecaster(
        LSTMConfig(hidden_size=8, distribution="none"), n_features=len(features)
    )
    return Forecaster(module, Encoding(features=features), WINDOW)


def _distributional(features: tuple[str, ...], seed: int = 2) -> Forecaster:
    """A spec-3 forecaster by hand: the default (normal) head (given random weights: at its
    zero initialisation it predicts the last close), a HAR scale and a calibration, head lstm."""
    torch.manual_seed(seed)
    module = LSTMForecaster(LSTMConfig(hidden_size=8), n_features=len(features))
    with torch.no_grad():
        module.head.weight.normal_(0, 0.3)
    scale = ScaleModel(spans_for_window(WINDOW), (0.3, 0.2, 0.1, 0.2, 0.1, 0.1))
    calibration = Calibration(levels=(0.8, 0.95), lower=(-1.2, -2.1), upper=(1.3, 2.0), n=200)
    return Forecaster(
        module,
        Encoding(features=features),
        WINDOW,
        intervals=Intervals(scale, calibration),
        head="lstm",
        head_scores={"lstm": 0.031, "har": 0.032},
    )


def yahoo_rows(tickers: list[str], n: int = 15) -> pd.DataFrame:
    """Long-format bars as yfinance names them: Ticker, Date, Open, High, Low, Close, Volume.

    Dates are naive datetimes, volume is int64, as `yf.download(...).stack()` gives them.
    """
    parts = []
    for i, ticker in enumerate(tickers):
        bars = yahoo_frame(n, seed=i, base=50.0 + 40 * i)
        bars.index = bars.index.tz_localize(None)
        parts.append(bars.reset_index().assign(Ticker=ticker))
    columns = ["Ticker", "Date", "Open", "High", "Low", "Close", "Volume"]
    return pd.concat(parts, ignore_index=True)[columns]


def expected_closes(forecaster: Forecaster, rows: pd.DataFrame) -> dict[str, float]:
    """The next close of each ticker, computed on the raw windows without any frame handling."""
    rows = rows.rename(columns=str.lower)
    out = {}
    for ticker, group in rows.groupby("ticker"):
        values = group.sort_values("date")[list(forecaster.features)].to_numpy(np.float64)
        window = values[-forecaster.window :][None]  # (n, F) -> (1, T, F)
        out[str(ticker)] = float(forecaster.predict_windows(window, np.array([ticker]))[0])
    return out


@dataclass
class Logged:
    """Three logged models (default features, close only: point heads; a distributional
    spec-3 one) loaded back as pyfuncs."""

    default: Forecaster
    default_model: PyFuncModel
    close_only: Forecaster
    close_only_model: PyFuncModel
    distributional: Forecaster
    distributional_model: PyFuncModel


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Iterator[Logged]:
    home = new_home(tmp_path_factory.mktemp("pyfunc") / "home", mlflow_template)
    uri = f"sqlite:///{home / 'mlflow.db'}"
    client = configure_mlflow(uri)
    experiment = client.create_experiment("pyfunc", artifact_location=str(home / "artifacts"))
    default, close_only = _forecaster(("close", "volume", "open")), _forecaster(("close",), 1)
    example = yahoo_rows(["AAA"]).rename(columns=str.lower).astype({"volume": np.float64})
    default_uri = log_forecaster(default, client.create_run(experiment).info.run_id, example)
    close_uri = log_forecaster(close_only, client.create_run(experiment).info.run_id, example)
    distributional = _distributional(("close", "volume", "open"))
    spec3_uri = log_forecaster(distributional, client.create_run(experiment).info.run_id, example)
    version = mlflow.register_model(default_uri, MODEL_NAME).version
    client.set_registered_model_alias(MODEL_NAME, "champion", version)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
        yield Logged(
            default,
            mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion"),
            close_only,
            mlflow.pyfunc.load_model(close_uri),
            distributional,
            mlflow.pyfunc.load_model(spec3_uri),
        )
    mlflow.set_tracking_uri(None)  # type: ignore[arg-type]


def _assert_all_ok(predicted: pd.DataFrame, expected: dict[str, float]) -> None:
    assert list(predicted.columns) == list(OUTPUT_COLUMNS)
    assert list(predicted["ticker"]) == sorted(expected)
    assert list(predicted["status"]) == ["ok"] * len(expected)
    assert list(predicted["message"]) == [""] * len(expected)
    np.testing.assert_allclose(
        predicted["predicted_close"], [expected[t] for t in sorted(expected)], rtol=1e-6
    )


def test_it_accepts_int64_volume_as_read_csv_gives_it(logged: Logged) -> None:
    """Lower-case columns with an int64 volume (read_csv, yfinance) are predicted."""
    rows = yahoo_rows(["BBB", "AAA"]).rename(columns=str.lower)
    assert rows["volume"].dtype == np.int64
    predicted = logged.default_model.predict(rows)
    _assert_all_ok(predicted, expected_closes(logged.default, rows))


def test_it_accepts_dates_as_strings(logged: Logged) -> None:
    """ISO date strings (a CSV read without parse_dates, a JSON request) are dates."""
    rows = yahoo_rows(["AAA", "BBB"]).rename(columns=str.lower)
    rows["date"] = rows["date"].dt.strftime("%Y-%m-%d")
    rows["volume"] = rows["volume"].astype(np.float64)
    predicted = logged.default_model.predict(rows.sample(frac=1.0, random_state=0))
    _assert_all_ok(predicted, expected_closes(logged.default, rows))


def test_it_accepts_capitalised_columns_as_yfinance_names_them(logged: Logged) -> None:
    """Ticker, Date, Open, High, Low, Close, Volume (and an ignored Adj Close) work as-is."""
    rows = yahoo_rows(["AAA", "BBB"]).assign(**{"Adj Close": 1.0})
    predicted = logged.default_model.predict(rows)
    _assert_all_ok(predicted, expected_closes(logged.default, rows))


def test_it_accepts_a_yfinance_history_frame_with_its_date_index(logged: Logged) -> None:
    """`Ticker.history()` bars: the tz-aware Date index is the date, no reset_index needed."""
    bars = yahoo_frame(15).assign(Ticker="AAA")
    predicted = logged.default_model.predict(bars)
    _assert_all_ok(predicted, expected_closes(logged.default, bars.reset_index()))


def _downloaded(fake_yahoo: FakeYahoo, tickers: str, **options: object) -> pd.DataFrame:
    """What `yf.download(tickers)` returns (yfinance 1.7's own code, offline)."""
    fake_yahoo.history = {"AAA": yahoo_frame(20), "BBB": yahoo_frame(20, seed=1, base=90.0)}
    return yfinance.download(
        tickers, start="2020-01-02", end="2020-02-01", progress=False, **options
    )


def test_it_accepts_flat_yf_download_columns_as_one_unnamed_ticker(
    logged: Logged, fake_yahoo: FakeYahoo
) -> None:
    """`yf.download("AAA", multi_level_index=False)`: Date index, flat columns, no ticker
    anywhere, so every row is one ticker, named ''."""
    bars = _downloaded(fake_yahoo, "AAA", multi_level_index=False)
    assert not isinstance(bars.columns, pd.MultiIndex) and "Ticker" not in bars.columns
    predicted = logged.default_model.predict(bars)
    rows = bars.reset_index().assign(Ticker="")
    _assert_all_ok(predicted, expected_closes(logged.default, rows))


def test_it_accepts_yf_download_of_several_tickers_stacked_as_the_readme_says(
    logged: Logged, fake_yahoo: FakeYahoo
) -> None:
    """`yf.download("AAA BBB").stack(level="Ticker").reset_index()`: each ticker named."""
    rows = _downloaded(fake_yahoo, "AAA BBB").stack(level="Ticker").reset_index()
    predicted = logged.default_model.predict(rows)
    _assert_all_ok(predicted, expected_closes(logged.default, rows))


def test_a_close_only_model_needs_only_ticker_date_close(logged: Logged) -> None:
    """A close-only model neither demands nor lists volume, open, high or low."""
    rows = yahoo_rows(["AAA", "BBB"]).rename(columns=str.lower)[["ticker", "date", "close"]]
    predicted = logged.close_only_model.predict(rows)
    _assert_all_ok(predicted, expected_closes(logged.close_only, rows))
    names = set(logged.close_only_model.metadata.get_input_schema().input_names())
    assert {n.lower() for n in names} >= {"ticker", "date", "close"}
    assert not {n.lower() for n in names} & {"volume", "open", "high", "low"}


def test_a_distributional_model_predicts_through_the_pyfunc_as_in_memory(logged: Logged) -> None:
    """Spec 3 (the default head, HAR scale, head lstm): yfinance-named rows through the pyfunc
    give the in-memory median and intervals of the raw windows; it asks for high and low."""
    rows = yahoo_rows(["BBB", "AAA"])
    predicted = logged.distributional_model.predict(rows)
    forecaster = logged.distributional
    lower = rows.rename(columns=str.lower).sort_values(["ticker", "date"])
    windows = np.stack(
        [
            g[list(forecaster.columns)].to_numpy(np.float64)[-WINDOW:]
            for _, g in lower.groupby("ticker")
        ]
    )  # (2, T, C): close, volume, open, high, low
    expected = forecaster.predict_distribution(windows, np.array(["AAA", "BBB"]))
    assert list(predicted["ticker"]) == ["AAA", "BBB"]
    assert list(predicted["status"]) == ["ok", "ok"]
    for column in FORECAST_COLUMNS:
        np.testing.assert_allclose(predicted[column], expected[column], rtol=1e-9)
    last_close = windows[:, -1, 0]
    assert np.abs(predicted["predicted_close"] / last_close - 1).min() > 1e-6  # not naive
    assert (predicted["lower_95"] < predicted["lower_80"]).all()
    assert (predicted["upper_80"] < predicted["upper_95"]).all()
    names = {
        n.lower() for n in logged.distributional_model.metadata.get_input_schema().input_names()
    }
    assert {"high", "low"} <= names


def test_a_bad_ticker_gets_a_status_and_never_sinks_the_batch(logged: Logged) -> None:
    """Too few rows -> insufficient_history, NaN in the last window -> invalid_data; AAA is ok."""
    rows = yahoo_rows(["AAA", "BBB", "CCC"]).rename(columns=str.lower).astype({"volume": float})
    rows = rows.drop(rows.index[(rows["ticker"] == "BBB")][:10])  # 5 rows left
    last_ccc = rows.index[rows["ticker"] == "CCC"][-1]
    rows.loc[last_ccc, "close"] = np.nan
    predicted = logged.default_model.predict(rows).set_index("ticker")
    assert list(predicted.index) == ["AAA", "BBB", "CCC"]
    assert list(predicted["status"]) == ["ok", "insufficient_history", "invalid_data"]
    good = expected_closes(logged.default, rows[rows["ticker"] == "AAA"])["AAA"]
    assert predicted.loc["AAA", "predicted_close"] == pytest.approx(good, rel=1e-6)
    assert predicted.loc[["BBB", "CCC"], "predicted_close"].isna().all()
    assert "5 rows" in predicted.loc["BBB", "message"]
    assert "close" in predicted.loc["CCC", "message"]
    for message in predicted.loc[["BBB", "CCC"], "message"]:
        assert message and "\n" not in message


@pytest.mark.parametrize(
    ("spoil", "says"),
    [
        (lambda rows: rows.drop(columns="volume"), "no volume column"),
        (lambda rows: rows.assign(close="n/a"), "column close holds no numbers"),
    ],
    ids=["missing", "text"],
)
def test_a_missing_or_unreadable_column_is_refused_in_one_line_naming_it(
    logged: Logged, spoil: Callable[[pd.DataFrame], pd.DataFrame], says: str
) -> None:
    """No volume column, or a close column of text: one line that names it, no data dump."""
    rows = spoil(yahoo_rows(["AAA"]).rename(columns=str.lower).astype({"volume": float}))
    with pytest.raises(MlflowException) as refused:
        logged.default_model.predict(rows)
    message = str(refused.value)
    assert says in message and "\n" not in message
    assert len(message) < 300


def test_an_unreadable_date_marks_only_its_ticker(logged: Logged) -> None:
    """A date string that is no date, in BBB's last window: BBB invalid_data, AAA predicted."""
    rows = yahoo_rows(["AAA", "BBB"]).rename(columns=str.lower)
    rows["date"] = rows["date"].dt.strftime("%Y-%m-%d")
    rows.loc[rows.index[-1], "date"] = "not a date"
    predicted = logged.default_model.predict(rows)
    assert list(predicted["status"]) == ["ok", "invalid_data"]
    assert "missing or not a date" in predicted["message"][1]


def test_the_output_signature_lists_status_and_message(logged: Logged) -> None:
    """The logged output schema says what predict returns, column for column."""
    outputs = logged.default_model.metadata.get_output_schema()
    assert outputs.input_names() == list(OUTPUT_COLUMNS)
    assert logged.default_model.metadata.saved_input_example_info is not None
