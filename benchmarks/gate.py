"""Issue 21: why challengers lose to the champion far more often than chance, and the fix.

Runs (with `--run`, one after the other) the 40-session backfill of the issue,
`closecast backfill --source sample --start 2018-11-01 --end 2018-12-31 --register`,
once per seed (42, the default, and 7), each into its own home; every session
trains and registers a version, so each home holds one model per night.
Then it replays the gate night by night on those very models, scoring each on
each later night's test windows (the same windows and per-window interval
scores the gate uses, `window_interval_scores`), under three rules:

- `before`: the previous rule: a lower mean interval score on all of the night's
  test windows, which overlap ~97% with the ones the champion was selected on;
- `after`: `decide_promotion` on the fresh windows only (target dates after the
  champion's test_end), paired by session;
- `after, alpha 0.05`: the same, promoting only when p < 0.05.

and, for the cause, on the `before` rule's nights:

- the challenger against the previous night's version (never selected) on the
  same windows: should win about half the time if the versions are alike;
- the challenger − champion difference on the windows the champion was
  selected on (overlap) against the fresh ones;
- `same data, different seed`: each night's seed-7 model against the seed-42
  model of the same night (same data, same windows, neither selected): pure noise;
- `alternating seeds`: the three rules again on nights whose models alternate
  between the two seeds (42 on even nights, 7 on odd), so that consecutive
  challengers are not near copies of one another (with one seed, tonight's
  model is yesterday's trained on one more day, and their wins and losses
  against a champion come in runs).

The replay's `after` count is checked against what each real backfill's gate
did (the version tags). Writes benchmarks/results/gate.json and prints the table.

    python benchmarks/gate.py --run            # both backfills (~9 min each on 2 cores), then the replay
    python benchmarks/gate.py                  # the replay on homes already filled (~1 min)
"""

import argparse
import json
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

from closecast.core.config import MODEL_NAME, PipelineConfig
from closecast.tasks.data.store import load_prices
from closecast.tasks.data.validate import validate_prices
from closecast.tasks.mlflow.connection import configure_mlflow
from closecast.tasks.modeling.evaluation import window_interval_scores
from closecast.tasks.modeling.features import compute_features
from closecast.tasks.modeling.windows import WindowSet, build_windows, window_columns
from closecast.tasks.registry.gate import compare_scores, decide_promotion
from closecast.tasks.registry.logged_model import load_forecaster

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gate.json"
START, END = "2018-11-01", "2018-12-31"
SEEDS = (42, 7)


@dataclass
class Night:
    """One backfill session: its test windows and the version trained on it."""

    as_of: date
    version: str
    test: WindowSet
    test_end: str
    promotion: str  # what the real backfill's gate tagged it


def backfill(home: Path, seed: int, alpha: float | None) -> None:
    """The issue's 40-session backfill with --register, into `home`."""
    command = [sys.executable, "-m", "closecast.cli.app", "backfill", "--source", "sample"]
    command += ["--start", START, "--end", END, "--register", "--seed", str(seed)]
    command += ["--home", str(home)] + ([] if alpha is None else ["--promotion-alpha", str(alpha)])
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def load_nights(home: Path) -> tuple[list[Night], dict[str, object]]:
    """Every registered version of `home`'s backfill, oldest first, with its night's test
    windows rebuilt from the store, and the loaded models."""
    config = PipelineConfig(home=home, data={"source": "sample"})
    client = configure_mlflow(config.mlflow_uri)
    versions = sorted(
        client.search_model_versions(f"name='{MODEL_NAME}'"), key=lambda v: int(v.version)
    )
    nights, models = [], {}
    for v in versions:
        as_of = date.fromisoformat(client.get_run(v.run_id).data.tags["as_of"])
        prices = load_prices(config.prices_dir, config.data.tickers, as_of)
        columns = window_columns(config.windows.features)
        frames = validate_prices(prices.frames).frames
        features = {t: compute_features(f, columns) for t, f in frames.items()}
        test = build_windows(features, config.windows, prices.as_of).test
        end = str(pd.Timestamp(test.target_dates.max()).date())
        nights.append(Night(as_of, str(v.version), test, end, v.tags.get("promotion", "")))
        models[str(v.version)] = load_forecaster(f"models:/{MODEL_NAME}/{v.version}")
    return nights, models


