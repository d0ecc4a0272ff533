"""The promotion gate: a new version becomes champion only if it beats the champion.

Both are scored on the new version's test windows (the champion re-scored
there, `rescore_champion`), so the comparison is like for like. The decision
rests on the *fresh* ones only: those whose target date comes after the
champion's own selection (its `test_end`, the last test date of the run that
registered it). The champion won its place on its test windows, which the next
night's overlap by ~97%; compared there it is the best of n earlier draws, so
a challenger as good as it would win only ~1/(n + 1) of the time
(benchmarks/gate.py measures it). On fresh windows neither has been selected.
The difference is paired by session, with a Diebold–Mariano p-value (Newey–West
variance) and a 95% interval; `promotion_alpha` asks for p below it.
"""

import math
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from closecast.core.config import CHAMPION
from closecast.core.formatting import pvalue as shown_pvalue
from closecast.models.forecaster import Forecaster
from closecast.tasks.modeling.evaluation import (
    PairedDifference,
    paired_difference,
    score_distribution,
    window_interval_scores,
)
from closecast.tasks.modeling.windows import WindowSet

PROMOTE_HINT = "review and run `closecast promote`"  # a manual reason's end, before its version
GATED_METRICS = ("test_interval_score", "test_rmse", "naive_rmse", "skill")  # the gate's first


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided for a new version, and why."""

    promote: bool
    tag: str  # champion | rejected | manual
    reason: str
    champion: str | None = None  # the champion version it was compared with, if any
    compared: str = ""  # the metric that decided (`test_interval_score`, `test_rmse`), if any
    # The paired comparison on the fresh windows (NaN/0: none was made). Differences are
    # challenger − champion relative to the champion's mean interval score there (−0.02: 2%
    # lower, better); pvalue is one-sided, small when the challenger is better beyond chance.
    difference: float = math.nan
    difference_low: float = math.nan
    difference_high: float = math.nan
    pvalue: float = math.nan
    windows: int = 0  # fresh windows compared
    sessions: int = 0  # their target dates
    since: str = ""  # the champion's test_end: the fresh windows come after it
    # What the auto gate decides (under manual promotion: would have decided), and why.
    recommended: bool = False
    recommendation: str = ""

    def for_version(self, version: str) -> "Decision":
        """This decision once the version is registered: a manual one names the command."""
        if self.tag != "manual":
            return self
        hint = f"review and run `closecast promote {version}`"
        return replace(self, reason=self.reason.replace(PROMOTE_HINT, hint))

    @property
    def line(self) -> str:
        """`rejected: <reason>`, as the summary and the backfill's model label read it."""
        return f"{self.tag}: {self.reason}"

    @property
    def metrics(self) -> dict[str, float]:
        """The comparison as MLflow run metrics (raw fractions; none when none was made)."""
        if not self.sessions:
            return {}
        return {
            "gate_difference": self.difference,
            "gate_difference_low": self.difference_low,
            "gate_difference_high": self.difference_high,
            "gate_pvalue": self.pvalue,
            "gate_windows": float(self.windows),
            "gate_sessions": float(self.sessions),
        }


@dataclass(frozen=True)
class Comparison:
    """Challenger − champion interval scores on the fresh windows, paired by session."""

    test: PairedDifference  # in fractions of the last close
    champion_score: float  # the champion's mean per-session interval score there
    windows: int
    since: str  # the champion's test_end ('' unknown: every window counts as fresh)

    def relative(self, value: float) -> float:
        """`value` (a difference in fractions of the close) relative to the champion's score."""
        return value / self.champion_score if self.champion_score > 0 else math.nan

    @property
    def text(self) -> str:
        """`interval score −2.2% (95% CI −3.9% to −0.4%, p = 0.01)`, as the card reads it."""
        return difference_text(
            self.relative(self.test.mean),
            self.relative(self.test.low),
            self.relative(self.test.high),
            self.test.pvalue,
        )


def _pct(value: float) -> str:
    return f"{100 * value:+.1f}%".replace("-", "−")


def difference_text(difference: float, low: float, high: float, pvalue: float) -> str:
    """`interval score −2.2% (95% CI −3.9% to −0.4%, p = 0.01)`; without an interval (fewer
    than 2 sessions) `interval score −2.2% (no CI or p-value from 1 session)`."""
    if not math.isfinite(difference):
        return "interval score n/a"
    if not (math.isfinite(low) and math.isfinite(pvalue)):
        return f"interval score {_pct(difference)} (too few sessions for a CI or p-value)"
    p = shown_pvalue(pvalue)
    p = f"p {p}" if p.startswith("<") else f"p = {p}"
    return f"interval score {_pct(difference)} (95% CI {_pct(low)} to {_pct(high)}, {p})"


