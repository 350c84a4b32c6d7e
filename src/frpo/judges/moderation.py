"""``openai_moderation``: the paper's moderation component s_mod of the safety reward.

``{base_url}/moderations`` with a *dated* model snapshot (default ``omni-moderation-2024-09-26``, not the moving
``omni-moderation-latest`` the paper used; spec §5 item 10); ``harm`` (s_mod) = the max category score of the
**response** (the prompt is not sent), ``score`` = 1 - harm. Calls are retried with exponential backoff
(``retries``, ``backoff``, ``max_backoff``; spec §5 item 12), then raise :class:`JudgeHTTPError`; an answer of the
wrong shape raises :class:`JudgeResponseError`. Answers go through the one judge cache (:mod:`frpo.judges.cache`):
in memory by default, on disk with ``cache_dir=``, none with ``cache=False``.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from .base import JudgeResponseError, check_pairs, check_scores, register
from .cache import JudgeCache, cached_score
from .http import api_key_env, openai_base_url, post_json, resolve_api_key

__all__ = ["MODERATION_MODEL", "OpenAIModerationJudge", "parse_moderation_response"]

MODERATION_MODEL = "omni-moderation-2024-09-26"


def parse_moderation_response(doc: Any, n: int) -> list[float]:
    """Max category score per input from an OpenAI ``/moderations`` answer; :class:`JudgeResponseError` if the
    answer does not have ``n`` results each with a non-empty ``category_scores`` of numbers in [0, 1]."""
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise JudgeResponseError(f"moderation answer has no 'results' list: {str(doc)[:200]!r}")
    results = doc["results"]
    if len(results) != n:
        raise JudgeResponseError(f"moderation answer has {len(results)} results for {n} inputs")
    out = []
    for i, r in enumerate(results):
        cs = r.get("category_scores") if isinstance(r, dict) else None
        if not isinstance(cs, dict) or not cs:
            raise JudgeResponseError(f"moderation result {i} has no category_scores: {str(r)[:200]!r}")
        vals = list(cs.values())
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in vals):
            raise JudgeResponseError(f"moderation result {i} has non-numeric or out-of-range scores: {cs!r}")
        out.append(float(max(vals)))
    return out


@register("openai_moderation", env=api_key_env)
class OpenAIModerationJudge:
    """OpenAI-compatible moderation: ``harm`` = max category score of the response, ``score`` = 1 - harm."""

    name = "openai_moderation"

    def __init__(
        self,
        model: str = MODERATION_MODEL,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        batch_size: int = 32,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 60.0,
        cache: bool = True,
        cache_dir: str | Path | None = None,
    ):
        if model.endswith("-latest"):
            import warnings

            warnings.warn(
                f"moderation model {model!r} is a moving alias; scores may change under you", stacklevel=2
            )
        self.model = model
        self.base_url = openai_base_url(base_url)
        self.api_key_env = api_key_env
        self._api_key = api_key
        self.batch_size = int(batch_size)
        self.retries, self.backoff, self.max_backoff, self.timeout = int(retries), backoff, max_backoff, timeout
        # the one judge cache (frpo.judges.cache): in memory by default, on disk in ``cache_dir``, none if not cache
        self._cache = JudgeCache(cache_dir) if cache else None
        self._lock = threading.Lock()
        self.calls = 0
        self.last_reported_model: str | None = None

    @property
    def version(self) -> str:
        return f"{self.name}:{self.model}:max_category_score:base_url={self.base_url}"

    def _key(self) -> str:
        return resolve_api_key(self.name, self._api_key, self.api_key_env,
                               f". The paper's safety reward calls {self.base_url}/moderations.")

    def _request(self, texts: list[str]) -> list[float]:
        doc = post_json(
            f"{self.base_url}/moderations",
            {"model": self.model, "input": texts},
            {"Authorization": f"Bearer {self._key()}"},
            retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff, timeout=self.timeout,
        )
        self.calls += 1
        if isinstance(doc, dict):
            self.last_reported_model = doc.get("model")
        return parse_moderation_response(doc, len(texts))

    def _uncached_harm(self, prompts: list[str], responses: list[str]) -> list[float]:
        return self._request(list(responses))

    def harm(self, prompts: list[str], responses: list[str]) -> list[float]:
        """s_mod in [0, 1] per pair: max category score of the **response** only (the prompt is not sent), each
        distinct response asked once, in requests of ``batch_size``, through the judge cache."""
        check_pairs(prompts, responses)
        if not responses:
            return []
        self._key()  # fail before any work if the key is missing
        with self._lock:
            # the prompt is not part of the request, so it is not part of the key either
            answers = cached_score(_Requests(self), [""] * len(responses), responses, self._cache,
                                   chunk_size=self.batch_size)
        return check_scores([a["harm"] for a in answers], len(responses), self.name)

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [1.0 - h for h in self.harm(prompts, responses)]


class _Requests:
    """The moderation endpoint without a cache, as :func:`cached_score` asks a judge: same name and version."""

    def __init__(self, judge: OpenAIModerationJudge):
        self.name, self.version, self.harm = judge.name, judge.version, judge._uncached_harm
