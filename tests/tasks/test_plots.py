import io

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection

from closecast.tasks.reporting.plots import (
    LOSS_CURVES_PLOT,
    plot_loss_curves,
    plot_name,
    plot_predictions,
    plot_tickers,
)


def _per_ticker(skills: dict[str, float]) -> pd.DataFrame:
    return pd.DataFrame({"ticker": list(skills), "skill": list(skills.values())})


@pytest.mark.parametrize(
    ("skills", "expected"),
    [
        ({"B": 0.1, "A": -0.2}, ["A", "B"]),
        (
            {f"T{i}": s for i, s in enumerate([0.5, -0.9, 0.1, 0.0, 0.3, -0.1, 0.9, -0.5])},
            ["T0", "T1", "T4", "T5", "T6", "T7"],  # worst T1 T7 T5, best T4 T0 T6
        ),
    ],
)
def test_plot_tickers_keeps_all_or_the_worst_and_best(
    skills: dict[str, float], expected: list[str]
) -> None:
    """Up to six tickers are all plotted; beyond that the three worst and three best by skill."""
    assert plot_tickers(_per_ticker(skills)) == expected


def _test_predictions(sessions: int, intervals: bool = True) -> pd.DataFrame:
    """AAA and BBB over `sessions` test windows; BBB's actual closes rise by 1 a session."""
    dates = pd.date_range("2021-01-04", periods=sessions, freq="B")
    last = np.arange(float(sessions)) + 100
    frames = []
    for ticker, shift in (("AAA", 0.0), ("BBB", 50.0)):
        frame = pd.DataFrame(
            {
                "ticker": ticker,
                "target_date": dates,
                "last_close": last + shift,
                "actual_close": last + shift + 1,
                "predicted_close": last + shift + 0.5,
            }
        )
        if intervals:  # the 80% band misses every other close, the 95% band none
            half = np.where(np.arange(sessions) % 2 == 0, 1.0, 0.25)
            frame["lower_80"] = frame["predicted_close"] - half
            frame["upper_80"] = frame["predicted_close"] + half
            frame["lower_95"] = frame["predicted_close"] - 2.0
            frame["upper_95"] = frame["predicted_close"] + 2.0
        else:
            frame[["lower_80", "upper_80", "lower_95", "upper_95"]] = np.nan
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _bands(axes: Axes) -> list[str]:
    return [str(c.get_label()) for c in axes.collections if isinstance(c, PolyCollection)]


def test_plot_predictions_is_a_fan_chart_of_the_last_sessions() -> None:
    """The last 60 test sessions: actual, predicted and naive lines over 80% and 95% bands."""
    figure = plot_predictions(_test_predictions(100), "BBB")
    axes, _ = figure.axes
    assert [line.get_label() for line in axes.lines] == ["actual", "predicted", "naive"]
    np.testing.assert_allclose(axes.lines[0].get_ydata(), np.arange(40.0, 100.0) + 151)
    assert _bands(axes) == ["95% interval", "80% interval"]
    light, dark = [c for c in axes.collections if isinstance(c, PolyCollection)]
    assert light.get_alpha() < dark.get_alpha()  # the 95% band is the lighter one
    # the title speaks in the units of the run's metrics, over the whole test span
    relative = 0.5 / (np.arange(100.0) + 150)
    rmse, naive = np.sqrt(np.mean(relative**2)), np.sqrt(np.mean((2 * relative) ** 2))
    assert axes.get_title() == (
        f"BBB: coverage 80% 50% · 95% 100% · RMSE {rmse:.2%} of close vs naive {naive:.2%}"
    )
    assert axes.get_ylabel() == "close"
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_predictions_of_a_short_span_or_a_model_without_intervals() -> None:
    """Three windows still plot with their bands; NaN bounds plot the lines and no band."""
    figure = plot_predictions(_test_predictions(3), "AAA")
    axes, _ = figure.axes
    assert len(axes.lines[0].get_ydata()) == 3
    assert _bands(axes) == ["95% interval", "80% interval"]
    figure.savefig(io.BytesIO(), format="png")

    figure = plot_predictions(_test_predictions(5, intervals=False), "AAA")
    axes, _ = figure.axes
    assert [line.get_label() for line in axes.lines] == ["actual", "predicted", "naive"]
    assert _bands(axes) == []
    assert axes.get_title().startswith("AAA: RMSE ")  # no coverage to speak of
    figure.savefig(io.BytesIO(), format="png")


