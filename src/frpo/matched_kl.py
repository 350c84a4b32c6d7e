"""Comparisons of fine-tuning runs at matched KL: the controlled study's endpoint (``docs/study-protocol.md``).

A fine-tuning run is tracked at a few steps (:mod:`frpo.track`): at each, the KL of the model to its
pre-fine-tuning self and the probes' rewards. Two RL models fine-tuned alike move at different speeds, so their
rewards are compared where they have moved equally far: at fixed KL *levels*.

* :func:`value_at_level`: along one run, the reward where the KL first reaches a level, linearly interpolated
  between the last tracked point below it and the first at or above it. A run that never reaches the level is
  not dropped (dropping it would favour whichever arm moved more): it keeps its last tracked value and is
  flagged ``reached = False``, and the tables count such runs.
* :func:`levels_table`: that for every run of a tidy tracking table, every level and every KL column.
* :func:`paired`: the difference of each arm from a reference arm (GRPO), paired by RL seed (and fine-tuning
  setting and seed): runs that share a seed share their π_ref and their prompts' sampling order, so pairing
  removes what the seeds have in common.
* :func:`sign_flip_test`: the two-sided paired test of a zero mean difference: exact over every sign assignment
  of the differences (up to 16 pairs), else Monte Carlo. It assumes only that each difference is symmetric about
  zero under the null hypothesis.
* :func:`summarise`: mean difference, its 95% percentile-bootstrap interval over pairs
  (:func:`frpo.stats.bootstrap_ci`) and the test.

Pure pandas/numpy: no I/O, no plotting (the study's figures and table are :mod:`frpo.figures.study`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from .stats import bootstrap_ci

__all__ = ["RUN_KEYS", "levels_table", "paired", "sign_flip_test", "summarise", "value_at_level", "value_at_step"]

#: the columns that identify one fine-tuning run in a tidy tracking table
RUN_KEYS = ("track", "run", "rl_seed", "setting", "ft_seed")
#: up to this many pairs the sign-flip test enumerates every assignment (2^16 = 65,536)
EXACT_MAX = 16


def value_at_level(kl: Sequence[float], value: Sequence[float], level: float) -> tuple[float, bool]:
    """``(value, reached)`` where ``kl`` (in step order) first reaches ``level``: interpolated linearly between the
    point before and the first point with ``kl >= level``; the first point's value when that is the first point.
    Never reached: the last point's value (carried forward) and False. NaN points are skipped."""
    pts = [(float(k), float(v)) for k, v in zip(kl, value, strict=True)
           if not (math.isnan(float(k)) or math.isnan(float(v)))]
    if not pts:
        return (math.nan, False)
    for i, (k, v) in enumerate(pts):
        if k >= level:
            if i == 0:
                return (v, True)
            k0, v0 = pts[i - 1]
            return (v0 + (v - v0) * (level - k0) / (k - k0), True)
    return (pts[-1][1], False)


def value_at_step(steps: Sequence[float], value: Sequence[float], step: float) -> tuple[float, bool]:
    """``(value, reached)`` at fine-tuning step ``step``, interpolated between the tracked steps around it; a run
    that stopped earlier keeps its last value (reached False)."""
    return value_at_level(steps, value, step)


def levels_table(tracking: pd.DataFrame, levels: Sequence[float], kl_columns: Sequence[str],
                 value: str) -> pd.DataFrame:
    """One row per fine-tuning run, KL column and level: the run's identity (:data:`RUN_KEYS`, ``algorithm``,
    ``lambda``), ``kl`` (the column), ``level``, ``value`` (:func:`value_at_level` of column ``value``),
    ``reached`` and ``kl_max`` (the largest KL the run was tracked at)."""
    missing = [c for c in (*RUN_KEYS, "step", value, *kl_columns) if c not in tracking.columns]
    if missing:
        raise ValueError(f"the tracking table has no column(s) {', '.join(missing)}")
    rows = []
    for key, run in tracking.sort_values("step").groupby(list(RUN_KEYS), sort=True, dropna=False):
        ident = dict(zip(RUN_KEYS, key, strict=True))
        ident.update(algorithm=run["algorithm"].iloc[0] if "algorithm" in run else "",
                     **{"lambda": run["lambda"].iloc[0] if "lambda" in run else math.nan})
        for col in kl_columns:
            for level in levels:
                v, reached = value_at_level(run[col], run[value], float(level))
                rows.append({**ident, "kl": col, "level": float(level), "value": v, "reached": reached,
                             "kl_max": float(run[col].max())})
    return pd.DataFrame(rows)


def paired(points: pd.DataFrame, reference: str = "grpo", by: Sequence[str] = ("kl", "level")) -> pd.DataFrame:
    """Each run's ``value`` minus the ``reference`` run's, matched on experiment, RL seed, setting, fine-tuning
    seed and ``by``: one row per pair with ``diff``, ``value``, ``value_ref``, ``reached`` and ``reached_ref``.
    A run with no reference partner (that seed of GRPO missing) is left out, and so counted by no pair."""
    keys = ["track", "rl_seed", "setting", "ft_seed", *by]
    ref = points[points["run"] == reference][[*keys, "value", "reached"]]
    if ref.empty:
        raise ValueError(f"no run {reference!r} to compare with (runs: {', '.join(sorted(set(points['run'])))})")
    arms = points[points["run"] != reference]
    out = arms.merge(ref, on=keys, suffixes=("", "_ref"), how="inner")
    out["diff"] = out["value"] - out["value_ref"]
    return out


def sign_flip_test(diffs: Sequence[float], *, n_draws: int = 65536, seed: int = 0) -> float:
    """Two-sided p-value of the paired sign-flip (randomisation) test of mean 0: the fraction of sign assignments
    of ``diffs`` whose mean is at least as far from 0 as the observed one. Exact (all 2^n assignments, the observed
    one among them) for n <= :data:`EXACT_MAX`, else ``n_draws`` random ones plus the observed. NaN for no pair;
    1.0 when every difference is 0."""
    xs = np.asarray([float(d) for d in diffs if not math.isnan(float(d))], dtype=np.float64)
    if xs.size == 0:
        return math.nan
    observed = abs(xs.sum())
    tol = 1e-12 * max(1.0, float(np.abs(xs).sum()))
    if xs.size <= EXACT_MAX:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=xs.size)))
        extreme = np.abs(signs @ xs) >= observed - tol
        return float(extreme.mean())
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_draws, xs.size))
    extreme = int((np.abs(signs @ xs) >= observed - tol).sum())
    return (extreme + 1) / (n_draws + 1)


def summarise(diffs: Sequence[float], *, n_boot: int = 10000, seed: int = 0) -> dict:
    """``{"n", "mean_diff", "ci_low", "ci_high", "p_value"}`` of paired differences (NaNs dropped)."""
    xs = [float(d) for d in diffs if not math.isnan(float(d))]
    lo, hi = bootstrap_ci(xs, n_boot=n_boot, seed=seed)
    return {"n": len(xs), "mean_diff": sum(xs) / len(xs) if xs else math.nan, "ci_low": lo, "ci_high": hi,
            "p_value": sign_flip_test(xs, seed=seed)}
