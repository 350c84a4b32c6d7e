"""The judge interface and the registry that builds judges by name.

A *judge* (reward model) maps ``(prompt, response)`` pairs to floats in ``[0, 1]`` where **higher is better for
the reward** (safer, more helpful). Judges whose native output is a harmfulness score (StrongREJECT, OpenAI
moderation) also expose it through :class:`HarmJudge.harm`; their ``score`` is ``1 - harm``.

Judges are registered by name with :func:`register` and built with :func:`build_judge`, so a config can say
``judge: minilm_refusal`` and the trainer never imports a model class. Building a judge must be cheap: models load
lazily on the first ``score()`` call, and importing this package imports neither torch nor transformers.

:func:`required_env` names the environment variables a judge needs (e.g. ``OPENAI_API_KEY``), so a workflow can
fail when the DAG starts instead of hours later inside a reward function.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


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


_REGISTRY: dict[str, JudgeSpec] = {}


def register(name: str, *, env: EnvSpec = ()) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    """Decorator registering a judge class (or factory) under ``name``.

    ``env`` is either the list of environment variables the judge always needs, or a callable
    ``env(**options) -> list[str]`` when that depends on the options (e.g. ``api_key_env``).
    """

    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"judge {name!r} is already registered (by {_REGISTRY[name].factory!r})")
        doc = (factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else ""
        _REGISTRY[name] = JudgeSpec(name=name, factory=factory, env=env, doc=doc)
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