def fresh_windows(target_dates: np.ndarray, since: str) -> np.ndarray:
    """(N,) True for the windows whose target date comes after `since` (an ISO date;
    '' marks all of them fresh): those the champion was not selected on."""
    dates = pd.to_datetime(np.asarray(target_dates))
    if not since:
        return np.ones(len(dates), dtype=bool)
    return np.asarray(dates > pd.Timestamp(since))


def compare_scores(
    challenger: np.ndarray, champion: np.ndarray, target_dates: np.ndarray, since: str
) -> Comparison | None:
    """The paired comparison of per-window interval scores on the windows after `since`.

    None when the champion has no interval scores (a model from before intervals).

    Args:
        challenger, champion: (N,) each test window's interval score of each model.
        target_dates: (N,) the windows' target dates.
        since: the champion's test_end (ISO date), '' when unknown.
    """
    if not np.isfinite(champion).all():
        return None
    fresh = fresh_windows(target_dates, since)
    dates = np.asarray(target_dates)[fresh]
    test = paired_difference(challenger[fresh], champion[fresh], dates)
    held = pd.Series(champion[fresh]).groupby(dates).mean()
    score = float(held.mean()) if len(held) else math.nan
    return Comparison(test, score, int(fresh.sum()), since)


def _scores(metrics: dict[str, float]) -> str:
    return (
        f"interval score {metrics.get('test_interval_score', float('nan')):.6f}, "
        f"test_rmse {metrics.get('test_rmse', float('nan')):.6f}"
    )


def decide_promotion(
    challenger: dict[str, float],
    champion: tuple[str, dict[str, float]] | None,
    mode: str,
    *,
    comparison: Comparison | None = None,
    alpha: float | None = None,
) -> Decision:
    """The gate: the first version becomes champion; later ones only if they beat it.

    "Beat" means a lower mean `test_interval_score` (the mean of the 80% and
    95% interval scores: a proper score of the whole forecast, centre and
    width) than the champion's on the fresh test windows of `comparison`,
    paired by session; with `alpha`, also a one-sided p-value below it. No
    fresh window keeps the champion. Without a comparison (a champion without
    intervals, from before they existed, or a caller that has none) the
    run-level metrics on all the same windows decide, `test_rmse` for a
    champion without intervals, and the reason says so. The reason names both
    scores of both versions. Under `manual` nothing moves, and the decision
    carries what `auto` would have decided (`recommended`, `recommendation`).

    Args:
        challenger: the new version's test metrics.
        champion: (version, its metrics re-scored on the same test windows), or None.
        mode: `auto`, or `manual` to leave the champion to people.
        comparison: the paired interval scores on the fresh windows (`compare_scores`).
        alpha: promote only when the p-value is below it (None: the sign decides).
    """
    decision = _auto_decision(challenger, champion, comparison, alpha)
    decision = _replace(decision, recommended=decision.promote, recommendation=decision.reason)
    if mode != "manual":
        return decision
    verdict = "recommends promoting" if decision.promote else "would not promote"
    reason = f"promotion is manual: the gate {verdict} ({decision.reason}); {PROMOTE_HINT}"
    return _replace(decision, promote=False, tag="manual", reason=reason)


def _replace(decision: Decision, **changes: object) -> Decision:
    return replace(decision, **changes)  # type: ignore[arg-type]


def _auto_decision(
    challenger: dict[str, float],
    champion: tuple[str, dict[str, float]] | None,
    comparison: Comparison | None,
    alpha: float | None,
) -> Decision:
    if champion is None:
        return Decision(True, CHAMPION, f"first version ({_scores(challenger)})")
    version, held = champion
    if not np.isfinite(held.get("test_rmse", np.nan)):
        return Decision(
            True,
            CHAMPION,
            f"champion v{version} cannot score these test windows ({_scores(challenger)})",
            champion=version,
        )
    if comparison is not None and np.isfinite(held.get("test_interval_score", np.nan)):
        return _paired_decision(challenger, version, held, comparison, alpha)
    metric, name, note = "test_interval_score", "interval score", ""
    mine, theirs = challenger[metric], held.get(metric, np.nan)
    if not np.isfinite(theirs):
        metric = name = "test_rmse"
        note = f"champion v{version} has no intervals, so test_rmse decides; "
        mine, theirs = challenger[metric], held[metric]
    both = f"{_scores(challenger)} vs champion v{version}'s {_scores(held)}"
    if mine < theirs:
        verdict = f"{note}{name} {mine:.6f} beats champion v{version}'s {theirs:.6f}"
        reason = f"{verdict} on the same test windows ({both})"
        return Decision(True, CHAMPION, reason, champion=version, compared=metric)
    beaten = "ties" if mine == theirs else "does not beat"
    verdict = f"{note}{name} {mine:.6f} {beaten} champion v{version}'s {theirs:.6f}"
    reason = f"{verdict} on the same test windows ({both})"
    return Decision(False, "rejected", reason, champion=version, compared=metric)