def score_matrix(
    nights: list[Night], models: dict[str, object]
) -> dict[tuple[int, int], np.ndarray]:
    """(night k, model of night j ≤ k) -> each of night k's test windows' interval score."""
    scores = {}
    for k, night in enumerate(nights):
        for j in range(k + 1):
            forecast = models[nights[j].version].predict_distribution(  # type: ignore[attr-defined]
                night.test.windows, night.test.tickers
            )
            scores[k, j] = window_interval_scores(
                forecast, night.test.next_close, night.test.last_close
            )
    return scores


def replay(
    nights: list[Night], scores: dict[tuple[int, int], np.ndarray], rule: str, alpha: float | None
) -> dict[str, object]:
    """The gate night by night from the first version: wins / challengers under `rule`."""
    champion, wins, log = 0, 0, []
    for k in range(1, len(nights)):
        mine, theirs = scores[k, k], scores[k, champion]
        if rule == "before":
            promote = bool(mine.mean() < theirs.mean())
            difference = float(mine.mean() / theirs.mean() - 1)
            pvalue = float("nan")
        else:
            since = nights[champion].test_end
            comparison = compare_scores(mine, theirs, nights[k].test.target_dates, since)
            held = {"test_interval_score": float(theirs.mean()), "test_rmse": 1.0}
            decision = decide_promotion(
                {"test_interval_score": float(mine.mean()), "test_rmse": 1.0},
                (nights[champion].version, held),
                "auto",
                comparison=comparison,
                alpha=alpha,
            )
            promote, difference, pvalue = decision.promote, decision.difference, decision.pvalue
        log.append(
            {
                "as_of": nights[k].as_of.isoformat(),
                "champion": nights[champion].version,
                "promoted": promote,
                "difference": difference,
                "pvalue": pvalue,
            }
        )
        if promote:
            champion, wins = k, wins + 1
    return {"wins": wins, "challengers": len(nights) - 1, "nights": log}


def selection_effect(
    nights: list[Night], scores: dict[tuple[int, int], np.ndarray]
) -> dict[str, object]:
    """On the `before` rule's nights: the challenger against the previous night's version
    (not selected) on all windows, and the challenger − champion difference on the windows
    the champion was selected on against the fresh ones (relative to the champion's score)."""
    champion, beats_previous, overlap, fresh, n = 0, 0, [], [], 0
    for k in range(1, len(nights)):
        mine, theirs, previous = scores[k, k], scores[k, champion], scores[k, k - 1]
        beats_previous += int(mine.mean() < previous.mean())
        n += 1
        dates = pd.to_datetime(nights[k].test.target_dates)
        old = np.asarray(dates <= pd.Timestamp(nights[champion].test_end))
        base = theirs.mean()
        if old.any():
            overlap.append(float((mine[old] - theirs[old]).mean() / base))
        if (~old).any():
            fresh.append(float((mine[~old] - theirs[~old]).mean() / base))
        if mine.mean() < theirs.mean():
            champion = k
    return {
        "beats_previous_version": beats_previous,
        "challengers": n,
        "median_difference_on_selection_windows": statistics.median(overlap),
        "median_difference_on_fresh_windows": statistics.median(fresh) if fresh else None,
        "mean_difference_on_selection_windows": statistics.fmean(overlap),
        "mean_difference_on_fresh_windows": statistics.fmean(fresh) if fresh else None,
    }


