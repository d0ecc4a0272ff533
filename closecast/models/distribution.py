"""The distributional head: the next log return's distribution around the HAR scale.

For each window the network's dense head gives K numbers; a family turns
them into the parameters of z = r / σ̂, the next log return r in units of
the window's HAR scale σ̂ (models/scale.py):

- location μ = out[0] (σ̂ units; the point forecast is the median, μ·σ̂);
- scale multiplier m = exp(clip(out[1], ±LOG_MULTIPLIER_LIMIT)): σ = σ̂·m;
- `student_t` only: degrees of freedom ν = NU_MIN + softplus(out[2] + NU_OFFSET) > 2.

A zero head (the initialisation, `LSTMForecaster.__init__`) gives μ = 0 and
m = 1 for every window: "tomorrow = today" with the HAR scale, the recipe
the head grows from (models/intervals.py). Training minimises the mean
negative log-likelihood of z; each family computes it twice, in torch ops
for autograd and in NumPy with its gradient for the CPU fused step
(models/fused_step.py), and tests/models/test_distribution.py holds them to
each other.

`none` is the reference design: one output, MSE on the encoded target.
"""

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.special import digamma, expit, gammaln
from torch.nn import functional as F

from closecast.core.config import DistributionName

# The multiplier stays within e^±3 ≈ [0.05, 20] of the HAR scale: beyond that a window's
# σ̂ is wrong by more than any tomorrow can show, and exp() of a wild output overflows.
LOG_MULTIPLIER_LIMIT = 3.0
# ν stays above 2 (a finite variance) by a margin that float rounding cannot erase:
# 2 + softplus(x) is exactly 2.0 in float32 from x ≈ −19 on.
NU_MIN = 2.01
# A zero head's ν is 5, the usual fat tail of daily returns.
NU_OFFSET = math.log(math.expm1(5.0 - NU_MIN))
_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def head_outputs(distribution: DistributionName) -> int:
    """The dense head's width for a distribution: 1 (none), 2 (normal) or 3 (student_t)."""
    return {"none": 1, "normal": 2, "student_t": 3}[distribution]


@dataclass(frozen=True)
class Parameters:
    """A distribution's parameters per window, each (N,)."""

    location: np.ndarray  # μ, in σ̂ units
    multiplier: np.ndarray  # m > 0
    nu: np.ndarray | None  # ν > 2 (student_t), None (normal)


def parameters(distribution: DistributionName, outputs: np.ndarray) -> Parameters:
    """The parameters of raw head outputs, (N, K) -> Parameters of (N,) each.

    Raises:
        ValueError: for `none` (a point head has no distribution) or a width that is not K.
    """
    outputs = np.asarray(outputs, dtype=np.float64)
    if (
        distribution == "none"
        or outputs.ndim != 2
        or outputs.shape[1] != head_outputs(distribution)
    ):
        raise ValueError(f"a {distribution} head's outputs are not (N, K): {outputs.shape}")
    multiplier = np.exp(np.clip(outputs[:, 1], -LOG_MULTIPLIER_LIMIT, LOG_MULTIPLIER_LIMIT))
    nu = None
    if distribution == "student_t":
        with np.errstate(invalid="ignore"):  # a NaN output stays NaN: predict marks it
            nu = NU_MIN + np.logaddexp(0.0, outputs[:, 2] + NU_OFFSET)  # softplus, no overflow
    return Parameters(outputs[:, 0], multiplier, nu)


def nll_torch(
    distribution: DistributionName, outputs: torch.Tensor, z: torch.Tensor
) -> torch.Tensor:
    """Per-window loss in torch ops (autograd): (B, K) outputs, (B,) targets -> (B,).

    The negative log-density of z; for `none`, the squared error of the one output.
    """
    if distribution == "none":
        return (outputs - z).square()  # (B,)
    location = outputs[:, 0]  # (B, K) -> (B,)
    log_m = outputs[:, 1].clamp(-LOG_MULTIPLIER_LIMIT, LOG_MULTIPLIER_LIMIT)
    u = (z - location) * torch.exp(-log_m)  # (B,)
    if distribution == "normal":
        return log_m + 0.5 * u.square() + _HALF_LOG_2PI
    nu = NU_MIN + F.softplus(outputs[:, 2] + NU_OFFSET)
    half = 0.5 * (nu + 1.0)
    return (
        log_m
        + half * torch.log1p(u.square() / nu)
        + torch.lgamma(0.5 * nu)
        - torch.lgamma(half)
        + 0.5 * torch.log(nu * math.pi)
    )


def nll_numpy(
    distribution: DistributionName, outputs: np.ndarray, z: np.ndarray, grad: np.ndarray
) -> float:
    """The summed loss of a batch and, into `grad`, d(mean loss) / d outputs.

    Args:
        distribution: normal or student_t.
        outputs: (K, B) head outputs, feature-major as the fused step holds them.
        z: (B,) targets.
        grad: (K, B) written in place.
    """
    batch = z.shape[0]
    location, raw_m = outputs[0], outputs[1]  # (B,) each
    clipped = np.abs(raw_m) > LOG_MULTIPLIER_LIMIT
    log_m = np.clip(raw_m, -LOG_MULTIPLIER_LIMIT, LOG_MULTIPLIER_LIMIT)
    inv_m = np.exp(-log_m)
    u = (z - location) * inv_m  # (B,)
    if distribution == "normal":
        loss = log_m + 0.5 * u * u + _HALF_LOG_2PI
        d_u = u  # d loss / d u
    else:
        raw_nu = outputs[2] + NU_OFFSET
        nu = NU_MIN + np.logaddexp(0.0, raw_nu)
        half = 0.5 * (nu + 1.0)
        ratio = u * u / nu
        log_term = np.log1p(ratio)
        loss = (
            log_m + half * log_term + gammaln(0.5 * nu) - gammaln(half) + 0.5 * np.log(nu * math.pi)
        )
        d_u = (nu + 1.0) * u / (nu + u * u)
        # d loss / d ν, then through ν = NU_MIN + softplus(raw): softplus' = sigmoid
        d_nu = 0.5 * (
            digamma(0.5 * nu)
            - digamma(half)
            + 1.0 / nu
            + log_term
            - (nu + 1.0) * ratio / (nu * (1.0 + ratio))
        )
        grad[2] = d_nu * expit(raw_nu) / batch
    grad[0] = -d_u * inv_m / batch
    grad[1] = np.where(clipped, 0.0, 1.0 - d_u * u) / batch
    return float(loss.sum())
