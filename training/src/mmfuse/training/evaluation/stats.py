"""Uncertainty of held-out accuracies: bootstrap intervals and paired tests of two checkpoints.

The embedded held-out sets are small (36 recordings, 112 videos): a reader must see how much of a
difference is noise. Every accuracy gets a percentile bootstrap interval (Efron & Tibshirani 1993,
Ch. 13) over its items; two checkpoints evaluated on the same items are compared by McNemar's exact
test on the discordant pairs (McNemar 1947; the binomial form, as ``statsmodels``' ``mcnemar(exact=True)``)
and a paired bootstrap interval of the difference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class Interval:
    """An estimate with its two-sided interval.

    Attributes:
        value: the point estimate (mean of the outcomes).
        low: lower bound.
        high: upper bound.
        n: items.
    """

    value: float
    low: float
    high: float
    n: int


def bootstrap_interval(
    outcomes: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Percentile bootstrap interval of the mean of ``outcomes`` (0/1 for an accuracy).

    Raises:
        ValueError: no outcomes.
    """
    values = np.asarray(outcomes, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no outcomes to bootstrap")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(values.mean()), float(low), float(high), len(values))


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p-value of paired outcomes ``a`` and ``b`` on the same items.

    Under the null the discordant pairs split ``Binomial(n_discordant, 1/2)``; the p-value is
    ``min(1, 2 * P(X <= min(n_ab, n_ba)))``. No discordant pair gives 1.

    Raises:
        ValueError: ``a`` and ``b`` differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired outcomes need equal lengths, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b, strict=True) if x and not y)
    only_b = sum(1 for x, y in zip(a, b, strict=True) if y and not x)
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_difference(
    a: Sequence[float], b: Sequence[float], *, level: float = 0.95, resamples: int = 2000, seed: int = 0
) -> Interval:
    """Bootstrap interval of ``mean(b) - mean(a)`` resampling items (pairs kept together)."""
    return bootstrap_interval(
        np.asarray(b, dtype=np.float64) - np.asarray(a, dtype=np.float64),
        level=level, resamples=resamples, seed=seed,
    )  # fmt: skip


__all__ = ["Interval", "bootstrap_interval", "mcnemar_exact", "paired_difference"]
