"""Uncertainty for small samples: standard errors and paired bootstrap intervals."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

CONFIDENCE = 0.95


@dataclass(frozen=True, slots=True)
class Estimate:
    """A value with its standard error (``se``) or a ``(low, high)`` 95% interval."""

    value: float
    se: float = math.nan
    low: float = math.nan
    high: float = math.nan


def mean_with_se(values: Sequence[float]) -> Estimate:
    """Mean and its standard error (sample standard deviation / sqrt(n)); n=1 gives se=nan."""
    if not values:
        return Estimate(math.nan)
    array = np.asarray(values, dtype=np.float64)
    se = float(array.std(ddof=1) / math.sqrt(len(array))) if len(array) > 1 else math.nan
    return Estimate(float(array.mean()), se)


def paired_bootstrap(
    baseline: Sequence[float],
    treated: Sequence[float],
    statistic: Callable[[np.ndarray, np.ndarray], float],
    resamples: int = 2000,
    seed: int = 0,
) -> Estimate:
    """``statistic(baseline, treated)`` and its 95% percentile interval, resampling problems
    (pairs stay together, so per-problem difficulty cancels out)."""
    if len(baseline) != len(treated):
        raise ValueError(f"treated: must pair with baseline, got {len(treated)} vs {len(baseline)} values")
    if not baseline:
        return Estimate(math.nan)
    base = np.asarray(baseline, dtype=np.float64)
    other = np.asarray(treated, dtype=np.float64)
    value = statistic(base, other)
    if resamples < 1 or len(base) < 2:
        return Estimate(value)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(base), size=(resamples, len(base)))
    samples = np.array([statistic(base[p], other[p]) for p in picks])
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.nanpercentile(samples, [tail, 100 - tail])
    return Estimate(value, float(np.nanstd(samples)), float(low), float(high))


def relative_change(baseline: np.ndarray, treated: np.ndarray) -> float:
    """(mean(treated) - mean(baseline)) / mean(baseline), in percent."""
    mean = baseline.mean()
    return float((treated.mean() - mean) / mean * 100) if mean else math.nan


def difference_of_means(baseline: np.ndarray, treated: np.ndarray) -> float:
    """mean(treated) - mean(baseline) (for 0/1 accuracy: percentage points / 100)."""
    return float(treated.mean() - baseline.mean())


def saving(baseline: np.ndarray, treated: np.ndarray) -> float:
    """Percent of the baseline total removed: 100 * (1 - sum(treated) / sum(baseline))."""
    total = baseline.sum()
    return float((1 - treated.sum() / total) * 100) if total else math.nan
