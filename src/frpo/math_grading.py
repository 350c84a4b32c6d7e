"""The math track's answer extraction, verifier and rewards (spec §1.3, §5 item 20).

A completion is graded on the content of its last ``\\boxed{...}``: it is correct iff ``math_verify`` finds it
equal to the problem's reference answer. The rewards are the public code's two, ``0.8·correct + 0.2·format``::

    with Verifier(timeout_s=3.0, workers=4) as verifier:
        funcs, weights = reward_functions(verifier)   # TRL reward_funcs / reward_weights

Why a process pool: sympy can take unbounded time (or memory) on adversarial input, and the public code's
``signal.alarm`` timeout only works in the main thread, whereas TRL may call reward functions from another one.
Here every check runs in one of ``workers`` long-lived worker processes under a wall-clock deadline measured by
the caller; a worker that overruns is killed and replaced, and its item scores 0. The workers are plain
subprocesses of ``sys.executable`` (not ``multiprocessing``): nothing is forked from a process that holds CUDA
or threads, and the worker does not re-import the training script's ``__main__``. This module keeps its
top-level imports to the standard library so that a worker starts in about a second (math_verify's import).
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from functools import lru_cache
from multiprocessing.connection import Connection, wait
from pathlib import Path

__all__ = [
    "CORRECT_WEIGHT", "FORMAT_WEIGHT", "QWEN_MATH_SYSTEM", "Verifier", "answers_match", "boxed_contents",
    "format_reward_value", "gold_answer", "reward_functions",
]

#: spec §1.3: reward = 0.8·correct + 0.2·format
FORMAT_WEIGHT = 0.2
CORRECT_WEIGHT = 0.8

# A TeX control word ends at the first non-letter, so ``\boxedfoo`` is not ``\boxed``; spaces may precede the
# group (``\boxed {x}`` is valid TeX).
_BOXED = re.compile(r"\\boxed(?![A-Za-z])\s*\{")
# Seconds a new worker may take to import math_verify and answer its warm-up check before we give up on it.
_STARTUP_TIMEOUT_S = 120.0
# The largest number of items one message to a worker carries (more would delay re-balancing at the tail).
_MAX_CHUNK = 64


def __getattr__(name: str):
    # The system prompt lives in frpo.evals.lm_eval_tasks, whose import pulls in torch; resolving it lazily
    # keeps that out of the verifier's worker processes, which import this module.
    if name == "QWEN_MATH_SYSTEM":
        from .evals.lm_eval_tasks import QWEN_MATH_SYSTEM

        return QWEN_MATH_SYSTEM
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --------------------------------------------------------------------------------------------------------------
# Extraction and format


def boxed_contents(text: str) -> list[str]:
    """The contents of every top-level ``\\boxed{...}`` of ``text``, in order.

    Braces are matched with nesting (``\\boxed{\\frac{1}{2}}`` -> ``\\frac{1}{2}``); escaped braces (``\\{``,
    ``\\}``) and ``\\\\`` do not count as grouping. A box whose group never closes is not a box (scanning resumes
    inside it, so a closed box nested in an unclosed one is still found). A box inside a box is part of the outer
    box's content, not a box of its own. ``\\fbox`` and the brace-less ``\\boxed 5`` are not recognised.
    """
    out: list[str] = []
    pos = 0
    n = len(text)
    while True:
        m = _BOXED.search(text, pos)
        if m is None:
            return out
        start = i = m.end()
        depth = 1
        while i < n:
            ch = text[i]
            if ch == "\\":
                i += 2
                continue
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    break
            i += 1
        if depth == 0 and i < n:
            out.append(text[start:i])
            pos = i + 1
        else:
            pos = m.end()


def format_reward_value(text: str) -> float:
    """1.0 iff ``text`` has exactly one (top-level, closed) ``\\boxed{}``, else 0.0.

    The public code (spec §1.3) counted matches of the regex ``\\\\boxed\\{([^}]*)\\}``, which does not parse
    nested braces: it stops at the first ``}``, so it accepted an unclosed ``\\boxed{\\frac{1}{2}`` and counted
    ``\\boxed{\\boxed{1}}`` as two boxes. Here braces are parsed (:func:`boxed_contents`); on well-formed
    completions the two agree. An empty ``\\boxed{}`` counts, as it did there.
    """
    return 1.0 if len(boxed_contents(text)) == 1 else 0.0


def gold_answer(row: dict) -> str:
    """The reference answer of a problem row: its ``answer`` field when present and non-empty, else the content
    of the last ``\\boxed{}`` of its ``solution``. Raises ``ValueError`` when the row has neither (a problem
    without a reference answer would silently score 0 for every completion)."""
    answer = row.get("answer")
    if answer is not None and str(answer).strip():
        return str(answer).strip()
    boxes = boxed_contents(str(row.get("solution") or ""))
    if not boxes:
        raise ValueError(f"problem row has no 'answer' and no \\boxed{{}} in its 'solution': {str(row)[:200]}")
    return boxes[-1].strip()


# --------------------------------------------------------------------------------------------------------------
# The equivalence check (runs inside the workers)


@lru_cache(maxsize=4096)
def _parsed(answer: str):
    """``math_verify.parse`` of an extracted answer. Wrapping it in ``\\boxed{}`` sends it down math_verify's
    boxed-LaTeX path (so ``\\frac12``, ``0.5`` and ``1/2`` all parse), with the plain-expression extractor as the
    fallback. Cached because every gold answer is checked once per completion of its group."""
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    return parse("\\boxed{" + answer + "}", extraction_config=[LatexExtractionConfig(), ExprExtractionConfig()],
                 parsing_timeout=None)


def answers_match(answer: str, gold: str) -> bool:
    """Whether the extracted ``answer`` equals ``gold`` by math_verify (``parse`` both, then ``verify(gold,
    answer)``; math-verify==0.9.0). Runs in the calling process with math_verify's own timeouts disabled (they use
    ``signal.alarm``): use :class:`Verifier` for a time limit."""
    from math_verify import verify

    return bool(verify(_parsed(gold), _parsed(answer), timeout_seconds=None))


def _worker_main(fd_in: int, fd_out: int) -> None:
    """Body of a worker process: receive ``init``, then chunks of ``(index, answer, gold)``; reply per item."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it kills us on close
    conn_in, conn_out = Connection(fd_in, writable=False), Connection(fd_out, readable=False)
    try:
        init = conn_in.recv()
        sys.path.extend(p for p in init["sys_path"] if p not in sys.path)
        check = pickle.loads(init["check"]) if init["check"] is not None else answers_match
        if init["check"] is None:
            # math_verify warns once that its timeout is off; here the parent enforces the deadline.
            logging.getLogger("math_verify").setLevel(logging.ERROR)
            answers_match("1", "1")  # warm up (imports, first parse) before taking timed work
    except BaseException as err:  # noqa: BLE001 - anything here is a configuration error the parent must report
        conn_out.send(("fatal", f"{type(err).__name__}: {err}"))
        return
    conn_out.send(("ready", os.getpid()))
    while True:
        try:
            chunk = conn_in.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if chunk is None:
            return
        for index, answer, gold in chunk:
            try:
                reply = (index, bool(check(answer, gold)), None)
            except Exception as err:  # noqa: BLE001 - any failure of a check scores 0
                reply = (index, False, f"{type(err).__name__}: {err}"[:500])
            conn_out.send(reply)


