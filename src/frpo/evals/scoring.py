"""Pure scoring helpers shared by the benchmark modules: majority voting, EvalPlus pass@1, math_verify."""

from __future__ import annotations

from collections import Counter

__all__ = ["majority_vote", "math_verify_available", "math_verify_score", "pass_at_1"]


def majority_vote(answers, k: int | None = None):
    """The most frequent answer among the first ``k`` (all when None); ``None`` answers (unparsed) do not vote.

    Ties go to the answer that appears first among the candidates (the order lm-eval's ``majority_vote``
    filter uses too, through ``Counter.most_common``). No valid answer at all gives ``None``.
    """
    votes = [a for a in (list(answers)[:k] if k is not None else list(answers)) if a is not None]
    if not votes:
        return None
    counts = Counter(votes)
    best = max(counts.values())
    return next(a for a in votes if counts[a] == best)


def pass_at_1(eval_results: dict) -> dict:
    """pass@1 of greedy EvalPlus samples from the ``eval`` section of its result JSON.

    ``eval_results`` maps task id -> list of per-sample records with ``base_status`` and ``plus_status``
    (``"pass"``, ``"fail"`` or ``"timeout"``). The plus score counts a sample only when both pass; with several
    samples per task the per-task pass rate is averaged (the unbiased estimator at k=1). Returns
    ``{"base": ..., "plus": ..., "n_tasks": ..., "per_task": {task: {"base": bool, "plus": bool}}}``.
    """
    if not eval_results:
        raise ValueError("no EvalPlus results to score")
    base, plus, per_task = 0.0, 0.0, {}
    for task_id, samples in eval_results.items():
        if not samples:
            raise ValueError(f"task {task_id} has no evaluated sample")
        b = [s.get("base_status") == "pass" for s in samples]
        p = [s.get("base_status") == "pass" and s.get("plus_status") == "pass" for s in samples]
        base += sum(b) / len(b)
        plus += sum(p) / len(p)
        per_task[task_id] = {"base": all(b), "plus": all(p)}
    n = len(eval_results)
    return {"base": base / n, "plus": plus / n, "n_tasks": n, "per_task": per_task}


def math_verify_available() -> bool:
    try:
        import math_verify  # noqa: F401
    except ImportError:
        return False
    return True


def math_verify_score(prediction: str, gold: str) -> int:
    """1 when ``prediction`` (a full generation) is mathematically equivalent to ``gold`` (a full solution or a
    bare answer), else 0, exactly as lm-eval's ``minerva_math`` ``math_verify`` metric computes it:
    ``verify(gold=parse(gold), target=parse(prediction))``. Raises ImportError without math-verify."""
    from math_verify import parse, verify

    return 1 if verify(gold=parse(gold), target=parse(prediction)) else 0
