"""Issue 20: does the LSTM's distributional head beat the HAR scale it grows from?

`python benchmarks/accuracy.py --heads` runs this. On accuracy.py's universes
and held-out periods (12 × 2 seeds in the full run) it trains each variant
of the distributional network as the pipeline trains it (`train_model`,
default TrainConfig: early stopping, gated shrink of the location, then
both heads calibrated and the better one kept on validation), and scores
on the very test windows of accuracy.py's baselines (checked row by row):

- `product`: the head the run chose (what a nightly ships);
- `lstm head`: the same network, its own scale σ̂·m, calibrated;
- `har head`: the same network's centre with the HAR scale σ̂ (= today's
  recipe whenever the location is shrunk to 0);

against today's recipe (`har10+conformal_trainval`, centred on naive), the
strong HAR (`har_strong`), GARCH(1,1)-t and EWMA: coverage, interval score,
QLIKE, pinball at 2.5% / 10%, Kupiec / Christoffersen pass shares, and
Diebold–Mariano p-values of the daily 95% interval-score differences (two-
sided, Newey–West), per seed. Variants: the default inputs (close, volume,
open), the scale inputs added (range22, range66, volume60, high, low), that
without the range inputs, without volume, with hidden 16 and 64, and with a
normal instead of a Student-t head. The point skill (test RMSE / naive RMSE)
of each variant is against the previous product's (accuracy.py's
PREVIOUS_DEFAULT).

Writes benchmarks/results/heads.json and prints the tables.
"""

import argparse
import copy
import json
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import accuracy as acc
import numpy as np

from closecast.core.config import DEFAULT_FEATURES, TrainConfig
from closecast.models.heads import fit_heads, use_head
from closecast.models.lstm import LSTMConfig
from closecast.tasks.modeling.evaluation import evaluate_model
from closecast.tasks.modeling.training import train_model

RESULTS = acc.ROOT / "benchmarks" / "results" / "heads.json"
CVO = ("close", "volume", "open")
SCALE_INPUTS = ("high", "low", "range22", "range66", "volume60")


@dataclass(frozen=True)
class Variant:
    """One distributional network to train: inputs and architecture."""

    name: str
    features: tuple[str, ...]
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields to change


FULL = (*CVO, *SCALE_INPUTS)
if FULL != DEFAULT_FEATURES:
    raise RuntimeError(f"the first variant's inputs {FULL} are no longer the default features")
VARIANTS = {
    v.name: v
    for v in (
        Variant("product defaults", FULL),  # normal head, hidden 32, dropout 0.2
        Variant("no range inputs", tuple(f for f in FULL if "range" not in f)),
        Variant("no volume inputs", tuple(f for f in FULL if "volume" not in f)),
        Variant("hidden 16", FULL, LSTMConfig(hidden_size=16)),
        Variant("hidden 64", FULL, LSTMConfig(hidden_size=64)),
        Variant("student_t head", FULL, LSTMConfig(distribution="student_t")),
        Variant("close, volume, open", CVO),  # the inputs before issue 20
    )
}
HEAD_ROWS = ("product", "lstm head", "har head")
# What the rows are scored against, strongest first; the DM p-values and ratios are theirs.
AGAINST = ("har10+conformal_trainval", "har_strong", "garch_t", "ewma")


def trained_parts(
    universe: acc.Universe, as_of: Any, variant: Variant, seed: int, epochs: int
) -> dict[str, Any]:
    """One training: each head row's test part, the chosen head and the point ratio."""
    recipe = acc.Recipe(variant.name, "vol_return", variant.features)
    dataset = acc.period_dataset(universe, as_of, recipe)
    train = TrainConfig(epochs=epochs, seed=seed, device="cpu", **variant.train)
    trained = train_model(dataset, variant.lstm, train)
    product = trained.forecaster
    evaluation = evaluate_model(product, dataset.test)
    out: dict[str, Any] = {
        "head": product.head,
        "head_scores": dict(product.head_scores),
        "ratio": evaluation.metrics["test_rmse"] / evaluation.metrics["naive_rmse"],
        "shrink": trained.fit.output_scale,
        "epochs": trained.fit.epochs_trained,
        "parts": {"product": acc.distribution_part(evaluation.predictions)},
    }
    fitted = fit_heads(
        copy.deepcopy(product), product.intervals.scale, dataset.train, dataset.validation
    )  # type: ignore[union-attr]
    for head in ("lstm", "har"):
        forced = copy.deepcopy(product)
        use_head(forced, head, fitted)
        predictions = evaluate_model(forced, dataset.test).predictions
        out["parts"][f"{head} head"] = acc.distribution_part(predictions)
    return out


