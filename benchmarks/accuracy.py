"""Accuracy: test RMSE / naive RMSE of each target and feature choice, over held-out periods.

Every number comes from the pipeline's own steps: validated prices ->
`compute_features` -> `build_windows` (split by date: train | validation |
test, scaling fitted on train only) -> `train_model` (one global model
per universe and period, early stopping) -> `evaluate_model` (errors
relative to the last close, naive persistence on the same windows).

Universes and periods (each period is a point-in-time run: only rows up to
its as_of date exist, and its test span is the last 10% of the sessions):
- `sample`: ^GSPC and ^IXIC from the offline `sample` source, 1999-2018;
  each period uses the last 1,250 sessions up to its as_of (test: 125);
  the as_of dates are spread evenly from 2003 to 2018 (2008 included).
- `stocks`: 8 large S&P 500 stocks from ../shared/data (skipped when
  absent), 2013-2018; each period uses the last 750 sessions up to its
  as_of (test: 75), the periods back to back up to 2018-02-07.
Test spans do not overlap. Each period is trained once per seed.

`ratio` = test_rmse / naive_rmse (1 = as good as "tomorrow = today", lower
is better); `skill` = 1 - ratio. For return targets the same trained model
is scored twice more, its predicted return multiplied by a factor in [0, 1]
fitted on the validation windows only (`closecast.models.training.fit_output_scale`):
`+shrink` the least-squares factor, `+gated shrink` that factor lowered by
1.645 standard errors (what training does by default, `shrink_output`).

Intervals (issue 10): the default recipe is also trained exactly as the
pipeline trains it (`train_model` with the default TrainConfig: gated
shrink, then `fit_intervals`) and scored by `evaluate_model`, whose
80% / 95% intervals are compared on the same test windows with the
baselines of benchmarks/intervals.py (imported, not copied): RiskMetrics
EWMA (λ = 0.94, normal, around naive, over the period's whole visible
history), GARCH(1,1) per ticker (normal; and Student-t for information)
fitted with `arch` on the training span only and filtered forward, Corsi's
HAR (1, 5, 22 days of |r| and high-low ranges, per ticker, empirical
quantiles), and the research recipe har10 + conformal centred on naive.
Scores are relative to the last close: coverage, mean Gneiting–Raftery
interval score, Kupiec and Christoffersen p-values (models/interval_scores.py),
the 95% score against each baseline pooled and per period, and the issue's
targets. The model's numbers are the mean over seeds; p-values per seed.
Issue 20 adds the strong HAR (`har_strong`, benchmarks/strong_har.py) to the
baselines, and to every row (model and baselines) QLIKE of the variance its
95% interval implies, ((upper − lower) / (2·1.96))², against the target
day's Garman–Klass variance (and GK + the squared overnight gap), pinball
loss of the 95% / 80% lower bounds at 2.5% / 10%, and the share of
ticker-periods whose Kupiec / Christoffersen p-values are ≥ 5%; the DM
p-values of the 95% score run against every baseline.

Issue 20: the default recipe is the scale inputs (close, volume, open, high,
low, range22, range66, volume60), and the product is the distributional head
(`LSTMConfig()`: the next return's distribution around the HAR scale, the
better of its `lstm` and `har` heads kept on validation); the recipe table
trains the one-output point head (`distribution="none"`), so its rows compare
targets and inputs as before, and `point` compares the product's median with
the point head of before issue 20 on the same windows. Each recipe sees the
same `history` sessions, with the rows its derived features read before them;
the index periods leave room for that 66-row lookback. `--heads` runs the
head's variants and ablations against the baselines (benchmarks/heads.py).

Growth (`--growth`, issue 14): the default recipe trained as the pipeline
trains it on every ticker of ../shared/data (the S&P 500, ~440k training
windows per period), once with the batch and patience the window count gives
(`TrainConfig.growth_windows`, `closecast.models.training.scale_to_windows`: batch 256,
learning rate 2.8e-3, patience 2) and once with batch 32 and patience 5
throughout, on the very same windows; test RMSE / naive RMSE,
the 95% interval score against EWMA's, coverage and training time. Periods:
the last 1,100 sessions up to each as_of (~440k training windows: batch 256,
as the whole file gets), back to back 110 sessions apart
(test: the last 110), seeds as --seeds.

Usage:
    python benchmarks/accuracy.py [--epochs 50] [--periods 6] [--seeds 2] [--configs 1,3] [--quick]
    python benchmarks/accuracy.py --growth [--periods 2] [--seeds 2]   # ~10 min on 2 cores
    python benchmarks/accuracy.py --heads [--variants 1,2]   # issue 20, ~6 min on 2 cores
    python benchmarks/accuracy.py --budget [--periods 2] [--seeds 2]   # issue 22

Budget (`--budget`, issue 22): the same S&P 500 periods as --growth, trained once on every
window each epoch (`--full-retrain`) and once on a fresh sample of BUDGET_SAMPLE windows per
epoch (`TrainConfig.epoch_windows`, what a universe beyond 2^19 training windows does), with
the scale, calibration and validation on samples of as many; scores as --growth, and
Diebold–Mariano p-values of the sampled variant's daily squared error and interval score
against every window's. Writes benchmarks/results/accuracy_budget.json.

Writes benchmarks/results/accuracy.json (accuracy_growth.json with --growth)
and prints the tables.
"""

