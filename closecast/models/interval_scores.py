"""Scores of prediction intervals: the interval score, coverage, and coverage tests.

- `interval_score` (Gneiting–Raftery) and `coverage` score intervals against outcomes;
- `kupiec_pvalue` and `christoffersen_pvalue` test whether the misses are as
  rare (and as scattered) as the nominal level says.

The intervals themselves come from models/intervals.py.
"""

import math
from collections.abc import Sequence

import numpy as np


def _level_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def interval_score(lower: np.ndarray, upper: np.ndarray, y: np.ndarray, alpha: float) -> np.ndarray:
    """Gneiting–Raftery (Winkler) score of central (1 − alpha) intervals, lower is better.

    score = (upper − lower) + (2 / alpha) · (lower − y)⁺ + (2 / alpha) · (y − upper)⁺:
    the width plus a penalty for each miss that grows with its distance.

    Args:
        lower, upper, y: broadcastable arrays, e.g. (N,) each, in one unit.
        alpha: 1 − the nominal coverage (0.05 for a 95% interval).

    Returns:
        Per observation, the broadcast shape of the inputs, e.g. (N,).
    """
    _level_alpha(alpha)
    lower, upper, y = (np.asarray(a, dtype=np.float64) for a in (lower, upper, y))
    if np.any(lower > upper):
        i = int(np.argmax(np.broadcast_to(lower > upper, np.broadcast(lower, upper).shape)))
        raise ValueError(f"lower > upper at position {i}: an interval must not be inverted")
    below = np.maximum(lower - y, 0.0)
    above = np.maximum(y - upper, 0.0)
    return (upper - lower) + (2.0 / alpha) * (below + above)


def coverage(lower: np.ndarray, upper: np.ndarray, y: np.ndarray) -> float:
    """Share of observations with lower ≤ y ≤ upper; broadcastable (N,) arrays -> float."""
    hits = (np.asarray(lower) <= np.asarray(y)) & (np.asarray(y) <= np.asarray(upper))
    if hits.size == 0:
        raise ValueError("coverage of 0 observations is undefined")
    return float(hits.mean())


def _xlogy(x: float, y: float) -> float:
    """x · log(y), with 0 · log(0) = 0 (the likelihood of an event that never happened)."""
    return 0.0 if x == 0 else x * math.log(y)


def _bernoulli_loglik(misses: int, n: int, p: float) -> float:
    return _xlogy(n - misses, 1.0 - p) + _xlogy(misses, p)


def _hit_sequences(hits: np.ndarray | Sequence[np.ndarray], nominal: float) -> list[np.ndarray]:
    if not 0.0 < nominal < 1.0:
        raise ValueError(f"nominal coverage must be in (0, 1), got {nominal}")
    if isinstance(hits, np.ndarray):
        rows = [hits] if hits.ndim == 1 else list(hits)
    else:
        rows = [np.asarray(h) for h in hits]
    sequences = []
    for row in rows:
        row = np.asarray(row)
        if row.ndim != 1:
            raise ValueError(f"hits must be 1-D sequences, got one of shape {row.shape}")
        if not np.isin(row, (0, 1)).all():
            raise ValueError(f"hits must be booleans (1 = inside the interval), got {row[:5]}")
        sequences.append(row.astype(bool))
    if sum(len(s) for s in sequences) == 0:
        raise ValueError("a coverage test needs at least 1 observation, got 0")
    return sequences


def _kupiec_lr(sequences: list[np.ndarray], nominal: float) -> float:
    n = sum(len(s) for s in sequences)
    misses = sum(int((~s).sum()) for s in sequences)
    p = 1.0 - nominal
    lr = 2.0 * (_bernoulli_loglik(misses, n, misses / n) - _bernoulli_loglik(misses, n, p))
    return max(lr, 0.0)


def kupiec_pvalue(hits: np.ndarray | Sequence[np.ndarray], nominal: float) -> float:
    """Kupiec's (1995) unconditional-coverage likelihood-ratio test.

    H0: each observation falls outside the interval with probability
    1 − nominal. LR = 2·[ℓ(observed miss rate) − ℓ(1 − nominal)] ~ χ²(1).

    Args:
        hits: booleans, True where the outcome fell inside its interval; (N,),
            or (K, N) / a list of K sequences (pooled).
        nominal: the interval's nominal coverage, e.g. 0.8.

    Returns:
        The p-value; near 1 when the hit rate equals nominal, near 0 far from it.
    """
    lr = _kupiec_lr(_hit_sequences(hits, nominal), nominal)
    return math.erfc(math.sqrt(lr / 2.0))  # χ²(1) survival function


def christoffersen_pvalue(hits: np.ndarray | Sequence[np.ndarray], nominal: float) -> float:
    """Christoffersen's (1998) conditional-coverage test: right miss rate and no clustering.

    LR_cc = LR_uc (Kupiec) + LR_ind ~ χ²(2), where LR_ind compares a
    first-order Markov chain of misses (a miss after a miss with its own
    probability) with independent misses. Transitions are counted within each
    sequence, so several tickers' sequences can be pooled without inventing
    a transition from one ticker's last day to the next ticker's first.

    Args:
        hits: booleans, True inside the interval; (N,), or (K, N) / a list of
            K sequences (e.g. one per ticker, in date order).
        nominal: the interval's nominal coverage.

    Returns:
        The p-value; near 0 when misses cluster or are too frequent or rare.
    """
    sequences = _hit_sequences(hits, nominal)
    counts = np.zeros((2, 2), dtype=np.int64)  # counts[i, j]: state i (1 = miss) then j
    for s in sequences:
        miss = (~s).astype(np.int64)
        np.add.at(counts, (miss[:-1], miss[1:]), 1)
    (n00, n01), (n10, n11) = counts.tolist()
    pooled = (n01 + n11) / max(counts.sum(), 1)
    p01 = n01 / (n00 + n01) if n00 + n01 else 0.0
    p11 = n11 / (n10 + n11) if n10 + n11 else 0.0
    markov = _bernoulli_loglik(n01, n00 + n01, p01) + _bernoulli_loglik(n11, n10 + n11, p11)
    independent = _bernoulli_loglik(n01 + n11, int(counts.sum()), pooled)
    lr = _kupiec_lr(sequences, nominal) + max(2.0 * (markov - independent), 0.0)
    return math.exp(-lr / 2.0)  # χ²(2) survival function
