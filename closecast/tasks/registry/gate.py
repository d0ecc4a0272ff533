"""The promotion gate: a new version becomes champion only if it beats the champion.

Both are scored on the new version's test windows (the champion re-scored
there, `rescore_champion`), so the comparison is like for like.
"""

import math
from dataclasses import dataclass

import numpy as np

from closecast.core.config import CHAMPION
from closecast.models.forecaster import Forecaster
from closecast.tasks.modeling.evaluation import score_distribution
from closecast.tasks.modeling.windows import WindowSet

GATED_METRICS = ("test_interval_score", "test_rmse", "naive_rmse", "skill")  # the gate's first


@dataclass(frozen=True)
class Decision:
    """What the promotion gate decided for a new version, and why."""

    promote: bool
    tag: str  # champion | rejected | manual
    reason: str
    champion: str | None = None  # the champion version it was compared with, if any
    compared: str = ""  # the metric that decided (`test_interval_score`, `test_rmse`), if any

    @property
    def line(self) -> str:
        """`rejected: <reason>`, as the summary and the backfill's model label read it."""
        return f"{self.tag}: {self.reason}"


def _scores(metrics: dict[str, float]) -> str:
    return (
        f"interval score {metrics.get('test_interval_score', float('nan')):.6f}, "
        f"test_rmse {metrics.get('test_rmse', float('nan')):.6f}"
    )


def decide_promotion(
    challenger: dict[str, float], champion: tuple[str, dict[str, float]] | None, mode: str
) -> Decision:
    """The gate: the first version becomes champion; later ones only if they beat it.

    "Beat" means a strictly lower `test_interval_score` (the mean of the 80%
    and 95% interval scores: a proper score of the whole forecast, centre and
    width) on the same test windows. A champion without intervals (a model
    from before they existed) is compared on `test_rmse` only, and the reason
    says so. The reason names both scores of both versions.

    Args:
        challenger: the new version's test metrics.
        champion: (version, its metrics re-scored on the same test windows), or None.
        mode: `auto`, or `manual` to leave the champion to people.
    """
    if mode == "manual":
        against = champion[0] if champion else None
        reason = "promotion is manual: review and run `closecast promote`"
        return Decision(False, "manual", reason, champion=against)
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
    why, when it cannot score them).

    The windows hold `columns`; the champion (registry version `version`,
    loaded) reads the ones it was trained on. A champion that cannot read
    these windows (other features or window length, a ticker it has no
    scaling for) gets no metrics.
    """
    try:
        missing = [c for c in champion.columns if c not in columns]
        if missing:
            raise ValueError(f"the test windows lack its column(s) {', '.join(missing)}")
        windows = test.windows[:, -champion.window :, [columns.index(c) for c in champion.columns]]
        if windows.shape[1] != champion.window:
            raise ValueError(f"its window is {champion.window} days, these hold {windows.shape[1]}")
        forecast = champion.predict_distribution(windows, test.tickers)
        return score_distribution(forecast, test), ""
    except (ValueError, RuntimeError) as exc:
        return {}, f"champion v{version} cannot be re-scored: {exc}"