import argparse
import copy
import itertools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from closecast.core.config import (  # noqa: E402
    DEFAULT_FEATURES,
    LOOKBACK,
    TrainConfig,
    WindowConfig,
)
from closecast.models.derived import extra_rows  # noqa: E402
from closecast.models.lstm import LSTMConfig  # noqa: E402
from closecast.models.training import SHRINK_Z, fit_output_scale, scale_output  # noqa: E402
from closecast.tasks.data.sources import CsvSource, SampleSource  # noqa: E402
from closecast.tasks.data.validate import validate_prices  # noqa: E402
from closecast.tasks.modeling.evaluation import (  # noqa: E402
    LEVELS,
    evaluate_model,
    window_interval_scores,
)
from closecast.tasks.modeling.features import compute_features  # noqa: E402
from closecast.tasks.modeling.training import encode_split, train_model  # noqa: E402
from closecast.tasks.modeling.windows import Dataset, build_windows, window_columns  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
GROWTH_RESULTS = ROOT / "benchmarks" / "results" / "accuracy_growth.json"
SP500_HISTORY, SP500_TEST = 1100, 110  # sessions per --growth period (~440k training windows)
SHARED = ROOT.parent / "shared" / "data" / "sp500_5yr" / "all_stocks_5yr.csv.gz"
STOCKS = ["AAPL", "MSFT", "JPM", "XOM", "JNJ", "PG", "AMZN", "GE"]
TRAIN_SPEED = ROOT / "benchmarks" / "results" / "train_speed.json"
# The default recipe's pooled point-forecast table before intervals (commit 862c6d0,
# results/accuracy.json then): the issue's "not lower than today's" skill.
PREVIOUS_DEFAULT: dict[str, Any] = {
    "commit": "862c6d0",
    "recipe": "vol_return, close,volume,open +gated shrink",
    "mean_ratio": 0.9987281387018436,
    "mean_ratio_sample": 0.9981534025886011,
    "mean_ratio_stocks": 0.999302874815086,
    "worst_ratio": 1.0020486202058387,
}
# Ratios that differ by less than this are the same model up to float rounding (the
# windows now carry high and low, which moves the last digits of a few features' sums).
RATIO_TOLERANCE = 1e-6
# The reference scenario's training time before intervals (benchmarks/README.md, quiet
# machine, fit alone: the scenario does not run fit_intervals).
PREVIOUS_REFERENCE_S = 0.913


@dataclass(frozen=True)
class Recipe:
    """One target/feature choice to train and score."""

    name: str
    target: str
    features: tuple[str, ...]
    window: int = 10


CVO = ("close", "volume", "open")
RECIPES = {
    r.name: r
    for r in (
        Recipe("reference: minmax_close, close", "minmax_close", ("close",)),
        Recipe("log_return, close", "log_return", ("close",)),
        Recipe("log_return, close,volume,open", "log_return", CVO),
        Recipe("vol_return, close", "vol_return", ("close",)),
        Recipe("vol_return, close,volume,open", "vol_return", CVO),
        Recipe("vol_return, close,volume,open, window 20", "vol_return", CVO, 20),
        Recipe("vol_return, scale inputs", "vol_return", tuple(DEFAULT_FEATURES)),
    )
}
DEFAULT = "vol_return, scale inputs"  # closecast.core.config's WindowConfig() (issue 20)
BEFORE_ISSUE_20 = "vol_return, close,volume,open"  # the default inputs before issue 20
MODEL = "lstm+intervals"  # the product's intervals in the interval tables


@dataclass(frozen=True)
class Universe:
    """Tickers' validated prices and the as_of dates of their held-out periods."""

    name: str
    frames: dict[str, pd.DataFrame]
    history: int  # sessions each period sees, up to its as_of
    as_of: list[date]


def _periods(
    frames: dict[str, pd.DataFrame], history: int, test: int, n: int, spread: bool
) -> list[date]:
    """`n` as_of dates ending with the last session.

    spread: evenly over the whole series; otherwise back to back, `test`
    sessions apart. Either way test spans do not overlap.
    """
    dates = sorted(set.union(*(set(f.index) for f in frames.values())))
    if spread:
        ends = sorted({round(i) for i in np.linspace(history - 1, len(dates) - 1, n)})
    else:
        ends = [len(dates) - 1 - k * test for k in reversed(range(n))]
    if min(np.diff(ends), default=test) < test or ends[0] < history - 1:
        raise ValueError(f"{n} periods of {history} sessions do not fit in {len(dates)} dates")
    return [dates[i].date() for i in ends]


def describe_universes(universes: list[Universe]) -> dict[str, dict[str, object]]:
    """What a results file records of each universe: tickers, history and period as_of dates."""
    return {
        u.name: {
            "tickers": sorted(u.frames),
            "history_sessions": u.history,
            "as_of": [d.isoformat() for d in u.as_of],
        }
        for u in universes
    }


def load_universes(periods: int, stocks_file: Path) -> list[Universe]:
    """The sample index series, and a few shared-data stocks when that file is present."""
    sample = validate_prices(SampleSource().download(["^GSPC", "^IXIC"], None, None).frames).frames
    # The first period leaves room for the longest lookback (issue 20's scale inputs).
    first = 1250 + max(LOOKBACK.values())
    universes = [Universe("sample", sample, 1250, _periods(sample, first, 125, periods, True))]
    if stocks_file.exists():
        stocks = validate_prices(CsvSource(stocks_file).download(STOCKS, None, None).frames).frames
        universes.append(Universe("stocks", stocks, 750, _periods(stocks, 750, 75, periods, False)))
    else:
        print(f"skipping the stocks universe: {stocks_file} is absent")
    return universes


def period_dataset(universe: Universe, as_of: date, recipe: Recipe) -> Dataset:
    """`build_windows` of the universe's last `history` sessions up to as_of (and, for
    features that read further back, the rows before them that they read: every recipe
    gets the same windows)."""
    features = {}
    rows = universe.history + extra_rows(recipe.features)  # the lookback's rows come first
    for ticker, frame in universe.frames.items():
        visible = frame[frame.index <= pd.Timestamp(as_of)].iloc[-rows:]
        features[ticker] = compute_features(visible, window_columns(recipe.features))
    windows = WindowConfig(
        window=recipe.window, features=list(recipe.features), target=recipe.target
    )
    return build_windows(features, windows, as_of)


