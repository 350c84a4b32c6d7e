"""What the API judges share: one small JSON-over-HTTP helper with bounded retries and exponential backoff
(:func:`post_json`), the OpenAI-compatible settings (base URL, key variable, key lookup), and :class:`ChatJudge`,
the chat-completions client of the GPT-4o HarmBench and StrongREJECT rubric judges.

Standard library only (``urllib.request``): no new dependency. What is retried: connection errors, timeouts and
the statuses in ``RETRY_STATUSES`` (429 and 5xx). What is not: other 4xx (a bad request or key will not get better)
and a 2xx answer whose body is not JSON (a contract problem: :class:`JudgeResponseError`). After the last attempt
a :class:`JudgeHTTPError` says how many attempts were made and what the last failure was. The API key is never
put in an error message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .base import JudgeConfigError, JudgeHTTPError, JudgeResponseError, answer_record, check_pairs, checked_values

__all__ = ["DEFAULT_OPENAI_BASE_URL", "GPT4O_MODEL", "RETRY_STATUSES", "ChatJudge", "api_key_env", "backoff_delay",
           "openai_base_url", "post_json", "resolve_api_key"]

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
DEFAULT_OPENAI_BASE_URL = "https://api.openai.com/v1"
#: the chat judges' default model: a pinned snapshot (FRPO's StrongREJECT judge used the moving chatgpt-4o-latest)
GPT4O_MODEL = "gpt-4o-2024-11-20"
_DATED = re.compile(r"\d{4}-\d{2}-\d{2}|-\d{4}$")


# The settings every OpenAI-compatible judge shares (chat completions, moderations).


def openai_base_url(base_url: str | None = None) -> str:
    """``base_url``, else ``$OPENAI_BASE_URL``, else OpenAI's API; without a trailing slash."""
    return (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_OPENAI_BASE_URL).rstrip("/")


def api_key_env(**options: Any) -> list[str]:
    """The environment variable an OpenAI-compatible judge needs (none when ``api_key`` is given): the ``env``
    function of its registration, so a missing key fails at DAG start."""
    if options.get("api_key") is not None:
        return []
    return [options.get("api_key_env", "OPENAI_API_KEY")]


def resolve_api_key(judge: str, api_key: str | None, env_var: str, context: str) -> str:
    """``api_key``, else the value of ``env_var``; :class:`JudgeConfigError` naming the variable when neither is set
    (``context`` ends the message: what the judge would call)."""
    key = api_key if api_key is not None else os.environ.get(env_var)
    if not key:
        raise JudgeConfigError(f"{judge}: no API key: set the environment variable {env_var} (or pass api_key=...)"
                               f"{context}")
    return key


