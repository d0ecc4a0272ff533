"""Intervals: coverage and interval score of 80%/95% recipes for the next close, held out.

Same universes, periods and split as benchmarks/accuracy.py: validated prices
-> `compute_features` (adjusted close, open, high, low, volume) on the last
`history` sessions up to each period's as_of -> `build_windows` (default
window and target) for the train | validation | test boundary dates. Every
recipe is scored on exactly the test windows build_windows makes (checked);
its scale and calibration see training and validation rows only.

A recipe is a scale σ̂ (the spread of the next log return, from data up to
the window's last day) and a calibration (quantiles q of z = r / σ̂), centred
on the naive forecast (tomorrow's close = today's; the product's point
forecast is within a few bp of it): bound = last_close · exp(q · σ̂).

Baselines:
- `ewma`: RiskMetrics (λ = 0.94) over the visible history, normal quantiles;
- `garch`, `garch_t`: GARCH(1,1), zero mean, normal / Student-t, fitted with
  `arch` per ticker on the training span's returns, then filtered forward over
  validation and test with the parameters fixed;
- `har`: Corsi's HAR per ticker: OLS with intercept of |r(t+1)| on the mean
  |r| and mean log(high / low) over 1, 5 and 22 days, fitted on the training
  span, with the empirical quantiles of its training residuals z;
- `har_strong` (issue 20): Corsi's 1/5/22 days on the log high-low range in
  Clements-Preve's log form, per ticker, fitted on the last 1,000 sessions
  before the test span from the whole history up to as_of, mapped to a
  return scale on the same rows (benchmarks/strong_har.py), with conformal
  quantiles on training + validation.
Candidates, all with split-conformal quantiles (`fit_conformal`: finite-sample
corrected quantiles of z pooled over tickers) on the validation windows
(`_val`) or on training + validation (`_trainval`):
- `ewma+…`: the EWMA scale;
- `har22+…`: HAR without intercept, coefficients ≥ 0, one model pooled over
  tickers (`fit_scale`), spans 1, 5, 22 (needs 23 rows of history);
- `har10+…`: the same with spans 1, 5, 9: only the 10 rows of a window;
- variants that show what each input is worth: `+volume` (the 1-day move and
  range times relative volume), `+66d` (a 66-day span), `no ranges` (returns
  only), `open-close` (|log(close / open)| in place of the high-low range),
  `win10` (the window's own σ, as `closecast.models.encoding`), `ewma10` (EWMA of the
  window's 9 returns), and a blend (geometric mean of har10 and a 60-day EWMA).

Scores are on returns relative to the last close, (close − last) / last, so
tickers weigh alike (tables in bp): `coverage_80/95`, mean `interval_score_80/95`
(Gneiting–Raftery, lower is better), Kupiec and Christoffersen p-values
(transitions counted per ticker and period), the 95% score relative to each
baseline's (pooled, mean over periods, periods won) and a Diebold–Mariano
p-value of the 95% score difference (per-date means, Newey–West variance).
Pooled = all test windows of a universe's periods together. `targets` says
whether a recipe meets the issue's targets (coverage bands, no period off
nominal by more than 6 points, 95% score below EWMA's, below GARCH's on
average and in ≥ 2/3 of periods); `stretch` whether it also beats HAR's.

Usage:
    python benchmarks/intervals.py [--periods 6] [--recipes "har10+conformal_trainval,ewma"]

Writes benchmarks/results/intervals.json and prints the pooled table and the
worst period per universe (~10 s on one core; the GARCH fits take ~1 s).
"""

import argparse
import json
import logging
import math
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view
from scipy.optimize import nnls

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from accuracy import SHARED, Universe, describe_universes, load_universes  # noqa: E402
from strong_har import strong_har_sigma, variance_proxy  # noqa: E402

from closecast.core.config import WindowConfig  # noqa: E402
from closecast.models.calibration import (  # noqa: E402
    LEVELS,
    Calibration,
    fit_conformal,
    normal_calibration,
)
from closecast.models.interval_scores import (  # noqa: E402
    christoffersen_pvalue,
    coverage,
    interval_score,
    kupiec_pvalue,
)
from closecast.models.scale import (  # noqa: E402
    SIGMA_FLOOR,
    ewma_sigma,
    fit_scale,
    predict_scale,
    scale_features,
    scale_history,
    window_sigma,
)
from closecast.tasks.modeling.features import compute_features  # noqa: E402
from closecast.tasks.modeling.windows import build_windows, window_columns  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "intervals.json"
BASELINES = ("ewma", "garch", "garch_t", "har", "har_strong")
TRAIN, VALIDATION, TEST, NONE = 0, 1, 2, -1