def score_period(
    universe: Universe, as_of: date, recipe: Recipe, train: TrainConfig
) -> tuple[dict[str, dict[str, float]], dict[str, Any] | None]:
    """Train and evaluate one recipe on one period; with +shrink for return targets.

    For the default recipe, also the product's own model (gated shrink and
    intervals, as `train_model` makes it with `shrink_output` on) and its
    test-span distribution: {"part": test windows' y and bounds relative to the
    last close, sorted by ticker and date, "metrics": evaluate_model's}.
    """
    dataset = period_dataset(universe, as_of, recipe)
    # The recipes compare point targets: the one-output head (issue 20's heads: --heads).
    trained = train_model(dataset, LSTMConfig(distribution="none"), train)
    metrics = evaluate_model(trained.forecaster, dataset.test).metrics
    row = {
        "ratio": metrics["test_rmse"] / metrics["naive_rmse"],
        "skill": metrics["skill"],
        "directional_accuracy": metrics["test_directional_accuracy"],
        "epochs": float(trained.fit.epochs_trained),
        "test_windows": float(len(dataset.test)),
    }
    scores = {recipe.name: row}
    if trained.forecaster.encoding.predicts_return:
        validation = encode_split(trained.forecaster, dataset.validation, torch.device("cpu"))
        for suffix, z in (("+shrink", 0.0), ("+gated shrink", SHRINK_Z)):
            forecaster = copy.deepcopy(trained.forecaster)
            factor = fit_output_scale(forecaster.module, *validation, z=z)
            scale_output(forecaster.module, factor)
            shrunk = evaluate_model(forecaster, dataset.test).metrics
            scores[f"{recipe.name} {suffix}"] = {
                **row,
                "ratio": shrunk["test_rmse"] / shrunk["naive_rmse"],
                "skill": shrunk["skill"],
                "directional_accuracy": shrunk["test_directional_accuracy"],
                "shrink": factor,
            }
    if recipe.name != DEFAULT:
        return scores, None
    # the pipeline's own path (issue 20: the distributional head, the better head kept on
    # validation), shrink and intervals; its point is the distribution's median
    product = train_model(dataset, LSTMConfig(), train.model_copy(update={"shrink_output": True}))
    evaluation = evaluate_model(product.forecaster, dataset.test)
    gated = scores[f"{recipe.name} +gated shrink"]
    gated["product_ratio"] = evaluation.metrics["test_rmse"] / evaluation.metrics["naive_rmse"]
    return scores, {
        "part": distribution_part(evaluation.predictions),
        "metrics": evaluation.metrics
        | {
            "shrink": product.fit.output_scale,
            "head_lstm": float(product.forecaster.head == "lstm"),
        },
    }


def distribution_part(predictions: pd.DataFrame) -> dict[str, np.ndarray]:
    """Test windows as benchmarks/intervals.py scores them: relative to the last close."""
    p = predictions.sort_values(["ticker", "target_date"], kind="stable")
    last = p["last_close"].to_numpy()
    part = {
        "y": p["actual_close"].to_numpy() / last - 1.0,
        "tickers": p["ticker"].to_numpy(dtype=object),
        "dates": p["target_date"].to_numpy(dtype="datetime64[ns]"),
    }
    for level in LEVELS:
        for side in ("lower", "upper"):
            part[f"{side}_{level}"] = p[f"{side}_{level}"].to_numpy() / last - 1.0
    return part


def point_comparison(
    rows: list[dict[str, object]], table: list[dict[str, object]]
) -> dict[str, Any] | None:
    """The product's point ratio (mean over trainings) against the point head's of before
    issue 20 (BEFORE_ISSUE_20 +gated shrink), on the same periods and seeds."""
    product = [float(r["product_ratio"]) for r in rows if "product_ratio" in r]  # type: ignore[arg-type]
    before = next((e for e in table if e["recipe"] == f"{BEFORE_ISSUE_20} +gated shrink"), None)
    if not product or before is None:
        return None
    mean, previous = statistics.fmean(product), float(before["mean_ratio"])  # type: ignore[arg-type]
    return {
        "product_mean_ratio": mean,
        "before_mean_ratio": previous,
        "not_lower": mean <= previous + RATIO_TOLERANCE,
    }


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Per recipe: mean ratio overall and per universe, worst period, share with skill >= 0."""
    table = []
    for name in dict.fromkeys(str(r["recipe"]) for r in rows):
        mine = [r for r in rows if r["recipe"] == name]
        ratios = [float(r["ratio"]) for r in mine]  # type: ignore[arg-type]
        entry: dict[str, object] = {
            "recipe": name,
            "periods": len(mine),
            "mean_ratio": statistics.fmean(ratios),
            "mean_skill": 1 - statistics.fmean(ratios),
            "worst_ratio": max(ratios),
            "share_skill_ge_0": sum(x <= 1 for x in ratios) / len(ratios),
            "mean_directional_accuracy": statistics.fmean(
                float(r["directional_accuracy"])  # type: ignore[arg-type]
                for r in mine
            ),
        }
        for universe in dict.fromkeys(str(r["universe"]) for r in mine):
            entry[f"mean_ratio_{universe}"] = statistics.fmean(
                float(r["ratio"])  # type: ignore[arg-type]
                for r in mine
                if r["universe"] == universe
            )
        table.append(entry)
    return sorted(table, key=lambda e: float(e["mean_ratio"]))  # type: ignore[arg-type]


def print_table(table: list[dict[str, object]], universes: list[str]) -> None:
    columns = ["mean_ratio", *[f"mean_ratio_{u}" for u in universes], "worst_ratio"]
    header = f"{'recipe':56} " + " ".join(f"{c.removeprefix('mean_'):>13}" for c in columns)
    print(header + f" {'skill>=0':>9} {'dir.acc':>8}")
    for e in table:
        cells = " ".join(f"{float(e.get(c, float('nan'))):>13.4f}" for c in columns)  # type: ignore[arg-type]
        share, direction = float(e["share_skill_ge_0"]), float(e["mean_directional_accuracy"])  # type: ignore[arg-type]
        print(f"{e['recipe']!s:56} {cells} {share:>9.0%} {direction:>8.3f}")


# --- intervals: the product's against benchmarks/intervals.py's baselines ---------------------


def _intervals() -> ModuleType:
    """benchmarks/intervals.py, imported late: it imports this module's loaders."""
    import intervals

    return intervals