def same_data_other_seed(
    a: tuple[list[Night], dict[tuple[int, int], np.ndarray]],
    b: tuple[list[Night], dict[tuple[int, int], np.ndarray]],
) -> dict[str, int]:
    """Night by night, model b (other seed) against model a of the same night, same windows."""
    (nights, sa), (_, sb) = a, b
    wins = sum(int(sb[k, k].mean() < sa[k, k].mean()) for k in range(len(nights)))
    return {"wins": wins, "challengers": len(nights)}


def rate(result: dict[str, object]) -> str:
    wins, n = int(result["wins"]), int(result["challengers"])  # type: ignore[call-overload]
    return f"{wins} / {n} ({100 * wins / n:.0f}%)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="store_true", help="run both backfills first")
    parser.add_argument("--homes", type=Path, default=Path("/tmp/gatebench"))
    args = parser.parse_args()
    homes = {42: args.homes / "seed42", 7: args.homes / "seed7"}
    if args.run:  # the real gate: seed 42 without promotion_alpha, seed 7 with 0.05
        backfill(homes[42], 42, None)
        backfill(homes[7], 7, 0.05)
    loaded, raw = {}, {}
    for seed, home in homes.items():
        nights, models = load_nights(home)
        raw[seed] = nights, models
        loaded[seed] = (nights, score_matrix(nights, models))
    out: dict[str, object] = {"command": " ".join(sys.argv), "range": [START, END]}
    rows = []
    for seed, (nights, scores) in loaded.items():
        real = sum(n.promotion == "champion" for n in nights[1:])
        runs = {
            "before": replay(nights, scores, "before", None),
            "after": replay(nights, scores, "after", None),
            "after, alpha 0.05": replay(nights, scores, "after", 0.05),
        }
        out[f"seed {seed}"] = {
            "versions": len(nights),
            "real_backfill_promotions": real,
            "real_backfill_rule": "after" if seed == 42 else "after, alpha 0.05",
            **runs,
            "selection_effect": selection_effect(nights, scores),
        }
        rows += [(f"seed {seed}", rule, rate(r)) for rule, r in runs.items()]
    nights42, models42 = raw[42]
    nights7, models7 = raw[7]
    mixed_nights = [
        a if k % 2 == 0 else b for k, (a, b) in enumerate(zip(nights42, nights7, strict=True))
    ]
    mixed_models = {
        n.version: (models42 if k % 2 == 0 else models7)[n.version]
        for k, n in enumerate(mixed_nights)
    }
    mixed = mixed_nights, score_matrix(mixed_nights, mixed_models)
    mixed_runs = {
        "before": replay(*mixed, "before", None),
        "after": replay(*mixed, "after", None),
        "after, alpha 0.05": replay(*mixed, "after", 0.05),
    }
    out["alternating seeds"] = {**mixed_runs, "selection_effect": selection_effect(*mixed)}
    rows += [("alt seeds", rule, rate(r)) for rule, r in mixed_runs.items()]
    noise = same_data_other_seed(loaded[42], loaded[7])
    out["same data, seed 7 vs seed 42"] = noise
    RESULTS.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"{'models':<9} {'gate':<19} promotions (wins / challengers)")
    for row in rows:
        print(f"{row[0]:<9} {row[1]:<19} {row[2]}")
    print(f"{'seed 7':<9} {'vs seed 42, same night':<19} {rate(noise)}")
    for seed in SEEDS:
        s = out[f"seed {seed}"]
        effect = s["selection_effect"]  # type: ignore[index]
        print(
            f"seed {seed}: real backfill ({s['real_backfill_rule']}) promoted "  # type: ignore[index]
            f"{s['real_backfill_promotions']}; before-rule nights: challenger beats the previous "  # type: ignore[index]
            f"version {effect['beats_previous_version']} / {effect['challengers']}; "
            f"challenger − champion median {100 * effect['median_difference_on_selection_windows']:+.2f}% "
            f"on the champion's selection windows, "
            f"{100 * (effect['median_difference_on_fresh_windows'] or float('nan')):+.2f}% on fresh ones"
        )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