@dataclass
class Panel:
    """One period, every ticker's rows concatenated; row i forecasts the day after its date."""

    tickers: np.ndarray  # (N,) ticker of each row
    dates: np.ndarray  # (N,) date of each row's next close (NaT on a ticker's last row)
    split: np.ndarray  # (N,) TRAIN, VALIDATION, TEST by that date; NONE: no window or no next
    next_return: np.ndarray  # (N,) log(next close / close); NaN on a ticker's last row
    frames: dict[str, pd.DataFrame]  # per ticker: adjusted close, open, high, low, volume
    rows: dict[str, slice]  # per ticker: its rows in the panel, in date order
    # per ticker: adjusted close, open, high, low of every session up to as_of (har_strong)
    visible: dict[str, pd.DataFrame] = field(default_factory=dict)


PANEL_FEATURES = ("close", "volume", "open")


def build_panel(universe: Universe, as_of: date, window: int) -> Panel:
    """Visible rows of each ticker split by build_windows's dates; its test windows, checked."""
    frames, features, every = {}, {}, {}
    for ticker, frame in universe.frames.items():
        upto = frame[frame.index <= pd.Timestamp(as_of)]
        every[ticker] = compute_features(upto, ["close", "open", "high", "low"])
        visible = upto.iloc[-universe.history :]
        frames[ticker] = compute_features(visible, ["close", "open", "high", "low", "volume"])
        features[ticker] = frames[ticker][window_columns(PANEL_FEATURES)]
    # The raw columns only: derived features' windows are the same once their lookback rows
    # come before the history (accuracy.period_dataset), so the split dates are too.
    panel_windows = WindowConfig(window=window, features=list(PANEL_FEATURES))
    dataset = build_windows(features, panel_windows, as_of)
    parts: dict[str, list[np.ndarray]] = {"tickers": [], "dates": [], "split": [], "returns": []}
    rows, start = {}, 0
    for ticker in sorted(frames):
        frame = frames[ticker]
        target = np.append(frame.index[1:].to_numpy(), np.datetime64("NaT"))  # (n,)
        split = np.select(
            [target < np.datetime64(dataset.val_start), target < np.datetime64(dataset.test_start)],
            [TRAIN, VALIDATION],
            TEST,
        )
        split[: window - 1] = NONE  # no full window ends on these rows
        split[-1] = NONE  # no next close
        parts["tickers"].append(np.full(len(frame), ticker, dtype=object))
        parts["dates"].append(target)
        parts["split"].append(split)
        parts["returns"].append(np.append(np.diff(np.log(frame["close"].to_numpy())), np.nan))
        rows[ticker] = slice(start, start + len(frame))
        start += len(frame)
    tickers, dates, split, returns = (np.concatenate(parts[k]) for k in parts)
    test = split == TEST
    if sorted(zip(tickers[test], dates[test], strict=True)) != sorted(
        zip(dataset.test.tickers, dataset.test.target_dates, strict=True)
    ):
        raise RuntimeError(f"{as_of}: the test rows differ from build_windows's test windows")
    return Panel(tickers, dates, split, returns, frames, rows, every)


# --- scales: σ̂ per panel row, (N,) -------------------------------------------------------


def _per_ticker(panel: Panel, one: Callable[[pd.DataFrame], np.ndarray]) -> np.ndarray:
    return np.concatenate([one(panel.frames[t]) for t in panel.rows])


def ewma_scale(panel: Panel, lookback: int | None = None) -> np.ndarray:
    """EWMA σ̂ over the whole visible history, or over the last `lookback` returns only."""

    def one(frame: pd.DataFrame) -> np.ndarray:
        returns = np.diff(np.log(frame["close"].to_numpy()))  # (n - 1,): returns[k] ends row k + 1
        out = np.full(len(frame), np.nan)
        if lookback is None:
            out[1:] = ewma_sigma(returns)
        else:
            views = sliding_window_view(returns, lookback)  # (n - L, L), the last ends row L..
            out[lookback:] = ewma_sigma(views)[:, -1]
        return out

    return _per_ticker(panel, one)