def baseline_rows() -> tuple[str, ...]:
    """The interval recipes compared with the product: baselines, then the naive-centred one."""
    iv = _intervals()
    return (*iv.BASELINES, iv.RECOMMENDED)


def baseline_parts(universe: Universe, as_of: date) -> dict[str, dict[str, np.ndarray]]:
    """Each baseline's test-window intervals in one period (nothing fitted on the test span)."""
    iv = _intervals()
    panel = iv.build_panel(universe, as_of, WindowConfig().window)  # checks the test windows
    recipes = [iv.RECIPES[name] for name in baseline_rows()]
    scales, _ = iv.compute_scales(panel, {r.scale for r in recipes})
    return {r.name: iv.held_out_intervals(r, panel, scales) for r in recipes}


def check_aligned(model: dict[str, np.ndarray], base: dict[str, np.ndarray], where: str) -> None:
    """The product's test windows are the baselines' (same tickers, dates, outcomes)."""
    same = (
        len(model["y"]) == len(base["y"])
        and (model["tickers"] == base["tickers"]).all()
        and (model["dates"] == base["dates"].astype("datetime64[ns]")).all()
        and np.allclose(model["y"], base["y"], rtol=0, atol=1e-12)
    )
    if not same:
        raise RuntimeError(f"{where}: the model's test windows differ from the baselines'")


def _seed_mean(rows: list[dict[str, float]], key: str) -> float:
    return statistics.fmean(float(r[key]) for r in rows)


# issue 20's risk scores (benchmarks/strong_har.py), kept beside score()'s in every row
RISK_KEYS = (
    "qlike_gk",
    "qlike_gk_overnight",
    "pinball_2.5",
    "pinball_10",
    "kupiec_pass_80",
    "christoffersen_pass_80",
    "kupiec_pass_95",
    "christoffersen_pass_95",
)


