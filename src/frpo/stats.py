"""Uncertainty of the numbers we plot and tabulate: percentile bootstrap intervals over prompts, and mean ± std
over seeds. Pure Python (no torch, no I/O), so that evaluations, the tracker and the figures share one
definition.

A value computed from sampled prompts (a refusal rate over 16 held-out prompts, a tracked safety reward over 12)
is only as precise as its prompt sample: every such value is reported with :func:`bootstrap_ci`, so that a reader
can see when two lines differ by less than the noise.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

__all__ = ["CI_LEVEL", "bootstrap_ci", "mean_and_ci", "mean_std"]

#: the level of every interval this project reports
CI_LEVEL = 0.95


def bootstrap_ci(values: Sequence[float], *, n_boot: int = 2000, level: float = CI_LEVEL,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` (resampling items with replacement).

    NaN values are dropped first (they are not scores). With no value the interval is (nan, nan); with one value,
    or all values equal, it collapses to that value. Deterministic for a given ``seed``.
    """
    xs = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
    if not xs:
        return (math.nan, math.nan)
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = len(xs)
    rng = random.Random(seed)
    means = sorted(sum(xs[rng.randrange(n)] for _ in range(n)) / n for _ in range(n_boot))
    lo_idx = int(math.floor((1 - level) / 2 * (n_boot - 1)))
    hi_idx = int(math.ceil((1 + level) / 2 * (n_boot - 1)))
    return (means[lo_idx], means[hi_idx])


def mean_and_ci(values: Sequence[float], **kwargs) -> dict:
    """``{"mean", "ci_low", "ci_high", "n"}`` of ``values`` (NaNs dropped), the interval from :func:`bootstrap_ci`."""
    xs = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
    lo, hi = bootstrap_ci(xs, **kwargs)
    return {"mean": sum(xs) / len(xs) if xs else math.nan, "ci_low": lo, "ci_high": hi, "n": len(xs)}


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n−1) over seeds; the std is nan for a single value."""
    xs = [float(v) for v in values]
    if not xs:
        return (math.nan, math.nan)
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return (m, math.nan)
    return (m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)))
