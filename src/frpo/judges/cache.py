"""On-disk judge cache: a rerun costs zero judge calls (API requests, GPU forward passes) for what was judged.

Entries are keyed by ``(judge id, judge version, prompt, response)``. The judge *version* string is the judge's
``version`` property, which contains everything that changes its answers: for API judges the model snapshot, the
template version, the base URL and ``max_tokens``; for local judges the resolved model commit (or the hash of a
local model directory) and the quantisation; for the MiniLM judge the classifier file hash. The stored value is
the judge's answer as a JSON object: at least ``score`` (a float), and for labelling/rubric judges ``label``,
``raw`` (the judge's raw text) and parsed fields. A **malformed** answer is never stored: it is returned to the
caller, counted, and asked again on the next run.

Storage is made for many SLURM jobs sharing one directory on a network filesystem, where file locking (and so
SQLite) is unreliable. Each :class:`JudgeCache` that writes appends to a shard file of its own,
``shard-<host>-<pid>-<random>.jsonl``, so no two writers ever touch the same file; readers merge every shard of
the directory. A batch of answers is appended with one ``write`` on an ``O_APPEND`` descriptor and ``fsync``ed;
each line is ``<16 hex digits of the SHA-256 of the JSON> <JSON>``, so a line torn by a crash (or a half-written
line still being written) fails its checksum and is ignored. When two jobs judged the same pair, the earliest
answer wins (then the smaller shard name), so every reader sees the same answer.

This is the one judge cache: the evaluations open it with :func:`open_judge_cache`, and a judge that caches by
itself (OpenAI moderation: ``cache_dir=``) uses the same class.

>>> cache = JudgeCache("results/judge_cache")                         # doctest: +SKIP
>>> answers = cached_score(judge, prompts, responses, cache)          # doctest: +SKIP
>>> [a["score"] for a in answers]                                     # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import check_pairs, judge_answers

__all__ = ["CACHE_DIR_ENV", "DEFAULT_CACHE_DIR", "JudgeCache", "cache_key", "cached_score", "open_judge_cache"]

SHARD_GLOB = "shard-*.jsonl"
#: where the evaluations' judge cache lives when nothing names a directory
DEFAULT_CACHE_DIR = "~/.cache/frpo/judges"
#: the environment variable that names the judge cache directory (after the config's own keys)
CACHE_DIR_ENV = "FRPO_JUDGE_CACHE_DIR"
_CHECK_LEN = 16


def cache_key(judge_id: str, judge_version: str, prompt: str, response: str) -> str:
    """SHA-256 hex digest of the JSON-encoded ``[judge_id, judge_version, prompt, response]`` (unambiguous)."""
    blob = json.dumps([judge_id, judge_version, prompt, response], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def _checksum(body: bytes) -> bytes:
    return hashlib.sha256(body).hexdigest()[:_CHECK_LEN].encode("ascii")


def encode_line(record: dict) -> bytes:
    """One shard line: ``<checksum> <JSON>\\n`` (the JSON has no raw newline)."""
    body = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return _checksum(body) + b" " + body + b"\n"


def decode_line(line: bytes) -> dict | None:
    """The record of one complete shard line (without its newline), or None when it is torn or corrupt."""
    check, sep, body = line.partition(b" ")
    if not sep or len(check) != _CHECK_LEN or _checksum(body) != check:
        return None
    try:
        rec = json.loads(body)
    except ValueError:
        return None
    if not isinstance(rec, dict) or not isinstance(rec.get("key"), str) or not isinstance(rec.get("answer"), dict):
        return None
    return rec


class JudgeCache:
    """A ``key -> answer`` store in append-only shard files, safe for concurrent processes on any filesystem.
    ``directory=None`` keeps it in memory only (nothing persists; still deduplicates within the process)."""

    def __init__(self, directory: str | os.PathLike | None):
        self.directory = Path(directory).expanduser() if directory is not None else None
        self.hits = 0
        self.misses = 0
        self.not_stored = 0  # malformed answers returned but not cached
        self.corrupt_lines = 0
        self._lock = threading.Lock()
        self._answers: dict[str, dict] = {}
        self._rank: dict[str, tuple[float, str, int]] = {}  # key -> (created, shard name, line), the winner's
        self._offsets: dict[str, int] = {}  # shard name -> bytes already read
        self._lines: dict[str, int] = {}  # shard name -> complete lines already read
        self._shard: Path | None = None
        self._fd: int | None = None
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)

    @property
    def path(self) -> str:
        return str(self.directory) if self.directory is not None else ":memory:"

    # -- reading ------------------------------------------------------------------------------------------------

    def _offer(self, rec: dict, shard: str, line: int) -> None:
        key, rank = rec["key"], (float(rec.get("created", 0.0)), shard, line)
        if key not in self._rank or rank < self._rank[key]:
            self._rank[key] = rank
            self._answers[key] = rec["answer"]

    def _refresh(self) -> None:
        """Read what was appended to every shard since the last read (new shards included)."""
        if self.directory is None:
            return
        for path in sorted(self.directory.glob(SHARD_GLOB)):
            name = path.name
            start = self._offsets.get(name, 0)
            try:
                with open(path, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except FileNotFoundError:  # removed by someone cleaning up: nothing to read
                continue
            end = data.rfind(b"\n")
            if end < 0:
                continue  # nothing complete yet (a writer may be mid-line)
            base_line = self._lines.get(name, 0)
            lines = data[:end].split(b"\n")
            for i, line in enumerate(lines):
                rec = decode_line(line)
                if rec is None:
                    self.corrupt_lines += bool(line)
                    continue
                self._offer(rec, name, base_line + i)
            self._offsets[name] = start + end + 1
            self._lines[name] = base_line + len(lines)

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        """The stored answers of those ``keys`` that are present (in any shard)."""
        with self._lock:
            self._refresh()
            return {k: self._answers[k] for k in dict.fromkeys(keys) if k in self._answers}

    # -- writing ------------------------------------------------------------------------------------------------

    def _own_shard(self) -> int:
        if self._fd is None:
            host = "".join(c if c.isalnum() or c in "-_" else "_" for c in socket.gethostname())[:40] or "host"
            self._shard = self.directory / f"shard-{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}.jsonl"
            self._fd = os.open(self._shard, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
        return self._fd

    def put_many(self, rows: Sequence[tuple[str, str, str, str, str, dict]]) -> None:
        """Store ``(key, judge_id, judge_version, prompt, response, answer)`` rows: one append of whole lines to
        this process's shard, then ``fsync``. An existing key keeps its earlier answer."""
        if not rows:
            return
        now = time.time()
        recs = [{"key": k, "judge_id": j, "judge_version": v, "prompt": p, "response": r, "answer": a,
                 "created": now} for k, j, v, p, r, a in rows]
        with self._lock:
            if self.directory is not None:
                data = b"".join(encode_line(rec) for rec in recs)
                fd = self._own_shard()
                written = 0
                while written < len(data):  # a short write continues the same lines; readers wait for "\n"
                    written += os.write(fd, data[written:])
                os.fsync(fd)
            for rec in recs:
                # our own lines rank after anything already read with an earlier time, as a reader would rank them
                self._offer(rec, self._shard.name if self._shard is not None else "", -1)

    def __len__(self) -> int:
        with self._lock:
            self._refresh()
            return len(self._answers)

    def stats(self) -> dict[str, Any]:
        return {"path": self.path, "hits": self.hits, "misses": self.misses, "not_stored": self.not_stored,
                "corrupt_lines": self.corrupt_lines}

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> JudgeCache:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_judge_cache(*directories: str | os.PathLike | None) -> JudgeCache:
    """The on-disk judge cache in the first of ``directories`` that is set (e.g. a benchmark section's
    ``cache_dir``, then the eval config's ``judge_cache_dir``), else ``$FRPO_JUDGE_CACHE_DIR``, else
    :data:`DEFAULT_CACHE_DIR`."""
    chosen = next((d for d in directories if d), None) or os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR
    return JudgeCache(chosen)


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
    propagate and store nothing for the failed chunk. Malformed answers are returned but **not stored**, so a
    rerun asks the judge again (``cache.not_stored`` counts them).
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
    step = max(1, int(chunk_size))
    for s in range(0, len(items), step):
        chunk = items[s : s + step]
        answers = judge_answers(judge, [p for _, (p, _r) in chunk], [r for _, (_p, r) in chunk])
        batch = []
        for (k, (p, r)), a in zip(chunk, answers):
            fresh[k] = a
            if a.get("malformed"):
                if cache is not None:
                    cache.not_stored += 1
            else:
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