def _scores(iv: ModuleType, parts: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """intervals.score and strong_har.risk_scores of the same test windows."""
    from strong_har import risk_scores

    return dict(iv.score(parts) | risk_scores(parts))


def with_proxies(model: dict[str, np.ndarray], base: dict[str, np.ndarray]) -> None:
    """The baselines' variance proxies on the model's part (aligned: same rows, same order)."""
    for key in ("proxy_gk", "proxy_gk_overnight"):
        model[key] = base[key]


def interval_period_rows(
    universe: str,
    as_of: str,
    model: dict[int, dict[str, Any]],
    bases: dict[str, dict[str, np.ndarray]],
) -> dict[str, Any]:
    """One period: the model per seed and its mean, each baseline, the 95% score ratios."""
    iv = _intervals()
    seeds = {seed: _scores(iv, [m["part"]]) for seed, m in model.items()}
    mine = list(seeds.values())
    row: dict[str, Any] = {"universe": universe, "as_of": as_of}
    for level in LEVELS:
        row[f"coverage_{level}"] = _seed_mean(mine, f"coverage_{level}")
        row[f"interval_score_{level}"] = _seed_mean(mine, f"interval_score_{level}")
    row["seeds"] = {
        str(seed): scored
        | {
            k: float(model[seed]["metrics"][k])
            for k in (
                "skill",
                "skill_pvalue",
                "baseline_interval_score_95",
                "interval_skill_95",
                "test_interval_score",
                "shrink",
            )
        }
        for seed, scored in seeds.items()
    }
    row["baselines"] = {name: _scores(iv, [part]) for name, part in bases.items()}
    for name, scored in row["baselines"].items():
        row[f"ratio_95_vs_{name}"] = row["interval_score_95"] / scored["interval_score_95"]
    return row


def interval_pooled(
    periods: list[dict[str, Any]],
    parts: dict[tuple[str, str], dict[Any, Any]],
    scope: str,
    seeds: list[int],
) -> dict[str, Any]:
    """All test windows of the scope's periods: model per seed and mean, baselines, targets."""
    iv = _intervals()
    mine = [r for r in periods if scope in ("all", r["universe"])]
    keys = [(r["universe"], r["as_of"]) for r in mine]
    out: dict[str, Any] = {"scope": scope, "periods": len(mine)}
    per_seed = {s: _scores(iv, [parts[k][s]["part"] for k in keys]) for s in seeds}
    out["seeds"] = {str(s): v for s, v in per_seed.items()}
    for level in LEVELS:
        for key in (f"coverage_{level}", f"interval_score_{level}", f"width_{level}"):
            out[key] = _seed_mean(list(per_seed.values()), key)
    for key in RISK_KEYS:
        out[key] = _seed_mean(list(per_seed.values()), key)
    out["baselines"] = {
        name: _scores(iv, [parts[k][name] for k in keys]) for name in baseline_rows()
    }
    for name, scored in out["baselines"].items():
        ratios = [float(r[f"ratio_95_vs_{name}"]) for r in mine]
        out[f"ratio_95_vs_{name}"] = out["interval_score_95"] / scored["interval_score_95"]
        out[f"mean_period_ratio_95_vs_{name}"] = statistics.fmean(ratios)
        out[f"periods_beating_{name}"] = sum(x < 1 for x in ratios)
        out[f"periods_beating_{name}_per_seed"] = {
            str(s): sum(
                float(r["seeds"][str(s)]["interval_score_95"])
                < float(r["baselines"][name]["interval_score_95"])
                for r in mine
            )
            for s in seeds
        }
        for key in ("qlike_gk", "qlike_gk_overnight", "pinball_2.5", "pinball_10"):
            out[f"{key}_ratio_vs_{name}"] = out[key] / scored[key]
        theirs = iv._daily_scores([parts[k][name] for k in keys])
        out[f"dm_pvalue_95_vs_{name}"] = {
            str(s): iv.diebold_mariano_pvalue(
                iv._daily_scores([parts[k][s]["part"] for k in keys]) - theirs
            )
            for s in seeds
        }
    for level in LEVELS:
        out[f"worst_period_gap_{level}"] = max(
            abs(float(seed[f"coverage_{level}"]) - level / 100)
            for r in mine
            for seed in r["seeds"].values()
        )
    out["targets"] = interval_targets(out)
    return out


def interval_targets(pooled: dict[str, Any]) -> dict[str, Any]:
    """Issue 10's interval targets on one scope's pooled numbers (seed means)."""
    n = int(pooled["periods"])
    need = math.ceil(2 * n / 3)
    return {
        "coverage_80_in_78_82": 0.78 <= pooled["coverage_80"] <= 0.82,
        "coverage_95_in_93.5_96.5": 0.935 <= pooled["coverage_95"] <= 0.965,
        "no_period_off_by_6_points": max(
            pooled["worst_period_gap_80"], pooled["worst_period_gap_95"]
        )
        <= 0.06,
        "score_95_below_ewma": pooled["ratio_95_vs_ewma"] < 1,
        "score_95_below_garch_on_average": pooled["mean_period_ratio_95_vs_garch"] < 1,
        f"score_95_below_garch_in_{need}_of_{n}_periods": pooled["periods_beating_garch"] >= need,
        "stretch_score_95_below_har": pooled["ratio_95_vs_har"] < 1,
    }


def print_intervals(pooled: list[dict[str, Any]], periods: list[dict[str, Any]]) -> None:
    """Pooled per scope (model per seed, mean, baselines), then the model per period."""
    names = baseline_rows()
    short = {"ewma": "ewma", "garch": "garch", "har": "har"}
    print(
        f"\n{'scope':7} {'row':26} {'cov80':>6} {'cov95':>6} {'IS80':>6} {'IS95':>6} "
        + " ".join(f"{'/' + v:>7}" for v in short.values())
        + f" {'kup80':>6} {'chr80':>6} {'kup95':>6} {'chr95':>6}"
    )

    def line(scope: str, label: str, r: dict[str, Any], base: dict[str, Any] | None) -> None:
        ratios = " ".join(
            f"{r['interval_score_95'] / base['baselines'][b]['interval_score_95']:7.3f}"
            if base
            else f"{'':7}"
            for b in short
        )
        tests = " ".join(
            f"{r[k]:6.3f}" if k in r else f"{'':6}"
            for k in ("kupiec_80", "christoffersen_80", "kupiec_95", "christoffersen_95")
        )
        print(
            f"{scope:7} {label:26} {r['coverage_80']:6.1%} {r['coverage_95']:6.1%} "
            f"{1e4 * r['interval_score_80']:6.1f} {1e4 * r['interval_score_95']:6.1f} "
            f"{ratios} {tests}"
        )

    for p in pooled:
        for seed, r in p["seeds"].items():
            line(p["scope"], f"{MODEL} seed {seed}", r, p)
        line(p["scope"], f"{MODEL} mean", p, p)
        for name in names:
            line(p["scope"], name, p["baselines"][name], p)
        n = p["periods"]
        print(
            f"{'':7} periods beating ewma {p['periods_beating_ewma']}/{n}, garch "
            f"{p['periods_beating_garch']}/{n}, har {p['periods_beating_har']}/{n}; "
            f"mean period ratio /garch {p['mean_period_ratio_95_vs_garch']:.3f}; worst period "
            f"off nominal {100 * p['worst_period_gap_80']:.1f} / {100 * p['worst_period_gap_95']:.1f} pt"
        )
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in p["targets"].items())
        print(f"{'':7} targets: {met}")
    print(f"\n{MODEL} per period (mean of seeds; 95% score ratio against each; p-values per seed)")
    print(
        f"{'universe':8} {'as_of':10} {'cov80':>6} {'cov95':>6} {'IS95':>6} "
        + " ".join(f"{'/' + n[:9]:>10}" for n in names)
        + f" {'kup95':>11} {'chr95':>11}"
    )
    for r in periods:
        tests = [
            "/".join(f"{float(s[k]):.2f}" for s in r["seeds"].values())
            for k in ("kupiec_95", "christoffersen_95")
        ]
        print(
            f"{r['universe']:8} {r['as_of']:10} {r['coverage_80']:6.1%} {r['coverage_95']:6.1%} "
            f"{1e4 * r['interval_score_95']:6.1f} "
            + " ".join(f"{r[f'ratio_95_vs_{n}']:10.3f}" for n in names)
            + f" {tests[0]:>11} {tests[1]:>11}"
        )
    print(
        "IS: mean interval score, bp of the last close; /x: 95% score over x's; kup/chr: Kupiec / "
        f"Christoffersen p-values; {names[-1]}: benchmarks/intervals.py's recipe centred on naive"
    )