# --------------------------------------------------------------------------------------------------------------
# The pool


_WORKER_CODE = ("import sys; from frpo.math_grading import _worker_main; "
                "_worker_main(int(sys.argv[1]), int(sys.argv[2]))")


class _Worker:
    """One worker process and its two pipe ends; ``chunk``/``pos``/``deadline`` track the work it holds."""

    def __init__(self, init: dict):
        p2c_r, p2c_w = os.pipe()
        c2p_r, c2p_w = os.pipe()
        env = dict(os.environ)
        src = str(Path(__file__).resolve().parents[1])  # the directory holding this frpo package
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, env.get("PYTHONPATH")]))
        try:
            # stdout goes to our stderr (fd 2): the parent's stdout may carry data, as a benchmark's JSON line
            self.proc = subprocess.Popen([sys.executable, "-c", _WORKER_CODE, str(p2c_r), str(c2p_w)],
                                         pass_fds=(p2c_r, c2p_w), stdin=subprocess.DEVNULL, stdout=2, env=env)
        except BaseException:
            os.close(p2c_w)
            os.close(c2p_r)
            raise
        finally:
            os.close(p2c_r)
            os.close(c2p_w)
        self.send_conn = Connection(p2c_w, readable=False)
        self.recv_conn = Connection(c2p_r, writable=False)
        self.ready = False
        self.started = time.monotonic()
        self.chunk: list | None = None
        self.pos = 0
        self.deadline = math.inf
        try:
            self.send_conn.send(init)
        except OSError:
            pass  # it died at once: the scheduler sees its pipe close before "ready" and reports its exit status

    def kill(self) -> None:
        """Stop the process now and release its pipes (idempotent)."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        for conn in (self.send_conn, self.recv_conn):
            conn.close()

    def ask_to_exit(self) -> None:
        try:
            self.send_conn.send(None)
        except (OSError, ValueError):
            pass


def _shutdown(slots: list, grace_s: float = 2.0) -> None:
    """Ask every worker to exit, give them ``grace_s`` in all, then kill whichever is left."""
    workers = [w for w in slots if w is not None]
    for worker in workers:
        worker.ask_to_exit()
    deadline = time.monotonic() + grace_s
    for worker in workers:
        try:
            worker.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        worker.kill()
    slots[:] = [None] * len(slots)


class Verifier:
    """Score completions against gold answers in a pool of ``workers`` worker processes.

    ``correct(completions, golds)`` gives 1.0 per completion whose last ``\\boxed{}`` equals its gold answer by
    math_verify (:func:`answers_match`), else 0.0 (also: no box, a check that raised, a check that took more than
    ``timeout_s`` wall-clock seconds). Completions without a box are scored in the caller without touching the
    pool. Safe to call from any thread (calls are serialised). ``check``, a picklable top-level function
    ``(answer, gold) -> bool``, replaces math_verify (for tests). The workers start at construction and live until
    :meth:`close` (or the end of a ``with`` block); a worker killed at a timeout is replaced at once.

    ``n_timeouts`` and ``n_errors`` count, over the verifier's life, the items that timed out and the items whose
    check raised (or whose worker died).
    """

    def __init__(self, timeout_s: float = 3.0, workers: int = 1, check: Callable[[str, str], bool] | None = None):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if int(workers) != workers or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        try:
            check_blob = None if check is None else pickle.dumps(check)
        except Exception as err:
            raise TypeError(f"check must be a picklable top-level function: {err}") from err
        self.timeout_s = float(timeout_s)
        self.workers = int(workers)
        self.n_timeouts = 0
        self.n_errors = 0
        self._init = {"sys_path": [p for p in sys.path if isinstance(p, str)], "check": check_blob}
        self._lock = threading.Lock()
        self._closed = False
        self._slots: list[_Worker | None] = [None] * self.workers
        self._finalizer = weakref.finalize(self, _shutdown, self._slots)
        for i in range(self.workers):
            self._slots[i] = _Worker(self._init)

    # ---- public API

    def correct(self, completions: Sequence[str], golds: Sequence[str]) -> list[float]:
        """1.0/0.0 per completion: its last ``\\boxed{}`` content equals the matching gold answer."""
        if len(completions) != len(golds):
            raise ValueError(f"{len(completions)} completions but {len(golds)} gold answers")
        scores = [0.0] * len(completions)
        jobs = []
        for i, (text, gold) in enumerate(zip(completions, golds)):
            boxes = boxed_contents(text)
            if boxes:
                jobs.append((i, boxes[-1], str(gold)))
        if jobs:
            with self._lock:
                if self._closed:
                    raise RuntimeError("Verifier is closed")
                self._run(jobs, scores)
        return scores

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        with self._lock:
            self._closed = True
            self._finalizer()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---- the scheduler

    def _replace(self, slot: int) -> None:
        self._slots[slot].kill()
        self._slots[slot] = _Worker(self._init)

    def _requeue_rest(self, worker: _Worker, pending: deque) -> None:
        rest = worker.chunk[worker.pos + 1:]
        if rest:
            pending.appendleft(rest)

    def _receive(self, slot: int, scores: list[float], pending: deque) -> None:
        """Handle everything worker ``slot`` has sent so far; a dead worker's current item is an error."""
        worker = self._slots[slot]
        while True:
            try:
                if not worker.recv_conn.poll():
                    return
                msg = worker.recv_conn.recv()
            except (EOFError, OSError):
                if not worker.ready:
                    code = worker.proc.wait()
                    raise RuntimeError(f"verifier worker exited with status {code} before it was ready") from None
                if worker.chunk is not None:
                    self.n_errors += 1  # its item stays 0.0
                    self._requeue_rest(worker, pending)
                self._replace(slot)
                return
            if not worker.ready:
                if msg[0] == "fatal":
                    worker.kill()
                    raise RuntimeError(f"verifier worker could not start: {msg[1]}")
                worker.ready = True
                continue
            index, ok, err = msg
            expected = worker.chunk[worker.pos][0]
            if index != expected:  # cannot happen with one chunk in flight; guard against a silent mix-up
                raise RuntimeError(f"verifier worker answered item {index}, expected {expected}")
            scores[index] = 1.0 if ok else 0.0
            if err is not None:
                self.n_errors += 1
            worker.pos += 1
            worker.deadline = time.monotonic() + self.timeout_s
            if worker.pos == len(worker.chunk):
                worker.chunk, worker.pos, worker.deadline = None, 0, math.inf

    def _run(self, jobs: list[tuple[int, str, str]], scores: list[float]) -> None:
        try:
            self._schedule(jobs, scores)
        except BaseException:
            # Workers still holding items would send stale answers into the next call: replace them.
            for slot, worker in enumerate(self._slots):
                if worker is not None and worker.chunk is not None:
                    worker.kill()
                    self._slots[slot] = None
            raise

    def _schedule(self, jobs: list[tuple[int, str, str]], scores: list[float]) -> None:
        size = max(1, min(_MAX_CHUNK, math.ceil(len(jobs) / (4 * self.workers))))
        pending = deque(jobs[i:i + size] for i in range(0, len(jobs), size))
        for slot, worker in enumerate(self._slots):
            if worker is None or worker.proc.poll() is not None:  # died while idle (e.g. killed from outside)
                if worker is not None:
                    worker.kill()
                self._slots[slot] = _Worker(self._init)
        while True:
            now = time.monotonic()
            for slot, worker in enumerate(self._slots):
                if worker.ready and worker.chunk is None and pending:
                    chunk = pending.popleft()
                    try:
                        worker.send_conn.send(chunk)
                    except OSError:  # it died while idle: nothing of this chunk has started
                        pending.appendleft(chunk)
                        self._replace(slot)
                        continue
                    worker.chunk, worker.pos, worker.deadline = chunk, 0, now + self.timeout_s
            if not pending and all(w.chunk is None for w in self._slots):
                return
            deadlines = [w.deadline if w.ready else w.started + _STARTUP_TIMEOUT_S for w in self._slots]
            ready = wait([w.recv_conn for w in self._slots], timeout=max(0.0, min(deadlines) - now))
            for slot, worker in enumerate(self._slots):
                if worker.recv_conn in ready:
                    self._receive(slot, scores, pending)
            now = time.monotonic()
            for slot, worker in enumerate(self._slots):
                if not worker.ready and now >= worker.started + _STARTUP_TIMEOUT_S:
                    raise RuntimeError(f"verifier worker did not start within {_STARTUP_TIMEOUT_S:.0f} s")
                if worker.chunk is not None and now >= worker.deadline:
                    self._receive(slot, scores, pending)  # an answer that arrived just now still counts
                    worker = self._slots[slot]
                    if worker.chunk is not None and now >= worker.deadline:
                        self.n_timeouts += 1  # its item stays 0.0
                        self._requeue_rest(worker, pending)
                        self._replace(slot)


