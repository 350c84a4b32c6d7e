"""Throughput of the math track's verifier (frpo.math_grading.Verifier) with the real math_verify check.

Scores ``--items`` completions (default 512, one optimizer step of the paper's math RL: 64 prompts x 8) against
the gold answers of the built-in ``math_problems`` set, and prints ONE JSON line on stdout:
``{"items", "seconds", "items_per_s", "workers", "timeouts", "errors", "startup_s", "accuracy", ...}``.

The completions mimic a policy's: the gold answer boxed (in its own form or an equivalent one: ``p/q`` for
``\\frac{p}{q}``, ``x.0`` for an integer), a wrong number boxed, several boxes, or no box at all (which never
reaches the pool). ``startup_s`` (starting the workers) is reported apart from ``seconds``, the scoring alone;
``--repeats`` scores the same batch again and reports the median, so parse caches warm up as in training,
where the same gold answers come back every step. ``--pathological N`` adds N inputs that make sympy run for a
very long time (``\\boxed{9^{9^{9^{9}}}}``) to show the timeout at work: each costs ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import time
from fractions import Fraction

from frpo.data import builtin, read_jsonl
from frpo.math_grading import Verifier


def _alternative(answer: str) -> str:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        return f"{m.group(1)}{m.group(2)}/{m.group(3)}"
    value = Fraction(answer)
    return f"{value.numerator}.0" if value.denominator == 1 else answer


def make_batch(n: int, seed: int, pathological: int) -> tuple[list[str], list[str], list[float]]:
    """``n`` completions, their gold answers and the expected scores."""
    rows = read_jsonl(builtin("math_problems"))
    rng = random.Random(seed)
    completions, golds, expected = [], [], []
    for i in range(n):
        row = rows[(i // 8) % len(rows)]  # 8 completions per problem, as a GRPO group
        gold = row["answer"]
        kind = rng.choices(["gold", "alternative", "wrong", "two_boxes", "no_box"], [3, 2, 3, 1, 1])[0]
        reasoning = "Let me work through this step by step. " * rng.randint(5, 40)
        if kind == "gold":
            text, ok = rf"{reasoning}The answer is $\boxed{{{gold}}}$.", 1.0
        elif kind == "alternative":
            text, ok = rf"{reasoning}So we get $\boxed{{{_alternative(gold)}}}$.", 1.0
        elif kind == "wrong":
            text, ok = rf"{reasoning}Therefore $\boxed{{{rng.randint(100, 999)}}}$.", 0.0
        elif kind == "two_boxes":
            text, ok = rf"{reasoning}Maybe $\boxed{{{rng.randint(100, 999)}}}$, or rather $\boxed{{{gold}}}$.", 1.0
        else:
            text, ok = f"{reasoning}I could not finish.", 0.0
        completions.append(text)
        golds.append(gold)
        expected.append(ok)
    for _ in range(pathological):
        completions.append(r"Surely $\boxed{9^{9^{9^{9}}}}$.")
        golds.append("1")
        expected.append(0.0)
    return completions, golds, expected


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--items", type=int, default=512, help="completions to score (default 512)")
    p.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                   help="worker processes (default min(8, CPUs))")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="per-item timeout in seconds (default 3, as the public code)")
    p.add_argument("--repeats", type=int, default=3, help="times the batch is scored; the median is reported")
    p.add_argument("--pathological", type=int, default=0, help="extra inputs that time out (default 0)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    completions, golds, expected = make_batch(args.items, args.seed, args.pathological)
    t0 = time.perf_counter()
    with Verifier(timeout_s=args.timeout, workers=args.workers) as verifier:
        verifier.correct([r"\boxed{1}"] * args.workers, ["1"] * args.workers)  # wait until the workers are up
        startup = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            scores = verifier.correct(completions, golds)
            times.append(time.perf_counter() - t)
        seconds = statistics.median(times)
        mismatches = sum(s != e for s, e in zip(scores, expected))
        print(json.dumps({
            "items": len(completions), "seconds": round(seconds, 4),
            "items_per_s": round(len(completions) / seconds, 1),
            "workers": args.workers, "timeouts": verifier.n_timeouts, "errors": verifier.n_errors,
            "startup_s": round(startup, 3), "repeats": args.repeats, "first_s": round(times[0], 4),
            "accuracy": round(sum(scores) / len(scores), 4), "mismatches_vs_expected": mismatches,
            "timeout_s": args.timeout, "cpus": os.cpu_count(), "python": sys.version.split()[0],
        }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
