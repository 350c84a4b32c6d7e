"""The judge interface and the registry that builds judges by name.

A *judge* (reward model) maps ``(prompt, response)`` pairs to floats in ``[0, 1]`` where **higher is better for
the reward** (safer, more helpful). Judges whose native output is a harmfulness score (StrongREJECT, OpenAI
moderation) also expose it through :class:`HarmJudge.harm`; their ``score`` is ``1 - harm``.

Judges are registered by name with :func:`register` and built with :func:`build_judge`, so a config can say
``judge: minilm_refusal`` and the trainer never imports a model class. Building a judge must be cheap: models load
lazily on the first ``score()`` call, and importing this package imports neither torch nor transformers.

:func:`required_env` names the environment variables a judge needs (e.g. ``OPENAI_API_KEY``), so a workflow can
fail when the DAG starts instead of hours later inside a reward function.

**The answer protocol.** Evaluations ask a judge for *answer records* (:func:`judge_answers`), one per pair, all of
one shape (:func:`answer_record`): ``score`` (float in [0, 1], higher = safer, None when malformed), ``harm`` (the
native harmfulness in [0, 1] of a harm-type judge, else None), ``malformed`` (bool), ``error`` (why it is
malformed, else None), ``raw`` (the judge's raw output, when it has one), plus the judge's own parsed fields
(``label``, ``refused``, ...). A judge that can answer malformed (the labelling and rubric judges) returns such
records from ``answers()``; its ``score()`` / ``harm()`` raise :class:`JudgeResponseError` on a malformed one
(:func:`checked_values`). Any other judge's numbers are wrapped by :func:`judge_answers`.

**The demo's fitted classifier.** A judge registered with ``classifier_option`` reads a fitted classifier file
from that option; :func:`uses_fitted_classifier` and :func:`with_fitted_classifier` let a workflow point such a
judge at the file it fitted without knowing which judges those are.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

__all__ = [
    "HarmJudge", "Judge", "JudgeConfigError", "JudgeError", "JudgeHTTPError", "JudgeResponseError",
    "answer_record", "as_reward_func", "build_judge", "build_judge_from_spec", "check_pairs", "check_scores",
    "checked_values", "completion_text", "judge_answers", "known_judges", "missing_env", "prompt_text", "register",
    "required_env", "uses_fitted_classifier", "with_fitted_classifier",
]


class JudgeError(RuntimeError):
    """Base class of the errors raised by judges."""


class JudgeConfigError(JudgeError):
    """A judge cannot run as configured (a missing API key, a missing classifier file, a bad option)."""


class JudgeHTTPError(JudgeError):
    """An HTTP judge call failed for good: a non-retryable status, or every retry was used up."""

    def __init__(self, message: str, *, status: int | None = None, attempts: int = 0):
        super().__init__(message)
        self.status = status
        self.attempts = attempts


class JudgeResponseError(JudgeError):
    """A judge backend answered, but the answer is not what its contract promises (malformed JSON, wrong shape)."""


@runtime_checkable
class Judge(Protocol):
    """What every judge provides.

    ``name`` is the registry name; ``version`` identifies everything that changes the scores (model id and
    revision, template version, classifier file hash), so it can be written next to every reward that is logged.
    """

    name: str
    version: str

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """One float in [0, 1] per pair, higher = better for the reward."""
        ...


@runtime_checkable
class HarmJudge(Judge, Protocol):
    """A judge whose native output is a harmfulness score in [0, 1] (higher = more harmful).

    Its ``score`` is ``1 - harm``.
    """

    def harm(self, prompts: list[str], responses: list[str]) -> list[float]: ...


EnvSpec = Sequence[str] | Callable[..., list[str]]


@dataclass(frozen=True)
class JudgeSpec:
    name: str
    factory: Callable[..., Judge]
    env: EnvSpec
    doc: str
    classifier_option: str | None = None


_REGISTRY: dict[str, JudgeSpec] = {}


def register(name: str, *, env: EnvSpec = (), classifier_option: str | None = None
             ) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    """Decorator registering a judge class (or factory) under ``name``.

    ``env`` is either the list of environment variables the judge always needs, or a callable
    ``env(**options) -> list[str]`` when that depends on the options (e.g. ``api_key_env``). ``classifier_option``
    names the option through which the judge reads a fitted classifier file (the demo's MiniLM judges), if any.
    """

    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"judge {name!r} is already registered (by {_REGISTRY[name].factory!r})")
        doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        _REGISTRY[name] = JudgeSpec(name=name, factory=factory, env=env, doc=doc,
                                    classifier_option=classifier_option)
        return factory

    return deco


def known_judges() -> list[str]:
    """The registered judge names, sorted."""
    return sorted(_REGISTRY)


def _spec(name: str) -> JudgeSpec:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown judge {name!r}; known judges: {', '.join(known_judges())}") from None


def build_judge(name: str, **options: Any) -> Judge:
    """Build the judge registered as ``name`` with ``options`` (its constructor keywords). Loads no model."""
    return _spec(name).factory(**options)


def build_judge_from_spec(spec: dict) -> Judge:
    """Build the judge a config entry describes: ``{"name": ..., "options": {...}}`` (``options`` optional)."""
    return build_judge(spec["name"], **spec.get("options", {}))


def required_env(name: str, **options: Any) -> list[str]:
    """Environment variables the judge ``name`` needs with these options (empty if none)."""
    env = _spec(name).env
    return list(env(**options)) if callable(env) else list(env)


def missing_env(spec: dict) -> list[str]:
    """The environment variables the judge a config entry describes (``{"name": ..., "options": {...}}``) needs
    and that are not set, in :func:`required_env`'s order."""
    return [v for v in required_env(spec["name"], **(spec.get("options") or {})) if not os.environ.get(v)]


def _as_spec(spec: str | dict) -> dict:
    return {"name": spec} if isinstance(spec, str) else dict(spec)


def uses_fitted_classifier(spec: str | dict) -> bool:
    """Whether the judge a config entry describes (a name, or ``{"name", "options"}``) reads a fitted classifier
    file (it was registered with ``classifier_option``). False for an unknown name: building it reports that."""
    entry = _REGISTRY.get(_as_spec(spec)["name"])
    return entry is not None and entry.classifier_option is not None


def with_fitted_classifier(spec: str | dict, path: str | os.PathLike | None) -> dict:
    """The config entry ``spec`` as a dict (a copy), pointed at the classifier file ``path`` when its judge reads
    one (:func:`uses_fitted_classifier`); other judges' entries come back unchanged."""
    out = copy.deepcopy(_as_spec(spec))
    if uses_fitted_classifier(out):
        option = _REGISTRY[out["name"]].classifier_option
        out["options"] = {**(out.get("options") or {}), option: None if path is None else str(path)}
    return out


def check_pairs(prompts: Sequence[str], responses: Sequence[str]) -> None:
    """Validate the ``score()`` arguments: two lists of strings of the same length."""
    if len(prompts) != len(responses):
        raise ValueError(f"prompts and responses differ in length: {len(prompts)} != {len(responses)}")
    for what, seq in (("prompts", prompts), ("responses", responses)):
        for i, s in enumerate(seq):
            if not isinstance(s, str):
                raise TypeError(f"{what}[{i}] is {type(s).__name__}, expected str")


def check_scores(scores: Sequence[float], n: int, judge: str) -> list[float]:
    """Return ``scores`` as Python floats after checking their count and that each is a number in [0, 1].

    Values a rounding hair outside [0, 1] (|excess| <= 1e-6) are clipped; anything else is a bug and raises.
    """
    out = [float(s) for s in scores]
    if len(out) != n:
        raise JudgeResponseError(f"{judge}: expected {n} scores, got {len(out)}")
    for i, s in enumerate(out):
        if math.isnan(s) or s < -1e-6 or s > 1 + 1e-6:
            raise JudgeResponseError(f"{judge}: score {i} = {s!r} is not in [0, 1]")
        out[i] = min(1.0, max(0.0, s))
    return out


def answer_record(*, score: float | None = None, harm: float | None = None, raw: Any = None,
                  error: str | None = None, **fields: Any) -> dict:
    """One judge answer in the shared shape (module docstring): malformed exactly when ``error`` is given, and then
    without a ``score`` or ``harm``. ``fields`` are the judge's own parsed fields."""
    malformed = error is not None
    return {"score": None if malformed else score, "harm": None if malformed else harm, "malformed": malformed,
            "error": error, "raw": raw, **fields}


def checked_values(judge: str, records: Sequence[dict], field: str) -> list[float]:
    """``record[field]`` of each answer record as a float; :class:`JudgeResponseError` naming the first malformed
    one (how ``score()`` / ``harm()`` of a judge with ``answers()`` refuse to turn a malformed answer into a
    number)."""
    bad = [i for i, r in enumerate(records) if r.get("malformed")]
    if bad:
        i = bad[0]
        raise JudgeResponseError(f"{judge}: {len(bad)} malformed judge answer(s); first (pair {i}): "
                                 f"{records[i].get('error')}; raw: {str(records[i].get('raw'))[:300]!r}")
    return [float(r[field]) for r in records]


def judge_answers(judge: Any, prompts: list[str], responses: list[str]) -> list[dict]:
    """Ask ``judge`` (no cache) for one answer record per pair. A judge with ``answers()`` (the labelling and
    rubric judges) returns its records; any other gives ``score()``'s numbers, or ``harm()``'s for a harm-type
    judge (then the one call made, ``score = 1 - harm``), as records of the same shape."""
    if callable(getattr(judge, "answers", None)):
        out = list(judge.answers(prompts, responses))
    elif callable(getattr(judge, "harm", None)):
        out = [answer_record(score=1.0 - float(h), harm=float(h)) for h in judge.harm(prompts, responses)]
    else:
        out = [answer_record(score=float(s)) for s in judge.score(prompts, responses)]
    if len(out) != len(prompts):
        raise RuntimeError(f"judge {judge.name!r} returned {len(out)} answers for {len(prompts)} pairs")
    return out


def prompt_text(prompt: Any) -> str:
    """The text a judge sees for a prompt in TRL's formats: a string as is; a conversation (list of
    ``{"role", "content"}``) -> its last user message (the paper judges the user content only)."""
    if isinstance(prompt, str):
        return prompt
    users = [m.get("content", "") for m in prompt if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise ValueError(f"conversation has no user message: {str(prompt)[:200]!r}")
    return str(users[-1])


def completion_text(completion: Any) -> str:
    """A completion in TRL's formats: a string as is; a list of messages -> its assistant contents joined."""
    if isinstance(completion, str):
        return completion
    return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict)
                   and m.get("role", "assistant") == "assistant")


def as_reward_func(judge: Judge, name: str | None = None) -> Callable[..., list[float]]:
    """Wrap ``judge`` as a TRL-style reward function ``f(prompts, completions, **kwargs) -> list[float]``."""

    def reward(prompts: Sequence[Any], completions: Sequence[Any], **kwargs: Any) -> list[float]:
        return judge.score([prompt_text(p) for p in prompts], [completion_text(c) for c in completions])

    reward.__name__ = name or judge.name
    reward.__qualname__ = reward.__name__
    return reward
