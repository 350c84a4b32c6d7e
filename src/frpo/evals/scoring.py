"""Scoring pieces shared by the benchmark modules: the top-level record of a mean-over-items metric (value, n,
limit, bootstrap interval) and EvalPlus pass@1."""

from __future__ import annotations

import math

from ..stats import bootstrap_ci

__all__ = ["mean_result", "pass_at_1"]


def mean_result(metric: str, scores, *, limit, value: float | None = None) -> dict:
    """The keys every result JSON records at top level for a metric that is a mean over items.

    ``{"metric", "value", "n", "n_scored", "limit", "ci95"}``: ``value`` is the mean of the per-item ``scores``
    (NaN when there is none, and it stays NaN in the JSON), ``n`` and ``n_scored`` the number of items scored,
    ``limit`` the cap on items (None when the full set ran) and ``ci95`` the percentile bootstrap interval of the mean
    over items (:func:`frpo.stats.bootstrap_ci`). ``value``, when given (a library's own aggregate), must equal that
    mean: a mismatch means the per-item scores are not what the value averages.
    """
    xs = [float(s) for s in scores]
    mean = sum(xs) / len(xs) if xs else math.nan
    if value is not None and xs and not math.isclose(float(value), mean, rel_tol=1e-9, abs_tol=1e-9):
        raise ValueError(f"{metric}: the {len(xs)} per-item scores average to {mean}, not to the reported {value}")
    return {"metric": metric, "value": mean, "n": len(xs), "n_scored": len(xs), "limit": limit,
            "ci95": list(bootstrap_ci(xs))}


def pass_at_1(eval_results: dict) -> dict:
    """pass@1 from the ``eval`` section of EvalPlus's result JSON.

    ``eval_results`` maps task id -> list of per-sample records with ``base_status`` and ``plus_status``
    (``"pass"``, ``"fail"`` or ``"timeout"``). The base score counts base tests only (Table 1's HumanEval column);
    the plus score counts a sample only when base and plus tests both pass (EvalPlus's MBPP+/HumanEval+ number).
    With several samples per task the per-task pass rate is averaged (the unbiased estimator at k=1). Returns
    ``{"base": ..., "plus": ..., "n_tasks": ..., "per_task": {task: {"base": rate, "plus": rate}}}``.
    """
    if not eval_results:
        raise ValueError("no EvalPlus results to score")
    per_task = {}
    for task_id, samples in eval_results.items():
        if not samples:
            raise ValueError(f"task {task_id} has no evaluated sample")
        b = [s.get("base_status") == "pass" for s in samples]
        p = [s.get("base_status") == "pass" and s.get("plus_status") == "pass" for s in samples]
        per_task[task_id] = {"base": sum(b) / len(b), "plus": sum(p) / len(p)}
    n = len(per_task)
    return {"base": sum(t["base"] for t in per_task.values()) / n, "plus": sum(t["plus"] for t in per_task.values()) / n,
            "n_tasks": n, "per_task": per_task}