def pooled_rows(
    runs: dict[tuple[str, str, int], dict[str, Any]],
    bases: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]],
    scope: str,
    seeds: list[int],
) -> dict[str, Any]:
    """One variant in one scope: each head row (seed means, per seed) against the baselines."""
    iv = acc._intervals()
    keys = [k for k in bases if scope in ("all", k[0])]
    out: dict[str, Any] = {"scope": scope, "periods": len(keys), "rows": {}}
    theirs = {b: iv._daily_scores([bases[k][b] for k in keys]) for b in AGAINST}
    base_scores = {b: acc._scores(iv, [bases[k][b] for k in keys]) for b in AGAINST}
    out["baselines"] = base_scores
    for row in HEAD_ROWS:
        per_seed = {s: acc._scores(iv, [runs[(*k, s)]["parts"][row] for k in keys]) for s in seeds}
        mean = {
            key: statistics.fmean(v[key] for v in per_seed.values()) for key in per_seed[seeds[0]]
        }
        entry: dict[str, Any] = {"mean": mean, "seeds": {str(s): v for s, v in per_seed.items()}}
        for b in AGAINST:
            entry[f"ratio_95_vs_{b}"] = (
                mean["interval_score_95"] / base_scores[b]["interval_score_95"]
            )
            for key in ("qlike_gk", "qlike_gk_overnight", "pinball_2.5", "pinball_10"):
                entry[f"{key}_ratio_vs_{b}"] = mean[key] / base_scores[b][key]
            entry[f"dm_pvalue_95_vs_{b}"] = {
                str(s): iv.diebold_mariano_pvalue(
                    iv._daily_scores([runs[(*k, s)]["parts"][row] for k in keys]) - theirs[b]
                )
                for s in seeds
            }
        entry["worst_period_gap"] = max(
            abs(acc._scores(iv, [runs[(*k, s)]["parts"][row]])[f"coverage_{level}"] - level / 100)
            for k in keys
            for s in seeds
            for level in acc.LEVELS
        )
        out["rows"][row] = entry
    mine = [runs[(*k, s)] for k in keys for s in seeds]
    out["lstm_head_share"] = sum(r["head"] == "lstm" for r in mine) / len(mine)
    out["point_ratio"] = statistics.fmean(r["ratio"] for r in mine)
    out["shrink_zero_share"] = sum(r["shrink"] == 0 for r in mine) / len(mine)
    out["targets"] = targets(out["rows"]["product"], out["point_ratio"])
    return out


def targets(row: dict[str, Any], point_ratio: float) -> dict[str, bool]:
    """Issue 20's targets on one row (seed means; every seed's DM p-value must clear)."""
    m = row["mean"]

    def beats(b: str, factor: float) -> bool:
        significant = all(p < 0.05 for p in row[f"dm_pvalue_95_vs_{b}"].values())
        return row[f"ratio_95_vs_{b}"] <= factor and significant

    return {
        "score_95_le_0.97x_recipe_p<0.05": beats(AGAINST[0], 0.97),
        "score_95_le_0.97x_har_strong_p<0.05": beats("har_strong", 0.97),
        "stretch_le_0.95x_both": beats(AGAINST[0], 0.95) and beats("har_strong", 0.95),
        "coverage_80_within_1.5pt": abs(m["coverage_80"] - 0.80) <= 0.015,
        "coverage_95_within_1.5pt": abs(m["coverage_95"] - 0.95) <= 0.015,
        "no_period_off_by_4pt": row["worst_period_gap"] <= 0.04,
        "christoffersen_pass_ge_80pct": min(
            m["christoffersen_pass_80"], m["christoffersen_pass_95"]
        )
        >= 0.8,
        # both variance proxies (GK + overnight is the one a close-to-close return has)
        "qlike_le_0.97x_har_strong": max(
            row["qlike_gk_ratio_vs_har_strong"], row["qlike_gk_overnight_ratio_vs_har_strong"]
        )
        <= 0.97,
        "point_skill_not_lower": point_ratio <= previous_point_ratio() + acc.RATIO_TOLERANCE,
    }