def print_risk(pooled: list[dict[str, Any]]) -> None:
    """Issue 20's table: the model (seed mean) and each baseline, pooled per scope."""
    against = ("har_strong", "garch_t", "ewma", _intervals().RECOMMENDED)
    print(
        f"\n{'scope':7} {'row':26} {'cov80':>6} {'cov95':>6} {'IS95':>6} {'QL-gk':>7} "
        f"{'QL-gk+on':>8} {'pin2.5':>7} {'pin10':>7} {'kup80':>5} {'chr80':>5} {'kup95':>5} "
        f"{'chr95':>5}  95% score / QLIKE(gk+on) ratio, DM p: " + ", ".join(a[:10] for a in against)
    )
    for p in pooled:
        for label, r in [(f"{MODEL} mean", p), *p["baselines"].items()]:
            ratios = ""
            if label.startswith(MODEL):
                ratios = "  " + ", ".join(
                    f"{p[f'ratio_95_vs_{a}']:.3f} / {p[f'qlike_gk_overnight_ratio_vs_{a}']:.3f}"
                    f" p " + "/".join(f"{v:.3f}" for v in p[f"dm_pvalue_95_vs_{a}"].values())
                    for a in against
                )
            print(
                f"{p['scope']:7} {label[:26]:26} {r['coverage_80']:6.1%} {r['coverage_95']:6.1%} "
                f"{1e4 * r['interval_score_95']:6.1f} {r['qlike_gk']:7.4f} "
                f"{r['qlike_gk_overnight']:8.4f} {1e4 * r['pinball_2.5']:7.2f} "
                f"{1e4 * r['pinball_10']:7.2f} {r['kupiec_pass_80']:5.0%} "
                f"{r['christoffersen_pass_80']:5.0%} {r['kupiec_pass_95']:5.0%} "
                f"{r['christoffersen_pass_95']:5.0%}{ratios}"
            )
    print(
        "QL: mean QLIKE of ((upper_95 − lower_95) / (2·1.96))² against the target day's "
        "Garman–Klass variance (gk) and GK + overnight gap² (gk+on); pin: pinball loss, bp, of "
        "the 95% / 80% lower bounds at 2.5% / 10%; kup/chr: share of ticker-periods whose "
        "p-value ≥ 0.05"
    )


def training_time() -> dict[str, Any] | None:
    """The reference scenario's time from results/train_speed.json, against the previous."""
    if not TRAIN_SPEED.exists():
        return None
    speed = json.loads(TRAIN_SPEED.read_text())
    now = float(speed["median_train_s"])
    return {
        "median_train_s": now,
        "previous_median_train_s": PREVIOUS_REFERENCE_S,
        "ratio": now / PREVIOUS_REFERENCE_S,
        "within_10_percent": now <= 1.1 * PREVIOUS_REFERENCE_S,
        "load_average_1m": speed.get("load_average_1m"),
    }


# --- growth: the S&P 500 with and without `scale_to_windows` ------------------------------------

GROWTH_VARIANTS: dict[str, dict[str, Any]] = {
    "scaled to the windows (default)": {"growth_windows": TrainConfig().growth_windows},
    "batch 32, patience 5 throughout": {"growth_windows": None},
}
# --- budget (issue 22): every window each epoch against a sample per epoch -----------------------
# 2^17 is ~30% of the S&P's ~440k training windows per period: the share of a universe's windows
# each epoch reads at about 3.4x the S&P's size (2,020 tickers read 26%, 10,100 tickers 5%).
BUDGET_SAMPLE = 2**17
BUDGET_VARIANTS: dict[str, dict[str, Any]] = {
    "every window (--full-retrain)": {"epoch_windows": None},
    f"{BUDGET_SAMPLE:,} windows per epoch": {"epoch_windows": BUDGET_SAMPLE},
}
BUDGET_RESULTS = ROOT / "benchmarks" / "results" / "accuracy_budget.json"


def score_variant(
    dataset: Dataset, seed: int, epochs: int, update: dict[str, Any]
) -> tuple[dict[str, float], pd.DataFrame]:
    """Train the default recipe as the pipeline does, with `update` to its TrainConfig, then
    score it on the test windows: the scores, and each test window's errors."""
    train = TrainConfig(epochs=epochs, seed=seed, device="cpu").model_copy(update=update)
    started = time.perf_counter()
    trained = train_model(dataset, LSTMConfig(), train)
    seconds = time.perf_counter() - started
    evaluation = evaluate_model(trained.forecaster, dataset.test)
    metrics, p = evaluation.metrics, evaluation.predictions
    windows = pd.DataFrame(
        {
            "date": p["target_date"].to_numpy(),
            "squared_error": ((p["predicted_close"] - p["actual_close"]) / p["last_close"]) ** 2,
            "interval_score": window_interval_scores(
                {c: p[c].to_numpy() for c in p.columns if c.startswith(("lower_", "upper_"))},
                p["actual_close"].to_numpy(),
                p["last_close"].to_numpy(),
            ),
        }
    )
    return {
        "ratio": metrics["test_rmse"] / metrics["naive_rmse"],
        "interval_score_95_vs_ewma": metrics["interval_score_95"]
        / metrics["baseline_interval_score_95"],
        "coverage_80": metrics["coverage_80"],
        "coverage_95": metrics["coverage_95"],
        "shrink": trained.fit.output_scale,
        "epochs": float(trained.fit.epochs_trained),
        "best_epoch": float(trained.fit.best_epoch),
        "batch_size": float(trained.fit.batch_size),
        "patience": float(trained.fit.patience or 0),
        "learning_rate": trained.fit.learning_rate,
        "fit_s": trained.fit.train_seconds,
        "train_forecaster_s": seconds,
        "train_windows": float(len(dataset.train)),
    }, windows


