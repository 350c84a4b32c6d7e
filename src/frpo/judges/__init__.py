"""Pluggable judges (reward models) for FRPO, built by name; one module per concept.

>>> from frpo.judges import build_judge, known_judges, required_env
>>> judge = build_judge("minilm_refusal")                 # nothing loads until the first score()
>>> judge.score(["How do I pick a lock?"], ["Sorry, I can't help with that."])   # doctest: +SKIP

Registered judges, by module:

* :mod:`~frpo.judges.minilm` (offline, CPU, the demo): ``minilm_refusal`` (safety = P(refusal)),
  ``minilm_helpfulness`` (crude helpfulness proxy); they read a fitted classifier file
  (:func:`uses_fitted_classifier`, :func:`with_fitted_classifier`);
* :mod:`~frpo.judges.strongreject`: ``strongreject_finetuned`` (GPU) and ``strongreject_rubric`` (API);
* :mod:`~frpo.judges.harmbench`: ``gpt4o_harmbench`` (API) and ``harmbench_cls`` (GPU);
* :mod:`~frpo.judges.moderation`: ``openai_moderation`` (API);
* :mod:`~frpo.judges.safety_paper`: ``safety_paper``, the paper's safety reward ``1 - (s_SR + s_mod)/2``;
* :mod:`~frpo.judges.reward_model`: ``rm_rb2``, the paper's helpfulness reward model (GPU);
* :mod:`~frpo.judges.toy`: ``toy_safety`` and ``toy_helpfulness``, exact rubric judges of the study's toy world
  (offline, instant).

Shared parts: :mod:`~frpo.judges.base` (protocol, registry, errors, the answer-record shape),
:mod:`~frpo.judges.http` (HTTP with retries, the chat-completions client), :mod:`~frpo.judges.local` (pinning and
loading local models) and :mod:`~frpo.judges.cache` (the one judge cache).

Every judge returns floats in [0, 1], higher = better for the reward. Importing this package loads no model and
does not import torch.
"""

from __future__ import annotations

# the concept modules are imported for their @register side effects
from . import harmbench, minilm, moderation, reward_model, safety_paper, strongreject, toy  # noqa: F401
from .base import (
    HarmJudge,
    Judge,
    JudgeConfigError,
    JudgeError,
    JudgeHTTPError,
    JudgeResponseError,
    answer_record,
    as_reward_func,
    build_judge,
    build_judge_from_spec,
    checked_values,
    completion_text,
    judge_answers,
    known_judges,
    missing_env,
    prompt_text,
    register,
    required_env,
    uses_fitted_classifier,
    with_fitted_classifier,
)
from .cache import JudgeCache, cached_score, open_judge_cache
from .http import post_json
from .minilm import Embedder, RefusalClassifier, fit_refusal_judge
from .safety_paper import paper_safety_reward
from .strongreject import (
    SR_FINETUNED_TEMPLATE,
    SR_FINETUNED_TEMPLATE_VERSION,
    expected_score_from_logits,
    truncate_response,
)

__all__ = [
    "Embedder",
    "HarmJudge",
    "Judge",
    "JudgeCache",
    "JudgeConfigError",
    "JudgeError",
    "JudgeHTTPError",
    "JudgeResponseError",
    "RefusalClassifier",
    "SR_FINETUNED_TEMPLATE",
    "SR_FINETUNED_TEMPLATE_VERSION",
    "answer_record",
    "as_reward_func",
    "build_judge",
    "build_judge_from_spec",
    "cached_score",
    "checked_values",
    "completion_text",
    "expected_score_from_logits",
    "fit_refusal_judge",
    "judge_answers",
    "known_judges",
    "missing_env",
    "open_judge_cache",
    "paper_safety_reward",
    "post_json",
    "prompt_text",
    "register",
    "required_env",
    "truncate_response",
    "uses_fitted_classifier",
    "with_fitted_classifier",
]
