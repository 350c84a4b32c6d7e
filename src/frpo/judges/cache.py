"""On-disk judge cache: a rerun costs zero judge calls (API requests, GPU forward passes) for what was judged.

Entries are keyed by ``(judge id, judge version, prompt, response)``. The judge *version* string is the judge's
``version`` property, which contains everything that changes its answers: model id/snapshot, template version
(e.g. ``strongreject_rubric@...+sha256:...``), classifier file hash. The stored value is the judge's answer as a
JSON object: at least ``score`` (a float or ``None`` when malformed), and for labelling/rubric judges ``label``,
``raw`` (the judge's raw text), ``malformed`` and parsed fields.

Storage is one SQLite file (stdlib ``sqlite3``) per cache directory, ``judge_cache.sqlite``; every write is its own
short transaction and connections wait up to ``timeout`` seconds for a lock, so several processes (ranks, DAG
jobs) can share one directory. Keys are SHA-256 digests of the JSON-encoded 4-tuple; the judge id, version,
prompt and response are stored in clear next to the answer for auditing.

>>> cache = JudgeCache("results/judge_cache")                         # doctest: +SKIP
>>> answers = cached_score(judge, prompts, responses, cache)          # doctest: +SKIP
>>> [a["score"] for a in answers]                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import check_pairs

__all__ = ["JudgeCache", "cache_key", "cached_score", "judge_answers"]

CACHE_FILE = "judge_cache.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    key TEXT PRIMARY KEY,
    judge_id TEXT NOT NULL,
    judge_version TEXT NOT NULL,
    prompt TEXT NOT NULL,
    response TEXT NOT NULL,
    answer TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def cache_key(judge_id: str, judge_version: str, prompt: str, response: str) -> str:
    """SHA-256 hex digest of the JSON-encoded ``[judge_id, judge_version, prompt, response]`` (unambiguous)."""
    blob = json.dumps([judge_id, judge_version, prompt, response], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class JudgeCache:
    """A SQLite-backed ``key -> answer`` store, safe for concurrent processes. ``directory=None`` keeps it in
    memory only (nothing persists; still deduplicates within the process)."""

    def __init__(self, directory: str | os.PathLike | None, *, timeout: float = 120.0):
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.timeout = float(timeout)
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path: str = str(self.directory / CACHE_FILE)
        else:
            self.path = ":memory:"
        self._conn = sqlite3.connect(self.path, timeout=self.timeout, check_same_thread=False,
                                     isolation_level=None)  # autocommit; explicit BEGIN below
        self._retrying(lambda: self._conn.execute(_SCHEMA))

    def _retrying(self, fn, attempts: int = 5):
        for i in range(attempts):
            try:
                return fn()
            except sqlite3.OperationalError as e:  # "database is locked" past the timeout: back off, retry
                if "locked" not in str(e) or i + 1 == attempts:
                    raise
                time.sleep(0.5 * 2**i)
        return None

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """The stored answers of those ``keys`` that are present."""
        out: dict[str, dict] = {}
        uniq = list(dict.fromkeys(keys))
        with self._lock:
            for s in range(0, len(uniq), 500):
                chunk = uniq[s : s + 500]
                q = f"SELECT key, answer FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
                rows = self._retrying(lambda q=q, chunk=chunk: self._conn.execute(q, chunk).fetchall())
                out.update((k, json.loads(a)) for k, a in rows)
        return out

    def put_many(self, rows: Sequence[tuple[str, str, str, str, str, dict]]) -> None:
        """Store ``(key, judge_id, judge_version, prompt, response, answer)`` rows in one transaction. An existing
        key is kept (first answer wins, so concurrent writers agree)."""
        if not rows:
            return
        now = time.time()
        data = [(k, j, v, p, r, json.dumps(a, ensure_ascii=False, sort_keys=True), now) for k, j, v, p, r, a in rows]

        def write():
            cur = self._conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                cur.executemany("INSERT OR IGNORE INTO answers VALUES (?, ?, ?, ?, ?, ?, ?)", data)
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise

        with self._lock:
            self._retrying(write)

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def stats(self) -> dict[str, Any]:
        return {"path": self.path, "hits": self.hits, "misses": self.misses}

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def judge_answers(judge: Any, prompts: list[str], responses: list[str]) -> list[dict]:
    """Ask ``judge`` (no cache). Judges with an ``answers()`` method (the labelling / rubric judges) return their
    full answer records; any other registry judge gives ``{"score": s}`` from ``score()``, plus ``harm`` for
    harm-type judges (``harm()`` is then the one call made, ``score = 1 - harm``)."""
    if callable(getattr(judge, "answers", None)):
        out = list(judge.answers(prompts, responses))
    elif callable(getattr(judge, "harm", None)):
        out = [{"harm": float(h), "score": 1.0 - float(h), "malformed": False}
               for h in judge.harm(prompts, responses)]
    else:
        out = [{"score": float(s), "malformed": False} for s in judge.score(prompts, responses)]
    if len(out) != len(prompts):
        raise RuntimeError(f"judge {judge.name!r} returned {len(out)} answers for {len(prompts)} pairs")
    return out


def cached_score(
    judge: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    cache: JudgeCache | None,
    *,
    chunk_size: int = 64,
) -> list[dict]:
    """One answer record per ``(prompt, response)``; the judge is asked only about cache misses (each distinct
    pair once), in chunks of ``chunk_size`` that are written to the cache as soon as they are answered, so an
    interrupted run keeps its progress. ``cache=None`` calls the judge for every distinct pair.

    Each record gets ``"cached": True/False``. Judge failures (HTTP errors after the retries, a missing key)
    propagate and store nothing for the failed chunk; malformed answers are stored as malformed records.
    """
    prompts, responses = list(prompts), list(responses)
    check_pairs(prompts, responses)
    if not prompts:
        return []
    judge_id = str(getattr(judge, "name", type(judge).__name__))
    version = str(getattr(judge, "version", judge_id))  # read once, before any model loads (stable key)
    keys = [cache_key(judge_id, version, p, r) for p, r in zip(prompts, responses)]
    found = cache.get_many(keys) if cache is not None else {}
    todo: dict[str, tuple[str, str]] = {}
    for k, p, r in zip(keys, prompts, responses):
        if k not in found and k not in todo:
            todo[k] = (p, r)
    if cache is not None:
        cache.hits += sum(k in found for k in keys)
        cache.misses += len(todo)
    fresh: dict[str, dict] = {}
    items = list(todo.items())
    for s in range(0, len(items), max(1, int(chunk_size))):
        chunk = items[s : s + max(1, int(chunk_size))]
        answers = judge_answers(judge, [p for _, (p, _r) in chunk], [r for _, (_p, r) in chunk])
        batch = []
        for (k, (p, r)), a in zip(chunk, answers):
            fresh[k] = a
            batch.append((k, judge_id, version, p, r, a))
        if cache is not None:
            cache.put_many(batch)
    out = []
    for k in keys:
        if k in found:
            out.append({**found[k], "cached": True})
        else:
            out.append({**fresh[k], "cached": False})
    return out