def _daily_gap(mine: pd.DataFrame, theirs: pd.DataFrame, column: str) -> np.ndarray:
    """Per test date, the mean of `column` of `mine` less `theirs` (same windows), (D,)."""
    by_date = (mine[column] - theirs[column]).groupby(mine["date"].to_numpy()).mean()
    return by_date.sort_index().to_numpy()


def run_variants(
    args: argparse.Namespace, variants: dict[str, dict[str, Any]], results: Path
) -> None:
    """Each variant of TrainConfig on the very same S&P 500 windows, per period and seed,
    with Diebold–Mariano p-values of each later variant against the first (per seed, daily
    mean squared error and interval score over every period's test dates)."""
    tickers = CsvSource(args.stocks_file).tickers()
    frames = validate_prices(
        CsvSource(args.stocks_file).download(tickers, None, None).frames
    ).frames
    as_of = _periods(frames, SP500_HISTORY, SP500_TEST, args.periods, False)
    universe = Universe("sp500", frames, SP500_HISTORY, as_of)
    seeds = list(range(42, 42 + args.seeds))
    started = time.perf_counter()
    rows, errors = [], {}
    for day in universe.as_of:
        dataset = period_dataset(universe, day, RECIPES[DEFAULT])  # one set of windows for all
        for seed, (variant, update) in itertools.product(seeds, variants.items()):
            score, errors[day, seed, variant] = score_variant(dataset, seed, args.epochs, update)
            rows.append({"as_of": day.isoformat(), "seed": seed, "variant": variant} | score)
            print(
                f"{day} {seed} {variant:40} ratio {score['ratio']:.5f}  IS95/EWMA "
                f"{score['interval_score_95_vs_ewma']:.4f}  batch {score['batch_size']:.0f}  "
                f"patience {score['patience']:.0f}  epochs {score['epochs']:.0f} (best "
                f"{score['best_epoch']:.0f})  fit {score['fit_s']:.1f}s",
                flush=True,
            )
    first = next(iter(variants))
    table = []
    for variant in variants:
        mine = [r for r in rows if r["variant"] == variant]
        entry = {"variant": variant} | {
            key: statistics.fmean(float(r[key]) for r in mine)
            for key in (
                "ratio",
                "interval_score_95_vs_ewma",
                "coverage_80",
                "coverage_95",
                "epochs",
                "best_epoch",
                "batch_size",
                "fit_s",
                "train_forecaster_s",
            )
        }
        entry["worst_ratio"] = max(float(r["ratio"]) for r in mine)
        if variant != first:
            for column in ("squared_error", "interval_score"):
                entry[f"dm_pvalue_{column}_vs_first"] = {
                    str(seed): _intervals().diebold_mariano_pvalue(
                        np.concatenate(
                            [
                                _daily_gap(
                                    errors[day, seed, variant], errors[day, seed, first], column
                                )
                                for day in universe.as_of
                            ]
                        )
                    )
                    for seed in seeds
                }
        table.append(entry)
    elapsed = time.perf_counter() - started
    print(f"\nS&P 500, {len(universe.as_of)} periods x {len(seeds)} seeds, means ({elapsed:.0f}s):")
    print(
        f"{'variant':40} {'ratio':>8} {'worst':>8} {'IS95/EWMA':>10} {'cov80':>7} {'cov95':>7} "
        f"{'batch':>6} {'epochs':>7} {'best':>5} {'fit s':>7} {'train s':>8}  DM p (SE, IS)"
    )
    for e in table:
        dm = ""
        if "dm_pvalue_squared_error_vs_first" in e:
            dm = "  " + ", ".join(
                f"{e['dm_pvalue_squared_error_vs_first'][str(s)]:.2f}/"
                f"{e['dm_pvalue_interval_score_vs_first'][str(s)]:.2f}"
                for s in seeds
            )
        print(
            f"{e['variant']!s:40} {e['ratio']:>8.5f} {e['worst_ratio']:>8.5f} "
            f"{e['interval_score_95_vs_ewma']:>10.4f} {e['coverage_80']:>7.1%} "
            f"{e['coverage_95']:>7.1%} {e['batch_size']:>6.0f} {e['epochs']:>7.1f} "
            f"{e['best_epoch']:>5.1f} "
            f"{e['fit_s']:>7.1f} {e['train_forecaster_s']:>8.1f}{dm}"
        )
    result = {
        "universe": describe_universes([universe]),
        "seeds": seeds,
        "epochs": args.epochs,
        "variants": variants,
        "table": table,
        "periods": rows,
        "load_average_1m": os.getloadavg()[0],
        "cpu": platform.processor() or platform.machine(),
        "elapsed_s": round(elapsed, 1),
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(result, indent=2, default=_json) + "\n")
    print(f"wrote {results.relative_to(ROOT)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=50, help="max epochs (early stopping on)")
    parser.add_argument("--periods", type=int, default=6, help="held-out periods per universe")
    parser.add_argument(
        "--seeds", type=int, default=2, help="trainings per period (seeds 42, 43, ..)"
    )
    parser.add_argument("--configs", help="comma-separated recipe numbers (1-based) to run")
    parser.add_argument(
        "--stocks-file", type=Path, default=SHARED, help=f"long-format prices (default {SHARED})"
    )
    parser.add_argument("--quick", action="store_true", help="2 periods, 10 epochs: a smoke run")
    parser.add_argument(
        "--growth",
        action="store_true",
        help="only the S&P 500 comparison of scale_to_windows (default 2 periods)",
    )
    parser.add_argument(
        "--heads",
        action="store_true",
        help="only issue 20's distributional-head variants against the baselines (heads.py)",
    )
    parser.add_argument("--variants", help="with --heads: comma-separated variant numbers")
    parser.add_argument(
        "--budget",
        action="store_true",
        help="only issue 22's S&P 500 comparison: every window per epoch against a sample "
        f"of {BUDGET_SAMPLE:,} (default 2 periods)",
    )
    args = parser.parse_args()
    if args.quick:
        args.periods, args.epochs, args.seeds = 2, 10, 1
    logging.getLogger("prefect").setLevel(logging.ERROR)
    if args.heads:
        from heads import run_heads

        if "--periods" not in sys.argv and not args.quick:
            args.periods = 6
        run_heads(args)
        return
    if args.growth:
        if "--periods" not in sys.argv:
            args.periods = 2
        run_variants(args, GROWTH_VARIANTS, GROWTH_RESULTS)
        return
    if args.budget:
        if "--periods" not in sys.argv:
            args.periods = 2
        run_variants(args, BUDGET_VARIANTS, BUDGET_RESULTS)
        return
    recipes = list(RECIPES.values())
    if args.configs:
        recipes = [recipes[int(i) - 1] for i in args.configs.split(",")]
    if args.configs and DEFAULT not in {r.name for r in recipes}:
        print(f"no interval tables: the default recipe ({DEFAULT}) is not among --configs")
    default = RECIPES[DEFAULT]
    if (default.target, list(default.features), default.window) != (
        WindowConfig().target,
        WindowConfig().features,
        WindowConfig().window,
    ):
        raise RuntimeError(f"{DEFAULT!r} is no longer closecast.core.config's default window")
    seeds = list(range(42, 42 + args.seeds))
    started = time.perf_counter()
    universes = load_universes(args.periods, args.stocks_file)
    rows: list[dict[str, object]] = []
    # (universe, as_of) -> {baseline name: part, seed: {"part", "metrics"}}
    parts: dict[tuple[str, str], dict[Any, Any]] = {}
    for universe in universes:
        for as_of in universe.as_of:
            key = (universe.name, as_of.isoformat())
            for recipe, seed in itertools.product(recipes, seeds):
                # shrink_output off: the +shrink rows apply it to the very same model
                train = TrainConfig(
                    epochs=args.epochs, seed=seed, device="cpu", shrink_output=False
                )
                scores, distribution = score_period(universe, as_of, recipe, train)
                for name, score in scores.items():
                    where = {"universe": universe.name, "as_of": as_of.isoformat(), "seed": seed}
                    rows.append(where | {"recipe": name} | score)
                    print(
                        f"{universe.name:7} {as_of} {seed} {name:58} ratio {score['ratio']:.4f}"
                        f"  epochs {score['epochs']:.0f}"
                        + (f"  factor {score['shrink']:.3f}" if "shrink" in score else ""),
                        flush=True,
                    )
                if distribution is not None:
                    if key not in parts:
                        parts[key] = baseline_parts(universe, as_of)
                    check_aligned(distribution["part"], parts[key]["ewma"], str(key))
                    with_proxies(distribution["part"], parts[key]["ewma"])
                    parts[key][seed] = distribution
    table = summarise(rows)
    names = [u.name for u in universes]
    interval_periods = [
        interval_period_rows(u, a, {s: p[s] for s in seeds}, {n: p[n] for n in baseline_rows()})
        for (u, a), p in parts.items()
    ]
    pooled = [
        interval_pooled(interval_periods, parts, scope, seeds)
        for scope in ([*names, "all"] if len(names) > 1 else names)
        if interval_periods
    ]
    elapsed = time.perf_counter() - started
    print(
        f"\ntest RMSE / naive RMSE, mean over {len(rows) // len(table)} trainings: "
        f"{args.seeds} seed(s) x periods "
        f"({', '.join(f'{u.name}: {len(u.as_of)}' for u in universes)}); "
        f"max {args.epochs} epochs, early stopping; {elapsed:.0f}s"
    )
    print_table(table, names)
    point = point_comparison(rows, table)
    if point is not None:
        print(
            f"the product's point forecast (its distribution's median): mean ratio "
            f"{point['product_mean_ratio']:.4f}, against {point['before_mean_ratio']:.4f} for the "
            f"point head before issue 20 ({BEFORE_ISSUE_20} +gated shrink) on the same windows "
            f"and {PREVIOUS_DEFAULT['mean_ratio']:.4f} before intervals "
            f"({PREVIOUS_DEFAULT['commit']}, other sample periods)"
        )
    if interval_periods:
        print_intervals(pooled, interval_periods)
        print_risk(pooled)
    speed = training_time()
    if speed is not None:
        print(
            f"reference scenario (results/train_speed.json): {speed['median_train_s']:.3f}s "
            f"against {PREVIOUS_REFERENCE_S:.3f}s before: ratio {speed['ratio']:.2f}"
        )
    result = {
        "epochs": args.epochs,
        "seeds": seeds,
        "universes": describe_universes(universes),
        "table": table,
        "periods": rows,
        "previous_default": PREVIOUS_DEFAULT,
        "point": point,
        "point_skill_not_lower": None if point is None else point["not_lower"],
        "intervals": {"pooled": pooled, "periods": interval_periods},
        "training_time": speed,
        "elapsed_s": round(elapsed, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2, default=_json) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)} ({elapsed:.0f}s)")


def _json(value: object) -> object:
    """numpy scalars and booleans in the results."""
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer | np.floating):
        return value.item()
    raise TypeError(f"not JSON-able: {type(value)}")


if __name__ == "__main__":
    main()
