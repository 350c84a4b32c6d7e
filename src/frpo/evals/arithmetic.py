"""Accuracy on held-out GSM8K-like word problems (greedy), the demo's CPU stand-in for GSM8K.

The answer is the last number in the completion (after a ``####`` marker when there is one), compared with the
reference ``final`` value. The problems are the project's templated set (frpo/data/make_arithmetic.py).
"""

from __future__ import annotations

import re

from ..data import read_jsonl, resolve, spread
from ..io import sha256_file
from .judged import generation_settings, run_generation
from .scoring import mean_result

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str) -> float | None:
    """The final answer of a completion: the number after the last ``####``, else the last number."""
    tail = text.rsplit("####", 1)[-1] if "####" in text else text
    numbers = _NUMBER.findall(tail)
    if not numbers:
        return None
    try:
        return float(numbers[-1 if "####" not in text else 0].replace(",", ""))
    except ValueError:
        return None


def evaluate(model_path, cfg: dict) -> dict:
    """Accuracy of the model at ``model_path`` on the held-out arithmetic problems (module docstring)."""
    path = resolve(cfg["data"]["arithmetic"])
    available = [r for r in read_jsonl(path, required={"question": str, "split": str}) if r["split"] == "eval"]
    rows = spread(available, cfg.get("max_prompts"))
    limit = cfg.get("max_prompts") if len(rows) < len(available) else None  # None: every held-out problem ran
    settings = generation_settings(cfg, {})  # greedy, chat template, the eval's max_new_tokens
    sampler: dict = {}
    texts = run_generation(model_path, cfg, [r["question"] for r in rows], settings, sampler)
    answers = [extract_answer(t) for t in texts]
    correct = [a is not None and abs(a - float(r["final"])) < 1e-6 for a, r in zip(answers, rows)]
    return {
        **mean_result("accuracy", correct, limit=limit),
        "n_malformed": sum(a is None for a in answers),  # no number in the completion
        "dataset": {"path": cfg["data"]["arithmetic"], "sha256": sha256_file(path), "split": "eval"},
        "generation": {**settings, "sampler": sampler},
        "samples": [{"question": r["question"], "response": t, "answer": a, "final": r["final"]}
                    for r, t, a in zip(rows, texts, answers)],
    }
