"""Accuracy: test RMSE / naive RMSE of each target and feature choice, over held-out periods.

Every number comes from the pipeline's own steps: validated prices ->
`compute_features` -> `build_dataset` (split by date: train | validation |
test, scaling fitted on train only) -> `train_forecaster` (one global model
per universe and period, early stopping) -> `evaluate_forecaster` (errors
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
fitted on the validation windows only (`models.training.fit_output_scale`):
`+shrink` the least-squares factor, `+gated shrink` that factor lowered by
1.645 standard errors (what training does by default, `shrink_output`).

Usage:
    python benchmarks/accuracy.py [--epochs 50] [--periods 6] [--seeds 2] [--configs 1,3] [--quick]

Writes benchmarks/results/accuracy.json and prints the table.
"""

import argparse
import copy
import itertools
import json
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from closecast.config import TrainConfig, WindowConfig  # noqa: E402
from models.lstm import LSTMConfig  # noqa: E402
from models.training import SHRINK_Z, fit_output_scale, scale_output  # noqa: E402
from tasks.evaluation import evaluate_forecaster  # noqa: E402
from tasks.features import compute_features  # noqa: E402
from tasks.prices import CsvSource, SampleSource  # noqa: E402
from tasks.training import encode_split, train_forecaster  # noqa: E402
from tasks.validate import validate_all  # noqa: E402
from tasks.windows import build_dataset, window_columns  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "accuracy.json"
SHARED = ROOT.parent / "shared" / "data" / "sp500_5yr" / "all_stocks_5yr.csv.gz"
STOCKS = ["AAPL", "MSFT", "JPM", "XOM", "JNJ", "PG", "AMZN", "GE"]


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
    )
}


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


def load_universes(periods: int, stocks_file: Path) -> list[Universe]:
    """The sample index series, and a few shared-data stocks when that file is present."""
    sample = validate_all(SampleSource().download(["^GSPC", "^IXIC"], None, None).frames).frames
    universes = [Universe("sample", sample, 1250, _periods(sample, 1250, 125, periods, True))]
    if stocks_file.exists():
        stocks = validate_all(CsvSource(stocks_file).download(STOCKS, None, None).frames).frames
        universes.append(Universe("stocks", stocks, 750, _periods(stocks, 750, 75, periods, False)))
    else:
        print(f"skipping the stocks universe: {stocks_file} is absent")
    return universes


def score_period(
    universe: Universe, as_of: date, recipe: Recipe, train: TrainConfig
) -> dict[str, dict[str, float]]:
    """Train and evaluate one recipe on one period; with +shrink for return targets."""
    features = {}
    for ticker, frame in universe.frames.items():
        visible = frame[frame.index <= pd.Timestamp(as_of)].iloc[-universe.history :]
        features[ticker] = compute_features(visible, window_columns(recipe.features))
    windows = WindowConfig(
        window=recipe.window, features=list(recipe.features), target=recipe.target
    )
    dataset = build_dataset(features, windows, as_of)
    trained = train_forecaster(dataset, LSTMConfig(), train)
    metrics = evaluate_forecaster(trained.forecaster, dataset.test).metrics
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
            shrunk = evaluate_forecaster(forecaster, dataset.test).metrics
            scores[f"{recipe.name} {suffix}"] = {
                **row,
                "ratio": shrunk["test_rmse"] / shrunk["naive_rmse"],
                "skill": shrunk["skill"],
                "directional_accuracy": shrunk["test_directional_accuracy"],
                "shrink": factor,
            }
    return scores


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
    args = parser.parse_args()
    if args.quick:
        args.periods, args.epochs, args.seeds = 2, 10, 1
    logging.getLogger("prefect").setLevel(logging.ERROR)
    recipes = list(RECIPES.values())
    if args.configs:
        recipes = [recipes[int(i) - 1] for i in args.configs.split(",")]
    started = time.perf_counter()
    universes = load_universes(args.periods, args.stocks_file)
    rows: list[dict[str, object]] = []
    for universe in universes:
        for as_of in universe.as_of:
            for recipe, seed in itertools.product(recipes, range(42, 42 + args.seeds)):
                # shrink_output off: the +shrink rows apply it to the very same model
                train = TrainConfig(
                    epochs=args.epochs, seed=seed, device="cpu", shrink_output=False
                )
                for name, score in score_period(universe, as_of, recipe, train).items():
                    where = {"universe": universe.name, "as_of": as_of.isoformat(), "seed": seed}
                    rows.append(where | {"recipe": name} | score)
                    print(
                        f"{universe.name:7} {as_of} {seed} {name:58} ratio {score['ratio']:.4f}"
                        f"  epochs {score['epochs']:.0f}"
                        + (f"  factor {score['shrink']:.3f}" if "shrink" in score else ""),
                        flush=True,
                    )
    table = summarise(rows)
    elapsed = time.perf_counter() - started
    names = [u.name for u in universes]
    print(
        f"\ntest RMSE / naive RMSE, mean over {len(rows) // len(table)} trainings: "
        f"{args.seeds} seed(s) x periods "
        f"({', '.join(f'{u.name}: {len(u.as_of)}' for u in universes)}); "
        f"max {args.epochs} epochs, early stopping; {elapsed:.0f}s"
    )
    print_table(table, names)
    result = {
        "epochs": args.epochs,
        "seeds": list(range(42, 42 + args.seeds)),
        "universes": {
            u.name: {
                "tickers": sorted(u.frames),
                "history_sessions": u.history,
                "as_of": [d.isoformat() for d in u.as_of],
            }
            for u in universes
        },
        "table": table,
        "periods": rows,
        "elapsed_s": round(elapsed, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
