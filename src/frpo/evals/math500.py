"""`math500` through lm-eval (see lm_eval_tasks.py for the task, the metric and the config keys)."""

from __future__ import annotations

from .lm_eval_tasks import run_lm_eval


def evaluate(model_path, cfg: dict) -> dict:
    return run_lm_eval("math500", model_path, cfg)