# --------------------------------------------------------------------------------------------------------------
# TRL reward functions


def reward_functions(verifier: Verifier) -> tuple[list[Callable[..., list[float]]], list[float]]:
    """TRL reward functions ``[format, correct]`` and their weights ``[0.2, 0.8]`` (spec §1.3).

    Each is ``f(prompts, completions, answer, **kwargs) -> list[float]``, where ``answer`` is the dataset column of
    gold answers (TRL passes dataset columns as keyword arguments) and completions are strings or conversational
    message lists. Their ``__name__`` is ``"format"`` / ``"correct"``, so TRL logs ``rewards/format/mean`` and
    ``rewards/correct/mean``.
    """
    from .judges.base import completion_text  # imported here, not at the top, to keep the workers' import light

    def format_reward(prompts, completions, answer=None, **kwargs) -> list[float]:
        return [format_reward_value(completion_text(c)) for c in completions]

    def correct_reward(prompts, completions, answer, **kwargs) -> list[float]:
        return verifier.correct([completion_text(c) for c in completions], [str(a) for a in answer])

    format_reward.__name__ = format_reward.__qualname__ = "format"
    correct_reward.__name__ = correct_reward.__qualname__ = "correct"
    return [format_reward, correct_reward], [FORMAT_WEIGHT, CORRECT_WEIGHT]
