"""Plots for a run's review: each ticker's fan chart of its last test sessions over its
errors against the naive forecast, and the loss curves of training."""

import re

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from closecast.models.forecaster import INTERVAL_COLUMNS
from closecast.tasks.modeling.evaluation import LEVELS

PLOTTED_TICKERS = 6  # predicted-vs-actual PNGs per run: all tickers up to this many
PLOTTED_SESSIONS = 60  # the last test sessions a plot shows (about three months)
LOSS_CURVES_PLOT = "plots/loss_curves.png"
TIE = 1e-6  # percentage points: absolute errors closer than this count as a tie


def plot_tickers(per_ticker: pd.DataFrame, limit: int = PLOTTED_TICKERS) -> list[str]:
    """Tickers worth a plot: all up to `limit`, else the worst and best by skill."""
    ranked = per_ticker.sort_values(["skill", "ticker"])["ticker"].astype(str).tolist()
    if len(ranked) <= limit:
        return sorted(ranked)
    return sorted(ranked[: limit // 2] + ranked[len(ranked) - (limit - limit // 2) :])


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
                color="tab:blue",
                alpha=alpha,
                linewidth=0,
                label=f"{level}% interval",
            )
    axes.plot(when, shown["actual_close"], label="actual", color="black", marker=".", markersize=4)
    axes.plot(
        when, shown["predicted_close"], label="predicted", color="midnightblue", linewidth=1.2
    )
    axes.plot(
        when, shown["last_close"], label="naive", color="tab:gray", linestyle="--", linewidth=0.8
    )
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
    axes.plot(when, model, label="model", color="midnightblue", marker=".", markersize=4)
    axes.plot(when, naive, label="naive", color="tab:gray", linestyle="--", linewidth=0.8)
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