def test_plot_predictions_marks_the_closes_outside_the_95_band() -> None:
    """A close outside its 95% interval gets a red marker; the others none."""
    predictions = _test_predictions(10)
    miss = predictions.index[(predictions["ticker"] == "AAA")][4]
    predictions.loc[miss, ["lower_95", "upper_95"]] = [90.0, 100.0]  # its close is 105
    axes, _ = plot_predictions(predictions, "AAA").axes
    [marks] = [c for c in axes.collections if c.get_label() == "outside 95%"]
    assert marks.get_offsets()[:, 1].tolist() == [105.0]


def test_plot_predictions_has_an_error_panel_against_naive_under_the_fan() -> None:
    """Under the fan chart, the same sessions' absolute errors of the model and of the naive
    forecast in % of the last close, their means in the title, the x axis shared."""
    predictions = _test_predictions(100)
    shifted = predictions.index[predictions["ticker"] == "BBB"][-3:]
    predictions.loc[shifted, "predicted_close"] += 1.5  # 2 above the close: worse than naive
    fan, errors = plot_predictions(predictions, "BBB").axes
    assert [line.get_label() for line in errors.lines] == ["model", "naive"]
    last = np.arange(40.0, 100.0) + 150
    model = 100 * np.r_[np.full(57, 0.5), np.full(3, 1.0)] / last
    naive = 100 * 1.0 / last
    np.testing.assert_allclose(errors.lines[0].get_ydata(), model)
    np.testing.assert_allclose(errors.lines[1].get_ydata(), naive)
    np.testing.assert_array_equal(errors.lines[0].get_xdata(), fan.lines[0].get_xdata())
    assert errors.get_ylabel() == "|error|, % of last close"
    assert errors.get_title() == (
        f"Absolute error, last 60 sessions: model {model.mean():.2f}% vs naive "
        f"{naive.mean():.2f}% of the last close on average; closer: model 57, naive 0, tied 3"
    )
    assert errors.get_shared_x_axes().joined(fan, errors)
    predictions.loc[shifted, "predicted_close"] += 1.0  # 3 above: naive closer there
    _, errors = plot_predictions(predictions, "BBB").axes
    assert errors.get_title().endswith("closer: model 57, naive 3, tied 0")


def test_plot_loss_curves_draws_train_and_validation_and_marks_the_best_epoch() -> None:
    """Train and validation loss per epoch on one axis; the best epoch has a line and a marker."""
    history = [
        {"epoch": 1, "train_loss": 1.2, "val_loss": 1.1},
        {"epoch": 2, "train_loss": 1.0, "val_loss": 0.9},
        {"epoch": 3, "train_loss": 0.9, "val_loss": 0.95},
    ]
    figure = plot_loss_curves(history, best_epoch=2, target="vol_return")
    [axes] = figure.axes
    train, validation, best = axes.lines
    assert (train.get_label(), validation.get_label()) == ("train", "validation")
    assert list(train.get_xdata()) == [1, 2, 3] and list(train.get_ydata()) == [1.2, 1.0, 0.9]
    assert list(validation.get_ydata()) == [1.1, 0.9, 0.95]
    assert best.get_label() == "best epoch 2" and list(best.get_xdata()) == [2, 2]
    [marker] = axes.collections
    assert marker.get_offsets().tolist() == [[2.0, 0.9]]
    assert axes.get_title() == (
        "Loss per epoch (MSE of the vol_return target): best epoch 2 of 3, validation 0.9000"
    )
    assert axes.get_xlabel() == "epoch" and axes.get_ylabel() == "MSE (vol_return)"
    assert LOSS_CURVES_PLOT == "plots/loss_curves.png"
    figure.savefig(io.BytesIO(), format="png")


def test_plot_loss_curves_refuses_an_empty_history() -> None:
    """No epoch, no curve: a ValueError saying so."""
    with pytest.raises(ValueError, match="no epochs"):
        plot_loss_curves([], best_epoch=0, target="vol_return")


@pytest.mark.parametrize(
    ("ticker", "name"),
    [("AAPL", "AAPL"), ("^GSPC", "_GSPC"), ("BRK.B", "BRK.B"), ("../x", ".._x")],
)
def test_plot_name_is_a_safe_artifact_path(ticker: str, name: str) -> None:
    """A ticker's plot lands in plots/ whatever characters the symbol has."""
    assert plot_name(ticker) == f"plots/predicted_vs_actual_{name}.png"
