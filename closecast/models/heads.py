"""Each run keeps the better head: the LSTM's distribution, or the HAR scale it grows from.

A distributional network (models/distribution.py) gives every window a
location μ and a multiplier m of the HAR scale σ̂. Two interval methods
follow from it, on the same centre μ·σ̂ (the point forecast, the median):

- `har`: σ = σ̂, today's recipe (the scale alone, calibrated);
- `lstm`: σ = σ̂·m, the network's own scale.

Each is calibrated the same way (split-conformal quantiles of
(r − centre) / σ on the training and validation windows) and scored on the
validation windows by the mean of its 80% and 95% interval scores, relative
to the last close: what the promotion gate compares on the test windows.
The run ships `lstm` only when that score is lower, so no run ships a
distribution worse than the recipe it started from. The test windows are
never read.
"""

from dataclasses import dataclass

import numpy as np

from closecast.models.calibration import LEVELS, Calibration, bound_columns, close_intervals
from closecast.models.forecaster import HEADS, Forecaster, head_sigma
from closecast.models.interval_scores import interval_score
from closecast.models.intervals import Intervals, Windows, calibrate, log_returns
from closecast.models.scale import ScaleModel


@dataclass(frozen=True)
class _Split:
    """One split's centre, HAR scale and multiplier per window, with its outcome."""

    centre: np.ndarray  # (N,) log return
    sigma_hat: np.ndarray  # (N,)
    multiplier: np.ndarray  # (N,)
    log_return: np.ndarray  # (N,)
    last_close: np.ndarray  # (N,)
    next_close: np.ndarray  # (N,)


def _split(forecaster: Forecaster, windows: Windows) -> _Split:
    centre, sigma_hat, multiplier = forecaster.distribution_parts(windows.windows, windows.tickers)
    return _Split(
        centre, sigma_hat, multiplier, log_returns(windows), windows.last_close, windows.next_close
    )


def mean_interval_score(
    last_close: np.ndarray,
    next_close: np.ndarray,
    centre: np.ndarray,
    sigma: np.ndarray,
    calibration: Calibration,
) -> float:
    """Mean over LEVELS of the mean interval score, relative to the last close."""
    bounds = close_intervals(last_close, centre, sigma, calibration)
    y = next_close / last_close
    scores = []
    for level in LEVELS:
        lower, upper = (bounds[c] / last_close for c in bound_columns(level))
        scores.append(float(np.mean(interval_score(lower, upper, y, alpha=1.0 - level))))
    return float(np.mean(scores))


def fit_heads(
    forecaster: Forecaster, scale: ScaleModel, train: Windows, validation: Windows
) -> dict[str, tuple[Calibration, float]]:
    """Each head's calibration and validation score: {head: (calibration, score)}.

    Leaves `forecaster.intervals` as the scale with the `har` head's calibration.
    """
    forecaster.intervals = Intervals(scale, calibrate(np.empty(0)))  # the parts need σ̂
    parts = [_split(forecaster, train), _split(forecaster, validation)]
    fitted = {}
    for head in HEADS:
        sigmas = [head_sigma(head, p.sigma_hat, p.multiplier) for p in parts]
        z = np.concatenate(
            [(p.log_return - p.centre) / s for p, s in zip(parts, sigmas, strict=True)]
        )
        calibration, val = calibrate(z), parts[1]
        score = mean_interval_score(
            val.last_close, val.next_close, val.centre, sigmas[1], calibration
        )
        fitted[head] = (calibration, score)
    forecaster.intervals = Intervals(scale, fitted["har"][0])
    return fitted


def use_head(
    forecaster: Forecaster, head: str, fitted: dict[str, tuple[Calibration, float]]
) -> None:
    """Give the forecaster `head` with its calibration, and every head's score, in place."""
    if forecaster.intervals is None:
        raise ValueError("a head needs the HAR scale: fit_heads first")
    forecaster.intervals = Intervals(forecaster.intervals.scale, fitted[head][0])
    forecaster.head = head
    forecaster.head_scores = {h: score for h, (_, score) in fitted.items()}


def choose_head(
    forecaster: Forecaster, scale: ScaleModel, train: Windows, validation: Windows
) -> None:
    """Calibrate both heads, score them on validation and keep the better one, in place.

    Sets `forecaster.intervals` (the scale and the chosen head's calibration),
    `forecaster.head` and `forecaster.head_scores` ({head: validation score}).
    """
    fitted = fit_heads(forecaster, scale, train, validation)
    use_head(forecaster, "lstm" if fitted["lstm"][1] < fitted["har"][1] else "har", fitted)
