"""Plots for a run's review: each ticker's fan chart of its last test sessions."""

import re

import numpy as np
import pandas as pd
from matplotlib.dates import DateFormatter
from matplotlib.figure import Figure

from models.forecaster import INTERVAL_COLUMNS
from tasks.evaluation import LEVELS

PLOTTED_TICKERS = 6  # predicted-vs-actual PNGs per run: all tickers up to this many
PLOTTED_SESSIONS = 60  # the last test sessions a plot shows (about three months)


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
    """A fan chart of one ticker's last test sessions: closes, forecast, 80% and 95% bands.

    The title's coverage and RMSE (relative to the last close, like `test_rmse`)
    cover the ticker's whole test span; the chart shows its last `sessions`
    windows, with the naive forecast dashed. A model without intervals (NaN
    bounds) gets the lines alone.
    """
    rows = predictions[predictions["ticker"] == ticker].sort_values("target_date")
    rows = rows.assign(**{c: np.nan for c in INTERVAL_COLUMNS if c not in rows.columns})
    shown = rows.tail(sessions)
    when = pd.to_datetime(shown["target_date"])
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    axes = figure.subplots()
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
    axes.set_title(_plot_title(ticker, rows))
    if len(shown) < len(rows):
        axes.set_xlabel(f"target date (last {len(shown)} of {len(rows)} test sessions)")
    else:
        axes.set_xlabel("target date")
    axes.set_ylabel("close")
    axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    if len(shown) <= 8:  # a short span: one tick per session, not hours between them
        axes.set_xticks(when)
    axes.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    figure.autofmt_xdate()
    return figure


def plot_name(ticker: str) -> str:
    """Artifact path of a ticker's plot; characters outside [A-Za-z0-9._-] become `_`."""
    return f"plots/predicted_vs_actual_{re.sub(r'[^A-Za-z0-9._-]', '_', ticker)}.png"
