import io
from datetime import date

import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import to_hex, to_rgb

from closecast.tasks.reporting.plots import (
    LOSS_CURVES_PLOT,
    PLOTTED_TICKERS,
    TOMORROW_TICKERS,
    fan_chart_rule,
    plot_loss_curves,
    plot_name,
    plot_predictions,
    plot_tickers,
    plot_tomorrow,
)
from closecast.tasks.reporting.report import ReportContext, build_report


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
    """Up to a limit (six here) tickers are all plotted; beyond it the three worst and three
    best by skill."""
    assert plot_tickers(_per_ticker(skills), limit=6) == expected


def test_every_ticker_up_to_twenty_gets_a_fan_chart_and_the_rule_says_so() -> None:
    """20 tickers: 20 fan charts; 25: the 10 worst and 10 best; the rule names both numbers."""
    twenty = _per_ticker({f"T{i:02d}": i / 100 for i in range(20)})
    assert PLOTTED_TICKERS == 20
    assert plot_tickers(twenty) == [f"T{i:02d}" for i in range(20)]
    many = _per_ticker({f"T{i:02d}": i / 100 for i in range(25)})
    assert plot_tickers(many) == [f"T{i:02d}" for i in [*range(10), *range(15, 25)]]
    assert fan_chart_rule() == (
        "every ticker with a test span up to 20; beyond that the 10 worst and 10 best by "
        "skill against the naive forecast"
    )


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
    assert [line.get_label() for line in axes.lines] == [
        "actual",
        "predicted",
        "naive (last close)",
    ]
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
    assert [line.get_label() for line in axes.lines] == [
        "actual",
        "predicted",
        "naive (last close)",
    ]
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


def test_the_actual_predicted_and_naive_lines_differ_in_colour_style_and_marker() -> None:
    """Each pair of the fan chart's three lines differs in colour (far apart, not black beside
    dark blue), and in line style or marker, so they tell apart where they overlap; the
    legend names all three."""
    axes, errors = plot_predictions(_test_predictions(30), "AAA").axes
    looks = [
        (to_hex(line.get_color()), line.get_linestyle(), line.get_marker()) for line in axes.lines
    ]
    for i, first in enumerate(looks):
        for second in looks[i + 1 :]:
            apart = np.linalg.norm(np.subtract(to_rgb(first[0]), to_rgb(second[0])))
            assert apart > 0.5, (first, second)
            assert first[1:] != second[1:]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["95% interval", "80% interval", "actual", "predicted", "naive (last close)"]
    model, naive = errors.lines  # the error panel draws them as the fan chart does
    assert to_hex(model.get_color()) == looks[1][0] and to_hex(naive.get_color()) == looks[2][0]


CONTEXT = ReportContext(date(2018, 12, 19), date(2018, 12, 20), "closecast-lstm", "5", "r")


def _tomorrow_report(n: int, intervals: bool = True) -> pd.DataFrame:
    """n predicted tickers T00.. whose moves rise by 0.1% a ticker, from -1%, and one stale."""
    tickers = [f"T{i:02d}" for i in range(n)]
    close = np.linspace(20.0, 200.0, n)
    predicted = close * (1 + (np.arange(n) - 10) / 1000)
    frame = pd.DataFrame({"ticker": tickers, "predicted_close": predicted})
    if intervals:
        for level, z in ((80, 1.28), (95, 1.96)):
            frame[f"lower_{level}"] = predicted * (1 - z / 100)
            frame[f"upper_{level}"] = predicted * (1 + z / 100)
    issues = {"OLD": ("stale_data", "old")}
    closes = dict(zip(tickers, close, strict=True))
    return build_report([*tickers, "OLD"], CONTEXT, closes, frame, issues)


def test_tomorrow_shows_every_predicted_ticker_with_both_bands_in_percent() -> None:
    """Three predicted tickers (a stale one left out): three rows, the largest rise on top,
    each move in % of its last close inside its 80% band inside its 95% band."""
    [axes] = plot_tomorrow(_tomorrow_report(3)).axes
    assert [t.get_text() for t in axes.get_yticklabels()] == ["T02", "T01", "T00"]
    legend = [text.get_text() for text in axes.get_legend().get_texts()]
    assert legend == ["95% interval", "80% interval", "naive (no move)", "predicted move"]
    [naive, moves] = axes.lines
    np.testing.assert_allclose(moves.get_xdata(), [-0.8, -0.9, -1.0])  # T02 first, on top
    wide, narrow = (c for c in axes.collections if c.get_label().endswith("interval"))
    for band, z in ((wide, 1.96), (narrow, 1.28)):
        lows = [segment[0][0] for segment in band.get_segments()]
        np.testing.assert_allclose(
            lows, [100 * ((1 + m / 100) * (1 - z / 100) - 1) for m in moves.get_xdata()]
        )
    assert list(naive.get_xdata()) == [0, 0]
    assert axes.get_xlabel() == "move, % of the last close"
    assert axes.get_title() == "Predicted move 2018-12-19 → 2018-12-20: all 3 predicted tickers"


def test_tomorrow_of_many_tickers_shows_the_largest_rises_and_falls() -> None:
    """50 predicted tickers: the 15 largest rises and the 15 largest falls, the title says so."""
    [axes] = plot_tomorrow(_tomorrow_report(50)).axes
    shown = [t.get_text() for t in axes.get_yticklabels()]
    assert TOMORROW_TICKERS == 30 and len(shown) == 30
    assert shown == [f"T{i:02d}" for i in [*range(49, 34, -1), *range(14, -1, -1)]]
    assert axes.get_title().endswith("the 15 largest predicted rises and falls of 50 tickers")


def test_tomorrow_of_a_point_forecast_and_of_no_prediction() -> None:
    """No intervals: the moves alone, no band; no prediction at all: a ValueError."""
    [axes] = plot_tomorrow(_tomorrow_report(4, intervals=False)).axes
    assert [c for c in axes.collections if c.get_label().endswith("interval")] == []
    assert len(axes.get_yticklabels()) == 4
    nothing = _tomorrow_report(2).assign(status="stale_data")
    with pytest.raises(ValueError, match="no ticker has a prediction"):
        plot_tomorrow(nothing)
