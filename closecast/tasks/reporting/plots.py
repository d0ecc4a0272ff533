"""Plots for a run's review: tomorrow's predicted move of every ticker with its bands, each
ticker's fan chart of its last test sessions over its errors against the naive forecast,
and the loss curves of training."""

import re
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from closecast.models.forecaster import INTERVAL_COLUMNS
from closecast.tasks.modeling.evaluation import LEVELS

# Fan charts (predicted-vs-actual PNGs) per run: every ticker with a test span up to this
# many, else half of them the worst and half the best by skill against naive.
PLOTTED_TICKERS = 20
PLOTTED_SESSIONS = 60  # the last test sessions a plot shows (about three months)
# Tomorrow's chart: every predicted ticker up to this many, else the largest predicted
# rises and falls, half each (the report and the `predictions` table have them all).
TOMORROW_TICKERS = 30
TOMORROW_PLOT = "plots/tomorrow.png"
LOSS_CURVES_PLOT = "plots/loss_curves.png"
TIE = 1e-6  # percentage points: absolute errors closer than this count as a tie
# One look per line, the same in every chart: colour, style and marker each tell them apart.
# Naive is drawn on top, dashed: a model shrunk to naive (output_scale 0) hides nothing.
ACTUAL: dict[str, Any] = {
    "color": "black",
    "linestyle": "-",
    "linewidth": 1.0,
    "marker": "o",
    "markersize": 3,
}
PREDICTED: dict[str, Any] = {
    "color": "tab:orange",
    "linestyle": "-",
    "linewidth": 1.8,
    "marker": "D",
}
NAIVE: dict[str, Any] = {
    "color": "tab:gray",
    "linestyle": "--",
    "linewidth": 1.2,
    "marker": None,
    "zorder": 3,
}
BAND = "tab:blue"


