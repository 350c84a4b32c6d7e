"""The math track's verifier and rewards (src/frpo/math_grading.py): extraction, math_verify equivalences, the
worker pool's timeout/error handling from a non-main thread, and the TRL reward functions."""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

import pytest

# Not QWEN_MATH_SYSTEM at the top: the workers import this module to unpickle the checks below, and that name's
# import pulls in torch (see frpo.math_grading.__getattr__), which would slow every worker's start.
from frpo.math_grading import (
    Verifier, answers_match, boxed_contents, format_reward_value, gold_answer, reward_functions,
)

HALF = r"\frac{1}{2}"


# Checks injected into the workers: top-level so that they pickle by reference.

def slow_check(answer: str, gold: str) -> bool:
    if answer == "slow":
        time.sleep(120)  # far past any timeout used below: only a kill ends it
    return answer == gold


def raising_check(answer: str, gold: str) -> bool:
    if answer == "boom":
        raise ZeroDivisionError("pathological")
    return answer == gold


def dying_check(answer: str, gold: str) -> bool:
    if answer == "die":
        os._exit(3)  # the worker process disappears mid-item
    return answer == gold


def in_thread(fn, *args):
    """Run ``fn(*args)`` in a fresh non-main thread; return its result (re-raise its exception)."""
    out: dict = {}

    def target():
        try:
            out["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001
            out["error"] = err

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@pytest.fixture(scope="module")
def verifier():
    with Verifier(timeout_s=10.0, workers=2) as v:
        yield v


# ------------------------------------------------------------------ extraction and format


def test_system_prompt_is_the_evaluation_one():
    from frpo.evals.lm_eval_tasks import QWEN_MATH_SYSTEM as EVAL_SYSTEM
    from frpo.math_grading import QWEN_MATH_SYSTEM

    assert QWEN_MATH_SYSTEM is EVAL_SYSTEM and r"\boxed{}" in QWEN_MATH_SYSTEM


@pytest.mark.parametrize("text, expected", [
    (r"so \boxed{\frac{1}{2}}.", [HALF]),
    (r"\boxed{\sqrt{\frac{a^{2}}{b}}}", [r"\sqrt{\frac{a^{2}}{b}}"]),
    (r"first \boxed{1}, then \boxed {2} and \boxed{x+\{3\}}", ["1", "2", r"x+\{3\}"]),
    (r"\boxed{\left\{ 1, 2 \right\}}", [r"\left\{ 1, 2 \right\}"]),
    (r"\boxed{}", [""]),
    (r"\boxed{\boxed{7}}", [r"\boxed{7}"]),  # a box in a box is content, not a second box
    (r"unclosed \boxed{\frac{1}{2}", []),
    (r"unclosed \boxed{ 1 + \boxed{2}", ["2"]),  # the closed inner box is still found
    (r"\boxedx{1} and \boxed 5 and \fbox{6}", []),
    ("no box at all", []),
])
def test_boxed_contents(text, expected):
    assert boxed_contents(text) == expected


@pytest.mark.parametrize("text, value", [
    (r"The answer is $\boxed{\frac{1}{2}}$.", 1.0),  # nested braces: one box
    (r"\boxed{3}", 1.0),
    (r"\boxed{1} or maybe \boxed{2}", 0.0),
    ("the answer is 3", 0.0),
    (r"\boxed{\frac{1}{2}", 0.0),  # unclosed: the public regex counted this one
])
def test_format_reward_value(text, value):
    assert format_reward_value(text) == value


def test_gold_answer():
    solution = r"First \boxed{1}? No: the result is $\boxed{\frac{3}{4}}$."
    assert gold_answer({"answer": " 7 ", "solution": solution}) == "7"
    assert gold_answer({"answer": "", "solution": solution}) == r"\frac{3}{4}"
    assert gold_answer({"solution": solution}) == r"\frac{3}{4}"
    with pytest.raises(ValueError, match="no 'answer'"):
        gold_answer({"answer": "  ", "solution": "no box here"})


# ------------------------------------------------------------------ math_verify equivalences


@pytest.mark.parametrize("form", [r"\frac12", HALF, r"\dfrac{1}{2}", "0.5", "1/2", "0.50"])
def test_equivalent_forms_of_one_half(verifier, form):
    assert verifier.correct([rf"The answer is $\boxed{{{form}}}$."], [HALF]) == [1.0]
    assert answers_match(form, HALF)


def test_verifier_cases(verifier):
    completions = [
        r"\boxed{\frac{1}{3}}",                     # wrong
        r"Maybe \boxed{3}, no wait: \boxed{4}",     # the last box counts for correctness
        r"Maybe \boxed{4}, no wait: \boxed{3}",
        "the answer is 4",                          # no box
        r"\boxed{2\sqrt{3}}",                       # symbolic equivalence
        r"\boxed{-\frac{3}{4}}",
        r"\boxed{(3, -1)}",
    ]
    golds = [HALF, "4", "4", "4", r"\sqrt{12}", "-0.75", "(3,-1)"]
    assert verifier.correct(completions, golds) == [0.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    assert verifier.n_timeouts == 0 and verifier.n_errors == 0


def test_many_items_across_workers_keep_their_order(verifier):
    completions = [rf"\boxed{{{i}/{i + 1}}}" for i in range(60)]
    golds = [rf"\frac{{{i}}}{{{i + 1}}}" if i % 3 else str(i + 1) for i in range(60)]
    assert verifier.correct(completions, golds) == [1.0 if i % 3 else 0.0 for i in range(60)]


def test_real_verifier_from_non_main_threads(verifier):
    results = [None, None]

    def score(k):
        results[k] = verifier.correct([r"\boxed{0.25}", r"\boxed{2}"] * 5, [r"\frac14", "3"] * 5)

    threads = [threading.Thread(target=score, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [[1.0, 0.0] * 5] * 2


def test_mismatched_lengths_raise(verifier):
    with pytest.raises(ValueError, match="2 completions but 1 gold"):
        verifier.correct([r"\boxed{1}", r"\boxed{2}"], ["1"])


# ------------------------------------------------------------------ the pool: timeouts, errors, crashes


def test_timeout_from_a_non_main_thread_kills_and_replaces_the_worker():
    with Verifier(timeout_s=0.5, workers=1, check=slow_check) as v:
        completions = [r"\boxed{1}", r"\boxed{slow}", r"\boxed{2}", r"\boxed{3}", r"\boxed{4}", r"\boxed{5}"]
        golds = ["1", "slow", "2", "9", "4", "5"]
        pid_before = v._slots[0].proc.pid
        assert in_thread(v.correct, completions, golds) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0]
        assert v.n_timeouts == 1 and v.n_errors == 0
        assert v._slots[0].proc.pid != pid_before  # the stuck worker was replaced
        # the pool keeps working afterwards, from the main thread too
        assert v.correct([r"\boxed{7}", r"\boxed{8}"], ["7", "7"]) == [1.0, 0.0]
        assert v.n_timeouts == 1


def test_errors_and_crashes_score_zero_and_are_counted():
    with Verifier(timeout_s=30.0, workers=1, check=raising_check) as v:
        assert in_thread(v.correct, [r"\boxed{boom}", r"\boxed{1}"], ["1", "1"]) == [0.0, 1.0]
        assert (v.n_errors, v.n_timeouts) == (1, 0)
    with Verifier(timeout_s=30.0, workers=1, check=dying_check) as v:
        assert v.correct([r"\boxed{1}", r"\boxed{die}", r"\boxed{2}"], ["1", "die", "2"]) == [1.0, 0.0, 1.0]
        assert (v.n_errors, v.n_timeouts) == (1, 0)
        assert v.correct([r"\boxed{3}"], ["3"]) == [1.0]


def test_completions_without_a_box_never_reach_the_workers():
    # raising_check would raise (and count an error) on "boom", so a zero error count proves it was not called
    with Verifier(timeout_s=30.0, workers=1, check=raising_check) as v:
        assert v.correct(["boom", "the answer is boom", r"\boxed{boom"], ["boom"] * 3) == [0.0, 0.0, 0.0]
        assert v.n_errors == 0


def test_a_worker_that_cannot_start_is_reported(tmp_path, monkeypatch):
    # a check from a module that the workers cannot import (its directory is not on the path they are given)
    (tmp_path / "elsewhere_check.py").write_text("def check(answer, gold):\n    return True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import elsewhere_check

    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    with Verifier(check=elsewhere_check.check) as v:
        with pytest.raises(RuntimeError, match="could not start: .*elsewhere_check"):
            v.correct([r"\boxed{1}"], ["1"])


def test_bad_arguments_and_closed_verifier():
    with pytest.raises(TypeError, match="picklable"):
        Verifier(check=lambda a, g: True)
    with pytest.raises(ValueError, match="timeout_s"):
        Verifier(timeout_s=0)
    with pytest.raises(ValueError, match="workers"):
        Verifier(workers=0)
    v = Verifier(check=raising_check)
    procs = [w.proc for w in v._slots]
    v.close()
    v.close()  # idempotent
    assert all(p.poll() is not None for p in procs)
    with pytest.raises(RuntimeError, match="closed"):
        v.correct([r"\boxed{1}"], ["1"])
    assert v.correct(["no box"], ["1"]) == [0.0]  # nothing to check: no pool needed
    assert pickle.loads(pickle.dumps(raising_check)) is raising_check


# ------------------------------------------------------------------ TRL reward functions


def test_reward_functions_names_and_weights(verifier):
    funcs, weights = reward_functions(verifier)
    assert [f.__name__ for f in funcs] == ["format", "correct"]
    assert weights == [0.2, 0.8] and sum(weights) == pytest.approx(1.0)


@pytest.mark.parametrize("conversational", [False, True])
def test_reward_totals(verifier, conversational):
    texts = [
        r"So the answer is $\boxed{\frac{1}{2}}$.",   # format and correct
        r"\boxed{1} or rather \boxed{0.5}",           # correct, two boxes
        r"The answer is \boxed{3}.",                  # format only
        "I think it is one half.",                    # neither
    ]
    completions = [[{"role": "assistant", "content": t}] for t in texts] if conversational else texts
    prompts = [[{"role": "system", "content": "Put your final answer within \\boxed{}."},
                {"role": "user", "content": "What is 1/2?"}]] * 4
    funcs, weights = reward_functions(verifier)
    per_func = [f(prompts, completions, answer=[HALF] * 4, completion_ids=[[1]] * 4, trainer_state=None)
                for f in funcs]
    assert per_func == [[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]]
    totals = [sum(w * r[i] for w, r in zip(weights, per_func)) for i in range(4)]
    assert totals == pytest.approx([1.0, 0.8, 0.2, 0.0])
