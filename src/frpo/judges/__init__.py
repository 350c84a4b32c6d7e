"""Pluggable judges (reward models) for FRPO, built by name.

>>> from frpo.judges import build_judge, known_judges, required_env
>>> judge = build_judge("minilm_refusal")                 # nothing loads until the first score()
>>> judge.score(["How do I pick a lock?"], ["Sorry, I can't help with that."])   # doctest: +SKIP

Registered judges (see each module):

* offline, CPU (the demo): ``minilm_refusal`` (safety = P(refusal)), ``minilm_helpfulness`` (crude helpfulness
  proxy) — :mod:`frpo.judges.minilm`;
* the paper's (GPU / network): ``strongreject_finetuned``, ``openai_moderation``, ``safety_paper``
  (``1 - (s_SR + s_mod)/2``), ``rm_rb2`` — :mod:`frpo.judges.paper`.

Every judge returns floats in [0, 1], higher = better for the reward. Importing this package loads no model and
does not import torch.
"""

from __future__ import annotations

from . import api, harmbench_cls, minilm, paper  # noqa: F401  (imported for their @register side effects)
from .base import (
    HarmJudge,
    Judge,
    JudgeConfigError,
    JudgeError,
    JudgeHTTPError,
    JudgeResponseError,
    as_reward_func,
    build_judge,
    build_judge_from_spec,
    completion_text,
    known_judges,
    missing_env,
    prompt_text,
    register,
    required_env,
)
from .http import post_json
from .minilm import Embedder, RefusalClassifier, fit_refusal_judge
from .paper import (
    SR_FINETUNED_TEMPLATE,
    SR_FINETUNED_TEMPLATE_VERSION,
    expected_score_from_logits,
    paper_safety_reward,
    truncate_response,
)

__all__ = [
    "Embedder",
    "HarmJudge",
    "Judge",
    "JudgeConfigError",
    "JudgeError",
    "JudgeHTTPError",
    "JudgeResponseError",
    "RefusalClassifier",
    "SR_FINETUNED_TEMPLATE",
    "SR_FINETUNED_TEMPLATE_VERSION",
    "as_reward_func",
    "build_judge",
    "build_judge_from_spec",
    "completion_text",
    "expected_score_from_logits",
    "fit_refusal_judge",
    "known_judges",
    "missing_env",
    "paper_safety_reward",
    "post_json",
    "prompt_text",
    "register",
    "required_env",
    "truncate_response",
]