def fresh_span(comparison: Comparison, version: str) -> str:
    """`the 5 sessions (100 windows) after v3's selection on 2018-12-05`."""
    sessions = comparison.test.sessions
    count = f"{sessions} session{'s' if sessions != 1 else ''} ({comparison.windows} windows)"
    if not comparison.since:
        return f"all {count} (v{version}'s selection date is not recorded)"
    return f"the {count} after v{version}'s selection on {comparison.since}"


def _paired_decision(
    challenger: dict[str, float],
    version: str,
    held: dict[str, float],
    comparison: Comparison,
    alpha: float | None,
) -> Decision:
    test, metric = comparison.test, "test_interval_score"
    both = f"all test windows: {_scores(challenger)} vs champion v{version}'s {_scores(held)}"
    numbers = {
        "difference": comparison.relative(test.mean),
        "difference_low": comparison.relative(test.low),
        "difference_high": comparison.relative(test.high),
        "pvalue": test.pvalue,
        "windows": comparison.windows,
        "sessions": test.sessions,
        "since": comparison.since,
        "champion": version,
        "compared": metric,
    }
    if test.sessions == 0:
        reason = (
            f"no test window comes after champion v{version}'s selection on "
            f"{comparison.since}, so nothing can show it beaten: it stays champion ({both})"
        )
        return Decision(False, "rejected", reason, **numbers)  # type: ignore[arg-type]
    on = f"on {fresh_span(comparison, version)}: {comparison.text}"
    if test.mean < 0 and alpha is not None and not test.pvalue < alpha:
        p = "no p-value" if not math.isfinite(test.pvalue) else f"p = {test.pvalue:.2f}"
        reason = (
            f"held back: scores better than champion v{version} but not beyond chance "
            f"({p}, promotion_alpha {alpha:g}) {on} ({both})"
        )
        return Decision(False, "rejected", reason, **numbers)  # type: ignore[arg-type]
    if test.mean < 0:
        reason = f"beats champion v{version} {on} ({both})"
        return Decision(True, CHAMPION, reason, **numbers)  # type: ignore[arg-type]
    beaten = "ties" if test.mean == 0 else "does not beat"
    reason = f"{beaten} champion v{version} {on} ({both})"
    return Decision(False, "rejected", reason, **numbers)  # type: ignore[arg-type]


def check_metrics(metrics: dict[str, float], intervals: bool = True) -> None:
    """Refuse to register a model whose gated metrics are missing or not finite.

    Args:
        metrics: the model's test metrics.
        intervals: whether the model gives intervals; a point-only model (as
            they were before intervals existed) has no interval score to check.

    Raises:
        ValueError: naming the metric and its value.
    """
    for name in GATED_METRICS if intervals else GATED_METRICS[1:]:
        value = metrics.get(name, float("nan"))
        if not math.isfinite(value):
            raise ValueError(f"metric {name} is {value}: refusing to register the model")


def rescore_champion(
    version: str, champion: Forecaster, test: WindowSet, columns: tuple[str, ...]
) -> tuple[dict[str, float], str]:
    """The champion's metrics on the challenger's test windows, and '' (or no metrics and
    why, when it cannot score them): `rescore_windows` without the per-window scores."""
    metrics, _, problem = rescore_windows(version, champion, test, columns)
    return metrics, problem


def rescore_windows(
    version: str, champion: Forecaster, test: WindowSet, columns: tuple[str, ...]
) -> tuple[dict[str, float], np.ndarray, str]:
    """The champion's metrics on the challenger's test windows, each window's interval
    score (N,), and '' (or no metrics, no scores and why, when it cannot score them).

    The windows hold `columns`; the champion (registry version `version`,
    loaded) reads the ones it was trained on. A champion that cannot read
    these windows (other features or window length, a ticker it has no
    scaling for) gets no metrics.
    """
    try:
        missing = [c for c in champion.columns if c not in columns]
        if missing:
            raise ValueError(f"the test windows lack its column(s) {', '.join(missing)}")
        windows = test.windows.last(champion.window, [columns.index(c) for c in champion.columns])
        if windows.shape[1] != champion.window:
            raise ValueError(f"its window is {champion.window} days, these hold {windows.shape[1]}")
        forecast = champion.predict_distribution(windows, test.tickers)
        scores = window_interval_scores(forecast, test.next_close, test.last_close)
        return score_distribution(forecast, test), scores, ""
    except (ValueError, RuntimeError) as exc:
        return {}, np.empty(0), f"champion v{version} cannot be re-scored: {exc}"