def window_scale(panel: Panel, window: int) -> np.ndarray:
    """The window's own σ: std of its window − 1 returns, as closecast.models.encoding computes it."""

    def one(frame: pd.DataFrame) -> np.ndarray:
        returns = np.diff(np.log(frame["close"].to_numpy()))
        out = np.full(len(frame), np.nan)
        out[window - 1 :] = window_sigma(sliding_window_view(returns, window - 1))
        return out

    return _per_ticker(panel, one)


def har_features(
    panel: Panel, spans: tuple[int, ...], ranges: str = "high-low", volume: bool = False
) -> np.ndarray:
    """`scale_features` per row, (N, 2·S); ranges: high-low, open-close or none (zeros)."""

    def one(frame: pd.DataFrame) -> np.ndarray:
        close = frame["close"].to_numpy()
        if ranges == "high-low":
            high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
        elif ranges == "open-close":
            opened = frame["open"].to_numpy()
            high, low = np.maximum(opened, close), np.minimum(opened, close)
        else:
            high, low = close, close
        x = scale_features(close, high, low, spans)  # (n, 2·S)
        if volume:  # the 1-day move and range times relative volume: news days move on
            logged = np.log1p(frame["volume"].to_numpy())
            relative = np.exp(np.clip(logged - pd.Series(logged).rolling(22).mean(), -3, 3))
            x = np.concatenate([x, x[:, [0, len(spans)]] * relative.to_numpy()[:, None]], axis=1)
        return x

    return np.concatenate([one(panel.frames[t]) for t in panel.rows])


def pooled_har_scale(
    panel: Panel, spans: tuple[int, ...], ranges: str = "high-low", volume: bool = False
) -> np.ndarray:
    """One HAR pooled over tickers, no intercept, coefficients ≥ 0, fitted on training rows."""
    x = har_features(panel, spans, ranges, volume)
    train = panel.split == TRAIN
    if x.shape[1] == 2 * len(spans):
        return predict_scale(fit_scale(x[train], panel.next_return[train], spans), x)
    fit = train & np.isfinite(x).all(axis=1)  # the volume columns: same fit, by hand
    beta, _ = nnls(x[fit], np.abs(panel.next_return[fit]))
    return np.maximum(x @ beta, SIGMA_FLOOR)


def classic_har_scale(panel: Panel) -> np.ndarray:
    """Corsi's HAR per ticker: OLS with intercept on its training rows, floored."""
    x = har_features(panel, (1, 5, 22))
    x = np.concatenate([np.ones((len(x), 1)), x], axis=1)  # (N, 6) -> (N, 7)
    out = np.full(len(x), np.nan)
    for rows in panel.rows.values():
        xs, y, split = x[rows], np.abs(panel.next_return[rows]), panel.split[rows]
        fit = (split == TRAIN) & np.isfinite(xs).all(axis=1)
        beta, *_ = np.linalg.lstsq(xs[fit], y[fit], rcond=None)
        out[rows] = np.maximum(xs @ beta, SIGMA_FLOOR)
    return out


def strong_har_scale(panel: Panel) -> np.ndarray:
    """`strong_har_sigma` per ticker, fitted on the last 1,000 sessions before the test span."""
    origin = panel.dates[panel.split == TEST].min()

    def one(ticker: str) -> np.ndarray:
        sigma = strong_har_sigma(panel.visible[ticker], origin)
        return sigma.reindex(panel.frames[ticker].index).to_numpy()

    return np.concatenate([one(t) for t in panel.rows])