def backoff_delay(attempt: int, backoff: float, max_backoff: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (0-based): ``backoff * 2**attempt``, capped."""
    return max(0.0, min(max_backoff, backoff * (2.0**attempt)))


def _retry_after(headers: Any) -> float | None:
    value = headers.get("Retry-After") if headers is not None else None
    try:
        return float(value) if value is not None else None
    except ValueError:  # an HTTP date: ignore and use our own backoff
        return None


def post_json(
    url: str,
    payload: Any,
    headers: dict[str, str] | None = None,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    max_backoff: float = 30.0,
    timeout: float = 60.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Any:
    """POST ``payload`` as JSON to ``url`` and return the decoded JSON answer.

    ``retries`` is the number of *re*-tries: at most ``retries + 1`` attempts. The wait after failed attempt ``k``
    is ``min(max_backoff, backoff * 2**k)`` seconds, or the server's ``Retry-After`` if it sent one (also capped).
    """
    if retries < 0 or backoff < 0 or max_backoff < 0 or timeout <= 0:
        raise ValueError("retries, backoff and max_backoff must be >= 0 and timeout > 0")
    body = json.dumps(payload).encode("utf-8")
    hdrs = {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}
    last = "no attempt made"
    last_status: int | None = None
    attempts = retries + 1
    for attempt in range(attempts):
        wait: float | None = None
        req = urllib.request.Request(url, data=body, headers=hdrs, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw = resp.read()
                status = resp.status
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode("utf-8", "replace")
            last_status = e.code
            last = f"HTTP {e.code} {e.reason}: {detail}"
            if e.code not in RETRY_STATUSES:
                raise JudgeHTTPError(f"POST {url} failed: {last}", status=e.code, attempts=attempt + 1) from None
            wait = _retry_after(e.headers)
        except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            last = f"{type(e).__name__}: {reason}"
            last_status = None
        else:
            try:
                return json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                snippet = raw[:200].decode("utf-8", "replace")
                raise JudgeResponseError(
                    f"POST {url} returned HTTP {status} with a body that is not JSON ({e}): {snippet!r}"
                ) from None
        if attempt + 1 < attempts:
            delay = backoff_delay(attempt, backoff, max_backoff)
            if wait is not None:
                delay = min(max_backoff, max(delay, wait))
            log.warning(
                "POST %s attempt %d/%d failed (%s); retrying in %.2fs", url, attempt + 1, attempts, last, delay
            )
            sleep(delay)
    raise JudgeHTTPError(
        f"POST {url} failed after {attempts} attempts; last error: {last}", status=last_status, attempts=attempts
    )


class ChatJudge:
    """An OpenAI-compatible chat-completions judge: one request per pair, run concurrently on a small thread pool
    (``concurrency``), each answer parsed into an answer record by the subclass's ``_parse`` (a message, or None
    when the answer has no message). ``answers()`` returns the records and raises only for config/HTTP failures.
    A model that looks like a moving alias (no date, or ``-latest``) is refused unless ``allow_moving_alias``."""

    name = "chat_judge"
    template_version = ""
    default_model = GPT4O_MODEL

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        api_key: str | None = None,
        allow_moving_alias: bool = False,
        concurrency: int = 8,
        max_tokens: int | None = None,
        retries: int = 5,
        backoff: float = 1.0,
        max_backoff: float = 30.0,
        timeout: float = 120.0,
    ):
        self.model = model or self.default_model
        if not allow_moving_alias and (self.model.endswith("-latest") or not _DATED.search(self.model)):
            raise JudgeConfigError(
                f"{self.name}: model {self.model!r} looks like a moving alias; pin a dated snapshot "
                f"(e.g. {GPT4O_MODEL!r}) or pass allow_moving_alias=True"
            )
        self.base_url = openai_base_url(base_url)
        self.api_key_env = api_key_env
        self._api_key = api_key
        self.concurrency = max(1, int(concurrency))
        self.max_tokens = max_tokens
        self.retries, self.backoff, self.max_backoff, self.timeout = int(retries), backoff, max_backoff, timeout
        self.calls = 0
        self.reported_models: set[str] = set()

    @property
    def version(self) -> str:
        """Everything that changes the answers (and so the judge-cache key): model snapshot, template, the server
        (``base_url``) and ``max_tokens``; not the key, concurrency or retry settings."""
        return (f"{self.name}:{self.model}:temperature=0:template={self.template_version}:base_url={self.base_url}"
                f":max_tokens={self.max_tokens}")

    def _key(self) -> str:
        return resolve_api_key(self.name, self._api_key, self.api_key_env,
                               f"; the judge calls {self.base_url}/chat/completions")

    def _payload(self, prompt: str, response: str) -> dict:
        raise NotImplementedError

    def _parse(self, doc: Any) -> dict:
        raise NotImplementedError

    def _one(self, key: str, prompt: str, response: str) -> dict:
        payload = self._payload(prompt, response)
        if self.max_tokens is not None:
            payload["max_tokens"] = int(self.max_tokens)
        doc = post_json(
            f"{self.base_url}/chat/completions", payload, {"Authorization": f"Bearer {key}"},
            retries=self.retries, backoff=self.backoff, max_backoff=self.max_backoff, timeout=self.timeout,
        )
        self.calls += 1
        if isinstance(doc, dict) and isinstance(doc.get("model"), str):
            self.reported_models.add(doc["model"])
        try:
            message = doc["choices"][0]["message"]
        except (KeyError, IndexError, TypeError):
            message = None
        if message is None:
            return {**self._parse(None), **answer_record(raw=json.dumps(doc)[:2000],
                                                         error="answer has no choices[0].message")}
        rec = self._parse(message)
        rec["judge_model"] = doc.get("model") if isinstance(doc, dict) else None
        return rec

    def answers(self, prompts: list[str], responses: list[str]) -> list[dict]:
        """One answer record per pair (see the module docstring); raises only for config/HTTP failures."""
        check_pairs(prompts, responses)
        if not prompts:
            return []
        key = self._key()  # fail before any request if the key is missing
        if self.concurrency == 1 or len(prompts) == 1:
            return [self._one(key, p, r) for p, r in zip(prompts, responses)]
        with ThreadPoolExecutor(max_workers=min(self.concurrency, len(prompts))) as pool:
            return list(pool.map(lambda pr: self._one(key, *pr), zip(prompts, responses)))

    def _checked(self, prompts: list[str], responses: list[str], field: str) -> list[float]:
        return checked_values(self.name, self.answers(prompts, responses), field)
