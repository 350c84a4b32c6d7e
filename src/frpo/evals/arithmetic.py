"""Accuracy on held-out GSM8K-like word problems (greedy), the demo's CPU stand-in for GSM8K.

The answer is the last number in the completion (after a ``####`` marker when there is one), compared with the
reference ``final`` value. The problems are the project's templated set (frpo/data/make_arithmetic.py).
"""

from __future__ import annotations

import re

from ..data import read_jsonl, resolve, spread
from ..generation import generate
from ..models import load_causal_lm

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
    rows = read_jsonl(resolve(cfg["data"]["arithmetic"]), required={"question": str, "split": str})
    rows = spread([r for r in rows if r["split"] == "eval"], cfg.get("max_prompts"))
    model, tokenizer = load_causal_lm(model_path, cfg.get("device", "cpu"))
    gen_cfg = cfg["generation"]
    gen = generate(model, tokenizer, [r["question"] for r in rows], max_new_tokens=gen_cfg["max_new_tokens"],
                   do_sample=False, batch_size=gen_cfg.get("batch_size", 16))
    answers = [extract_answer(t) for t in gen.texts]
    correct = [a is not None and abs(a - float(r["final"])) < 1e-6 for a, r in zip(answers, rows)]
    return {
        "metric": "accuracy",
        "value": sum(correct) / len(correct),
        "n": len(rows),
        "dataset": f"{cfg['data']['arithmetic']} split=eval",
        "generation": {"backend": "transformers", "do_sample": False, **gen_cfg},
        "samples": [{"question": r["question"], "response": t, "answer": a, "final": r["final"]}
                    for r, t, a in zip(rows, gen.texts, answers)],
    }