def garch_scale(panel: Panel, dist: Literal["normal", "t"]) -> tuple[np.ndarray, np.ndarray]:
    """GARCH(1,1) σ̂ per ticker fitted on training returns, filtered forward with fixed params.

    Returns σ̂ per row and each row's Student-t ν (NaN for the normal).
    """
    from arch import arch_model

    sigma, nu = np.full(len(panel.split), np.nan), np.full(len(panel.split), np.nan)
    for rows in panel.rows.values():
        returns = 100.0 * panel.next_return[rows][:-1]  # (n - 1,) the return after row k
        split = panel.split[rows][:-1]
        # estimation: every return up to the last training target (the first rows too)
        last_train = int(np.flatnonzero(split == TRAIN)[-1]) + 1
        model = arch_model(returns, mean="Zero", vol="GARCH", p=1, q=1, dist=dist, rescale=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence chatter
            fitted = model.fit(disp="off", last_obs=last_train)
        # conditional_volatility[k] uses returns before k only: the forecast for row k's next
        sigma[rows][:-1] = model.fix(fitted.params.to_numpy()).conditional_volatility / 100.0
        if dist == "t":
            nu[rows] = float(fitted.params["nu"])
    return sigma, nu


SCALES: dict[str, Callable[[Panel], np.ndarray]] = {
    "ewma": ewma_scale,
    "ewma10": lambda p: ewma_scale(p, 9),
    "win10": lambda p: window_scale(p, 10),
    "har": classic_har_scale,
    "har_strong": strong_har_scale,
    "har22": lambda p: pooled_har_scale(p, (1, 5, 22)),
    "har10": lambda p: pooled_har_scale(p, (1, 5, 9)),
    "har22+volume": lambda p: pooled_har_scale(p, (1, 5, 22), volume=True),
    "har22+66d": lambda p: pooled_har_scale(p, (1, 5, 22, 66)),
    "har22 no ranges": lambda p: pooled_har_scale(p, (1, 5, 22), ranges="none"),
    "har10 open-close": lambda p: pooled_har_scale(p, (1, 5, 9), ranges="open-close"),
    # geometric mean of har10 and a 60-day EWMA, each relative to its training median
    "har10*ewma60": lambda p: _blend(p, SCALES["har10"](p), ewma_scale(p, 60)),
}


def _blend(panel: Panel, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    train = panel.split == TRAIN
    ma, mb = np.nanmedian(a[train]), np.nanmedian(b[train])
    return np.sqrt(a / ma * b / mb) * ma


# --- recipes -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    name: str
    scale: str  # key of SCALES, or garch / garch_t
    calibration: str  # normal | student_t | empirical_train | conformal_val | conformal_trainval
    rows_needed: int  # rows of history per ticker its scale needs at prediction time (0: all)


def _recipes() -> dict[str, Recipe]:
    fixed = [
        Recipe("ewma", "ewma", "normal", 0),
        Recipe("garch", "garch", "normal", 0),
        Recipe("garch_t", "garch_t", "student_t", 0),
        Recipe("har", "har", "empirical_train", scale_history((1, 5, 22))),
        Recipe("har_strong", "har_strong", "conformal_trainval", 0),
    ]
    conformal = [
        ("ewma", 0, ("val", "trainval")),
        ("har22", scale_history((1, 5, 22)), ("val", "trainval")),
        ("har10", scale_history((1, 5, 9)), ("val", "trainval")),
        ("har22+volume", scale_history((1, 5, 22)), ("trainval",)),
        ("har22+66d", scale_history((1, 5, 22, 66)), ("trainval",)),
        ("har22 no ranges", scale_history((1, 5, 22)), ("trainval",)),
        ("har10 open-close", scale_history((1, 5, 9)), ("trainval",)),
        ("har10*ewma60", 61, ("trainval",)),
        ("win10", 10, ("val",)),
        ("ewma10", 10, ("val",)),
    ]
    made = fixed + [
        Recipe(f"{scale}+conformal_{span}", scale, f"conformal_{span}", rows)
        for scale, rows, spans in conformal
        for span in spans
    ]
    return {r.name: r for r in made}


RECIPES = _recipes()
RECOMMENDED = "har10+conformal_trainval"  # the product default (see the README)


def compute_scales(panel: Panel, names: set[str]) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """σ̂ per row for each named scale (ν under "garch_t:nu"), and the seconds each took."""
    scales, seconds = {}, {}
    for name in sorted(names):
        started = time.perf_counter()
        if name.startswith("garch"):
            scales[name], scales[f"{name}:nu"] = garch_scale(
                panel, "t" if name == "garch_t" else "normal"
            )
        else:
            scales[name] = SCALES[name](panel)
        seconds[name] = time.perf_counter() - started
    return scales, seconds


def student_t(nu: float) -> Calibration:
    """Quantiles of the unit-variance Student-t with ν degrees of freedom."""
    from arch.univariate.distribution import StudentsT

    upper = [float(StudentsT().ppf((1 + lv) / 2, np.array([nu]))) for lv in LEVELS]
    return Calibration(LEVELS, tuple(-q for q in upper), tuple(upper))


def calibrations(recipe: Recipe, panel: Panel, scales: dict[str, np.ndarray]) -> np.ndarray:
    """Each row's calibration, (N,) of Calibration: one per ticker for garch_t, else one."""
    z = panel.next_return / scales[recipe.scale]
    ok = np.isfinite(z)
    kind = recipe.calibration
    if kind == "student_t":
        out = np.empty(len(z), dtype=object)
        for rows in panel.rows.values():
            out[rows] = student_t(float(scales[f"{recipe.scale}:nu"][rows][0]))
        return out
    if kind == "normal":
        cal = normal_calibration(LEVELS)
    elif kind == "empirical_train":  # the classic HAR's: plain empirical quantiles
        z_train = z[ok & (panel.split == TRAIN)]
        cal = Calibration(
            LEVELS,
            tuple(float(np.quantile(z_train, (1 - lv) / 2)) for lv in LEVELS),
            tuple(float(np.quantile(z_train, (1 + lv) / 2)) for lv in LEVELS),
            len(z_train),
        )
    elif kind == "conformal_val":
        cal = fit_conformal(z[ok & (panel.split == VALIDATION)], LEVELS)
    elif kind == "conformal_trainval":
        cal = fit_conformal(z[ok & np.isin(panel.split, (TRAIN, VALIDATION))], LEVELS)
    else:
        raise ValueError(f"unknown calibration {kind!r}")
    out = np.empty(len(z), dtype=object)
    out[:] = [cal] * len(z)
    return out


def held_out_intervals(
    recipe: Recipe, panel: Panel, scales: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The recipe's test rows: y, tickers, dates and lower/upper per level, relative to last close."""
    test = panel.split == TEST
    sigma = scales[recipe.scale][test]
    if not np.isfinite(sigma).all():
        raise RuntimeError(f"{recipe.name}: a test row has no scale")
    cals = calibrations(recipe, panel, scales)[test]
    proxies = [variance_proxy(panel.frames[t]) for t in panel.rows]
    out = {
        "y": np.expm1(panel.next_return[test]),  # (close − last) / last
        "tickers": panel.tickers[test],
        "dates": panel.dates[test],
        # the target day's Garman–Klass variance, and with the overnight gap (risk_scores)
        "proxy_gk": np.concatenate([p[0] for p in proxies])[test],
        "proxy_gk_overnight": np.concatenate([p[1] for p in proxies])[test],
    }
    for i, level in enumerate(LEVELS):
        lower = np.array([c.lower[i] for c in cals])
        upper = np.array([c.upper[i] for c in cals])
        out[f"lower_{_pct(level)}"] = np.expm1(lower * sigma)
        out[f"upper_{_pct(level)}"] = np.expm1(upper * sigma)
    return out


def _pct(level: float) -> int:
    return round(100 * level)


# --- scores --------------------------------------------------------------------------------


def score(parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Coverage, interval score, width and coverage tests over the test rows of `parts`.

    Hit sequences stay per part (period) and ticker for Christoffersen's transitions.
    """
    out: dict[str, float] = {"test_rows": float(sum(len(p["y"]) for p in parts))}
    y = np.concatenate([p["y"] for p in parts])
    for level in LEVELS:
        pct = _pct(level)
        lo = np.concatenate([p[f"lower_{pct}"] for p in parts])
        hi = np.concatenate([p[f"upper_{pct}"] for p in parts])
        sequences = []
        for p in parts:
            hits = (p[f"lower_{pct}"] <= p["y"]) & (p["y"] <= p[f"upper_{pct}"])
            sequences += [hits[p["tickers"] == t] for t in dict.fromkeys(p["tickers"].tolist())]
        out |= {
            f"coverage_{pct}": coverage(lo, hi, y),
            f"interval_score_{pct}": float(interval_score(lo, hi, y, 1 - level).mean()),
            f"width_{pct}": float((hi - lo).mean()),
            f"kupiec_{pct}": kupiec_pvalue(sequences, level),
            f"christoffersen_{pct}": christoffersen_pvalue(sequences, level),
        }
    return out


def _daily_scores(parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """Mean 95% interval score per (period, date), periods in order, dates sorted: (D,)."""
    means = []
    for p in parts:
        s = interval_score(p["lower_95"], p["upper_95"], p["y"], 0.05)
        means.append(pd.Series(s).groupby(p["dates"]).mean().sort_index().to_numpy())
    return np.concatenate(means)


def diebold_mariano_pvalue(d: np.ndarray) -> float:
    """Two-sided p-value of mean(d) = 0, Newey–West variance with lag ⌊T^(1/3)⌋."""
    t = len(d)  # d: (T,)
    centred = d - d.mean()
    lag = int(t ** (1 / 3))
    variance = centred @ centred / t
    for k in range(1, lag + 1):
        variance += 2 * (1 - k / (lag + 1)) * (centred[k:] @ centred[:-k]) / t
    if variance <= 0:
        return 1.0
    stat = d.mean() / math.sqrt(variance / t)
    return 2 * (1 - NormalDist().cdf(abs(stat)))


def summarise(
    periods: list[dict[str, Any]], parts: dict[tuple[str, str], list[dict[str, np.ndarray]]]
) -> list[dict[str, Any]]:
    """Per universe and recipe: pooled scores, against each baseline, worst period, targets."""
    table = []
    for (universe, name), mine in parts.items():
        rows = [r for r in periods if r["universe"] == universe and r["recipe"] == name]
        entry: dict[str, Any] = {"universe": universe, "recipe": name, "periods": len(rows)}
        entry |= score(mine)
        scores = [float(r["interval_score_95"]) for r in rows]
        entry["mean_period_interval_score_95"] = statistics.fmean(scores)
        for level in LEVELS:
            pct = _pct(level)
            gaps = [abs(float(r[f"coverage_{pct}"]) - level) for r in rows]
            entry[f"worst_period_gap_{pct}"] = max(gaps)
        for base in BASELINES:
            theirs = [r for r in periods if r["universe"] == universe and r["recipe"] == base]
            ratios = [
                a / float(b["interval_score_95"]) for a, b in zip(scores, theirs, strict=True)
            ]
            entry[f"ratio_95_vs_{base}"] = (
                float(entry["interval_score_95"])
                / score(parts[(universe, base)])["interval_score_95"]
            )
            entry[f"mean_period_ratio_95_vs_{base}"] = statistics.fmean(ratios)
            entry[f"periods_beating_{base}"] = sum(x < 1 for x in ratios)
            entry[f"dm_pvalue_95_vs_{base}"] = diebold_mariano_pvalue(
                _daily_scores(mine) - _daily_scores(parts[(universe, base)])
            )
        n = len(rows)
        entry["targets"] = bool(
            0.78 <= float(entry["coverage_80"]) <= 0.82
            and 0.935 <= float(entry["coverage_95"]) <= 0.965
            and max(float(entry["worst_period_gap_80"]), float(entry["worst_period_gap_95"]))
            <= 0.06
            and float(entry["ratio_95_vs_ewma"]) < 1
            and float(entry["mean_period_ratio_95_vs_garch"]) < 1
            and int(entry["periods_beating_garch"]) >= math.ceil(2 * n / 3)
        )
        entry["stretch"] = bool(entry["targets"]) and float(entry["ratio_95_vs_har"]) < 1
        table.append(entry)
    return table


def print_table(table: list[dict[str, Any]], periods: list[dict[str, Any]]) -> None:
    """Pooled per universe and recipe, then each recommended row's worst period."""
    print(
        f"{'universe':8} {'recipe':34} {'rows':>4} {'cov80':>6} {'cov95':>6} {'IS80':>6} {'IS95':>6} "
        f"{'/ewma':>6} {'/garch':>6} {'/har':>6} {'>garch':>6} {'>har':>5} {'off80':>5} {'off95':>5} "
        f"{'kup95':>6} {'chr95':>6} {'dm/garch':>8} targets"
    )
    for e in table:
        n = e["periods"]
        print(
            f"{e['universe']!s:8} {e['recipe']!s:34} {RECIPES[str(e['recipe'])].rows_needed or 'all':>4} "
            f"{e['coverage_80']:6.1%} {e['coverage_95']:6.1%} "
            f"{1e4 * e['interval_score_80']:6.1f} {1e4 * e['interval_score_95']:6.1f} "
            f"{e['ratio_95_vs_ewma']:6.3f} {e['ratio_95_vs_garch']:6.3f} {e['ratio_95_vs_har']:6.3f} "
            f"{e['periods_beating_garch']:>4}/{n} {e['periods_beating_har']:>3}/{n} "
            f"{100 * e['worst_period_gap_80']:5.1f} {100 * e['worst_period_gap_95']:5.1f} "
            f"{e['kupiec_95']:6.3f} {e['christoffersen_95']:6.3f} {e['dm_pvalue_95_vs_garch']:8.3f} "
            f"{'stretch' if e['stretch'] else 'yes' if e['targets'] else 'no'}"
        )
    for universe in dict.fromkeys(str(e["universe"]) for e in table):
        print(f"\n{universe}: {RECOMMENDED} per period (95% score ratios against each baseline)")
        print(
            f"{'as_of':10} {'cov80':>6} {'cov95':>6} {'IS95':>6} {'/ewma':>6} {'/garch':>6} {'/har':>6}"
        )
        mine = {(r["universe"], r["recipe"], r["as_of"]): r for r in periods}
        for r in periods:
            if r["universe"] != universe or r["recipe"] != RECOMMENDED:
                continue
            ratios = [
                float(r["interval_score_95"])
                / float(mine[(universe, b, r["as_of"])]["interval_score_95"])
                for b in ("ewma", "garch", "har")
            ]
            print(
                f"{r['as_of']!s:10} {r['coverage_80']:6.1%} {r['coverage_95']:6.1%} "
                f"{1e4 * r['interval_score_95']:6.1f} " + " ".join(f"{x:6.3f}" for x in ratios)
            )
    print(
        "\nrows: history per ticker the scale needs; IS: mean interval score, bp of the last close; "
        "/x: pooled 95% score ratio; >x: periods with a lower 95% score; off: worst period's "
        "|coverage − nominal| in points; kup/chr: Kupiec / Christoffersen p-values; dm/garch: "
        "Diebold–Mariano p-value of the 95% score against GARCH"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--periods", type=int, default=6, help="held-out periods per universe")
    parser.add_argument("--recipes", help="comma-separated recipe names (baselines always run)")
    parser.add_argument(
        "--stocks-file", type=Path, default=SHARED, help=f"long-format prices (default {SHARED})"
    )
    args = parser.parse_args()
    logging.getLogger("prefect").setLevel(logging.ERROR)
    wanted = set(args.recipes.split(",")) if args.recipes else set(RECIPES)
    unknown = wanted - set(RECIPES)
    if unknown:
        parser.error(f"unknown recipe(s) {', '.join(sorted(unknown))}; known: {', '.join(RECIPES)}")
    recipes = [r for r in RECIPES.values() if r.name in wanted | set(BASELINES)]
    started = time.perf_counter()
    universes = load_universes(args.periods, args.stocks_file)
    periods: list[dict[str, Any]] = []
    parts: dict[tuple[str, str], list[dict[str, np.ndarray]]] = {}
    seconds: dict[str, float] = {}
    for universe in universes:
        for as_of in universe.as_of:
            panel = build_panel(universe, as_of, WindowConfig().window)
            scales, took = compute_scales(panel, {r.scale for r in recipes})
            for name, s in took.items():
                seconds[name] = seconds.get(name, 0.0) + s
            for recipe in recipes:
                intervals = held_out_intervals(recipe, panel, scales)
                parts.setdefault((universe.name, recipe.name), []).append(intervals)
                where = {"universe": universe.name, "as_of": as_of.isoformat()}
                periods.append(where | {"recipe": recipe.name} | score([intervals]))
    table = summarise(periods, parts)
    elapsed = time.perf_counter() - started
    print_table(table, periods)
    print("scale seconds, all periods: " + ", ".join(f"{k} {v:.2f}" for k, v in seconds.items()))
    result = {
        "universes": describe_universes(universes),
        "recipes": {
            r.name: {"scale": r.scale, "calibration": r.calibration, "rows_needed": r.rows_needed}
            for r in recipes
        },
        "table": table,
        "periods": periods,
        "scale_seconds": {k: round(v, 3) for k, v in seconds.items()},
        "elapsed_s": round(elapsed, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} ({elapsed:.0f}s)")


if __name__ == "__main__":
    main()