def plot_tickers(per_ticker: pd.DataFrame, limit: int = PLOTTED_TICKERS) -> list[str]:
    """Tickers worth a fan chart: all up to `limit`, else the worst and best by skill."""
    ranked = per_ticker.sort_values(["skill", "ticker"])["ticker"].astype(str).tolist()
    if len(ranked) <= limit:
        return sorted(ranked)
    return sorted(ranked[: limit // 2] + ranked[len(ranked) - (limit - limit // 2) :])


def fan_chart_rule(limit: int = PLOTTED_TICKERS) -> str:
    """The rule that picks the fan charts, in the words the summary and the card use."""
    return (
        f"every ticker with a test span up to {limit}; beyond that the {limit // 2} worst "
        f"and {limit - limit // 2} best by skill against the naive forecast"
    )


def tomorrow_rows(report: pd.DataFrame, limit: int = TOMORROW_TICKERS) -> pd.DataFrame:
    """The predicted rows tomorrow's chart shows, largest predicted move first: all up to
    `limit`, else the `limit // 2` largest rises and as many largest falls."""
    ok = report[report["status"] == "ok"]
    ranked = ok.sort_values(["predicted_return", "ticker"], ascending=[False, True])
    if len(ranked) <= limit:
        return ranked
    return pd.concat([ranked.head(limit // 2), ranked.tail(limit // 2)])


def plot_tomorrow(report: pd.DataFrame, limit: int = TOMORROW_TICKERS) -> Figure:
    """Tomorrow's predicted move of each ticker, in % of its last close, with its 80% and
    95% intervals: one row per ticker, the largest predicted rise on top.

    The naive forecast (no move) is the dashed line at 0. Beyond `limit` predicted
    tickers, the largest rises and falls (`tomorrow_rows`), a gap between them.

    Raises:
        ValueError: when no row of the report has a prediction.
    """
    shown = tomorrow_rows(report, limit)
    if not len(shown):
        raise ValueError("no ticker has a prediction: no chart of tomorrow to draw")
    total = int((report["status"] == "ok").sum())
    y = np.arange(len(shown), dtype=float)[::-1]  # the first row (largest rise) on top
    if len(shown) < total:
        y[len(shown) // 2 :] -= 1.0  # a blank row between the rises and the falls
    close = shown["last_close"].to_numpy()
    figure = Figure(figsize=(9, 1.6 + 0.32 * (len(shown) + 1)), layout="constrained")
    axes = figure.subplots()
    for level, width, alpha in ((95, 5, 0.3), (80, 10, 0.6)):
        lower, upper = shown[f"lower_{level}"].to_numpy(), shown[f"upper_{level}"].to_numpy()
        has = np.isfinite(lower) & np.isfinite(upper)
        if has.any():
            axes.hlines(
                y[has],
                100 * (lower[has] / close[has] - 1),
                100 * (upper[has] / close[has] - 1),
                color=BAND,
                alpha=alpha,
                linewidth=width,
                label=f"{level}% interval",
            )
    axes.axvline(0, label="naive (no move)", **NAIVE)
    move = 100 * shown["predicted_return"].to_numpy()
    axes.plot(move, y, linestyle="none", label="predicted move", zorder=4, **_marker(PREDICTED))
    axes.set_yticks(y, shown["ticker"].astype(str).tolist())
    axes.set_ylim(y.min() - 0.7, y.max() + 0.7)
    axes.set_xlabel("move, % of the last close")
    first = shown.iloc[0]
    which = (
        f"all {total} predicted tickers"
        if len(shown) == total
        else f"the {len(shown) // 2} largest predicted rises and falls of {total} tickers"
    )
    axes.set_title(
        f"Predicted move {first['as_of']} → {first['target_date']}: {which}",
        fontsize="medium",
    )
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    return figure


def _marker(style: dict[str, Any]) -> dict[str, Any]:
    """A line's colour and marker, for points drawn without the line."""
    return {"color": style["color"], "marker": style["marker"], "markersize": 6}


def _plot_title(ticker: str, rows: pd.DataFrame) -> str:
    """Coverage and RMSE over a ticker's whole test span, in the units of the run's metrics."""
    last = rows["last_close"]
    rmse = np.sqrt(np.mean(((rows["predicted_close"] - rows["actual_close"]) / last) ** 2))
    naive = np.sqrt(np.mean(((last - rows["actual_close"]) / last) ** 2))
    parts: list[str] = []
    for level in LEVELS:
        lower, upper = rows[f"lower_{level}"], rows[f"upper_{level}"]
        if lower.notna().all() and upper.notna().all():
            hit = rows["actual_close"].between(lower, upper)
            parts.append(f"{'coverage ' if not parts else ''}{level}% {hit.mean():.0%}")
    parts.append(f"RMSE {rmse:.2%} of close vs naive {naive:.2%}")
    return f"{ticker}: " + " · ".join(parts)


def plot_predictions(
    predictions: pd.DataFrame, ticker: str, sessions: int = PLOTTED_SESSIONS
) -> Figure:
    """A fan chart of one ticker's last test sessions, over its errors against naive.

    The upper panel: closes, forecast, 80% and 95% bands, the naive forecast
    dashed; its title's coverage and RMSE (relative to the last close, like
    `test_rmse`) cover the ticker's whole test span. The lower panel: the
    model's and the naive forecast's absolute errors over the same sessions.
    A model without intervals (NaN bounds) gets the lines alone.
    """
    rows = predictions[predictions["ticker"] == ticker].sort_values("target_date")
    rows = rows.assign(**{c: np.nan for c in INTERVAL_COLUMNS if c not in rows.columns})
    shown = rows.tail(sessions)
    when = pd.to_datetime(shown["target_date"])
    figure = Figure(figsize=(10, 6.5), layout="constrained")
    axes, errors = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1.4))
    _draw_fan(axes, shown, when)
    axes.set_title(_plot_title(ticker, rows))
    axes.set_ylabel("close")
    _draw_errors(errors, shown, when)
    if len(shown) < len(rows):
        errors.set_xlabel(f"target date (last {len(shown)} of {len(rows)} test sessions)")
    else:
        errors.set_xlabel("target date")
    if len(shown) <= 8:  # a short span: one tick per session, not hours between them
        errors.set_xticks(when)
    errors.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    figure.autofmt_xdate()
    return figure


def _draw_fan(axes: Axes, shown: pd.DataFrame, when: pd.Series) -> None:
    """Bands, closes, forecast and naive lines, and red marks on closes outside 95%."""
    for level, alpha in ((95, 0.15), (80, 0.35)):  # the wider band lighter and underneath
        lower, upper = shown[f"lower_{level}"], shown[f"upper_{level}"]
        if lower.notna().any() and upper.notna().any():
            axes.fill_between(
                when,
                lower,
                upper,
                color=BAND,
                alpha=alpha,
                linewidth=0,
                label=f"{level}% interval",
            )
    axes.plot(when, shown["actual_close"], label="actual", **ACTUAL)
    axes.plot(when, shown["predicted_close"], label="predicted", markersize=3, **PREDICTED)
    axes.plot(when, shown["last_close"], label="naive (last close)", **NAIVE)
    outside = ~shown["actual_close"].between(shown["lower_95"], shown["upper_95"])
    outside &= shown["lower_95"].notna() & shown["upper_95"].notna()
    if outside.any():
        axes.scatter(
            when[outside],
            shown.loc[outside, "actual_close"],
            color="tab:red",
            zorder=3,
            s=18,
            label="outside 95%",
        )
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def _draw_errors(axes: Axes, shown: pd.DataFrame, when: pd.Series) -> None:
    """The model's and naive's absolute errors in % of the last close, session by session."""
    last, actual = shown["last_close"], shown["actual_close"]
    model = 100 * (shown["predicted_close"] - actual).abs() / last
    naive = 100 * (last - actual).abs() / last
    axes.plot(when, model, label="model", markersize=3, **PREDICTED)
    axes.plot(when, naive, label="naive", **NAIVE)
    # Closer by more than a rounding error: a model that adds nothing ties on every session.
    closer, farther = int((model < naive - TIE).sum()), int((model > naive + TIE).sum())
    axes.set_title(
        f"Absolute error, last {len(shown)} sessions: model {model.mean():.2f}% vs naive "
        f"{naive.mean():.2f}% of the last close on average; closer: model {closer}, "
        f"naive {farther}, tied {len(shown) - closer - farther}",
        fontsize="medium",
    )
    axes.set_ylabel("|error|, % of last close")
    axes.set_ylim(bottom=0)
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def plot_loss_curves(history: list[dict[str, float]], best_epoch: int, target: str) -> Figure:
    """Train and validation loss per epoch on one axis, the best epoch marked.

    `history` is the training's record (epoch, train_loss, val_loss); the
    loss is the MSE of the model's target (`target`, e.g. `vol_return`).

    Raises:
        ValueError: when the history has no epochs.
    """
    if not history:
        raise ValueError("no epochs in the training history: no loss curve to draw")
    epochs = [int(h["epoch"]) for h in history]
    train = [float(h["train_loss"]) for h in history]
    validation = [float(h["val_loss"]) for h in history]
    best_val = validation[epochs.index(best_epoch)] if best_epoch in epochs else min(validation)
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.subplots()
    axes.plot(epochs, train, label="train", color="tab:blue", marker="o", markersize=3)
    axes.plot(epochs, validation, label="validation", color="tab:orange", marker="o", markersize=3)
    axes.axvline(
        best_epoch, color="tab:red", linestyle=":", linewidth=1, label=f"best epoch {best_epoch}"
    )
    axes.scatter([best_epoch], [best_val], color="tab:red", zorder=3, s=36)
    axes.set_title(
        f"Loss per epoch (MSE of the {target} target): best epoch {best_epoch} of "
        f"{len(epochs)}, validation {best_val:.4f}"
    )
    axes.set_xlabel("epoch")
    axes.set_ylabel(f"MSE ({target})")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize="small")
    return figure


def plot_name(ticker: str) -> str:
    """Artifact path of a ticker's plot; characters outside [A-Za-z0-9._-] become `_`."""
    return f"plots/predicted_vs_actual_{re.sub(r'[^A-Za-z0-9._-]', '_', ticker)}.png"