def previous_point_ratio() -> float:
    """The point head's mean ratio before issue 20 on these windows (results/accuracy.json,
    `point`), else the committed one from before intervals (other sample periods)."""
    if acc.RESULTS.exists():
        point = json.loads(acc.RESULTS.read_text()).get("point")
        if point:
            return float(point["before_mean_ratio"])
    return float(acc.PREVIOUS_DEFAULT["mean_ratio"])


def print_variant(name: str, pooled: list[dict[str, Any]]) -> None:
    print(f"\n== {name}")
    print(
        f"{'scope':7} {'row':10} {'cov80':>6} {'cov95':>6} {'IS95':>6} {'QL-gk':>7} "
        f"{'chr95':>5}  95% score ratio (DM p per seed) vs: " + ", ".join(AGAINST)
    )
    for p in pooled:
        for row, entry in p["rows"].items():
            m = entry["mean"]
            ratios = ", ".join(
                f"{entry[f'ratio_95_vs_{b}']:.3f} ("
                + "/".join(f"{v:.3f}" for v in entry[f"dm_pvalue_95_vs_{b}"].values())
                + ")"
                for b in AGAINST
            )
            print(
                f"{p['scope']:7} {row:10} {m['coverage_80']:6.1%} {m['coverage_95']:6.1%} "
                f"{1e4 * m['interval_score_95']:6.1f} {m['qlike_gk']:7.4f} "
                f"{m['christoffersen_pass_95']:5.0%}  {ratios}"
            )
        print(
            f"{'':7} lstm head chosen in {p['lstm_head_share']:.0%} of trainings; point ratio "
            f"{p['point_ratio']:.4f} (the point head before: {previous_point_ratio():.4f}); "
            f"location shrunk to 0 in {p['shrink_zero_share']:.0%}"
        )
        met = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in p["targets"].items())
        print(f"{'':7} targets (product): {met}")


def run_heads(args: argparse.Namespace) -> None:
    """Train every variant on every period and seed; score; write RESULTS."""
    variants = list(VARIANTS.values())
    if args.variants:
        variants = [variants[int(i) - 1] for i in args.variants.split(",")]
    seeds = list(range(42, 42 + args.seeds))
    started = time.perf_counter()
    universes = acc.load_universes(args.periods, args.stocks_file)
    bases: dict[tuple[str, str], dict[str, dict[str, np.ndarray]]] = {}
    for universe in universes:
        for as_of in universe.as_of:
            bases[(universe.name, as_of.isoformat())] = acc.baseline_parts(universe, as_of)
    names = [u.name for u in universes]
    scopes = [*names, "all"] if len(names) > 1 else names
    results: dict[str, Any] = {}
    for variant in variants:
        runs: dict[tuple[str, str, int], dict[str, Any]] = {}
        for universe in universes:
            for as_of in universe.as_of:
                key = (universe.name, as_of.isoformat())
                for seed in seeds:
                    run = trained_parts(universe, as_of, variant, seed, args.epochs)
                    for part in run["parts"].values():
                        acc.check_aligned(part, bases[key]["ewma"], f"{variant.name} {key}")
                        acc.with_proxies(part, bases[key]["ewma"])
                    runs[(*key, seed)] = run
                    print(
                        f"{variant.name:26} {key[0]:7} {key[1]} {seed} head {run['head']:4} "
                        f"val {run['head_scores']['lstm'] / run['head_scores']['har']:.4f}x "
                        f"ratio {run['ratio']:.4f} epochs {run['epochs']}",
                        flush=True,
                    )
        pooled = [pooled_rows(runs, bases, scope, seeds) for scope in scopes]
        print_variant(variant.name, pooled)
        results[variant.name] = {
            "features": list(variant.features),
            "lstm": {
                "hidden_size": variant.lstm.hidden_size,
                "distribution": variant.lstm.distribution,
            },
            "pooled": pooled,
            "trainings": [
                {"universe": k[0], "as_of": k[1], "seed": k[2]}
                | {key: r[key] for key in ("head", "head_scores", "ratio", "shrink", "epochs")}
                for k, r in runs.items()
            ],
        }
    elapsed = time.perf_counter() - started
    payload = {
        "epochs": args.epochs,
        "seeds": seeds,
        "universes": acc.describe_universes(universes),
        "against": list(AGAINST),
        "variants": results,
        "elapsed_s": round(elapsed, 1),
    }
    RESULTS.write_text(json.dumps(payload, indent=2, default=acc._json) + "\n")
    print(f"wrote {RESULTS.relative_to(acc.ROOT)} ({elapsed:.0f}s)")
