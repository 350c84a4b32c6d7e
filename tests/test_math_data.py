"""The math track's data: the hub loaders (with offline doubles of ``datasets.load_dataset``), the MATH500
contamination filter, and the two built-in files (``math_problems``, ``code_instruct``)."""

from __future__ import annotations

import ast
import re
from collections import Counter
from fractions import Fraction

import pytest

from frpo.data import BUILTIN_NAMES, builtin, read_jsonl, resolve, split
from frpo.data import make_math
from frpo.data.sources import (
    CODE_INSTRUCT_REVISION, MATH500_REVISION, MATH_SUBJECTS, MATH_TRAIN_REVISION, code_instruct_rows,
    drop_problems, math500_rows, math_train_rows, normalise_problem,
)
from frpo.math_grading import Verifier, boxed_contents, gold_answer

MATH_FIELDS = {"id": str, "problem": str, "solution": str, "answer": str, "level": int, "type": str,
               "template": str, "split": str}
CODE_FIELDS = {"id": str, "input": str, "output": str, "average_test_score": str}
FENCE = re.compile(r"```python\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def math_rows():
    return read_jsonl(builtin("math_problems"), MATH_FIELDS)


@pytest.fixture(scope="module")
def code_rows():
    return read_jsonl(builtin("code_instruct"), CODE_FIELDS)


# ------------------------------------------------------------------ the contamination filter


def test_normalise_problem_ignores_only_presentation():
    a = r"Find $x$ if $\left( x + 1 \right)^2 = 9$ and  $x>0$."
    b = "find x if (x+1)^2=9\nand x > 0."
    c = r"FIND $x$ IF $\left(x\,+\;1\right)^{2}$ = 9 and $x\!>\quad 0$."
    assert normalise_problem(a) == normalise_problem(b)
    assert normalise_problem(r"Costs \$5 now") == normalise_problem("costs $5 now")
    assert normalise_problem(c) != normalise_problem(a)  # ^{2} vs ^2 is a real difference to this key
    assert normalise_problem(a) != normalise_problem(a.replace("9", "16"))
    assert normalise_problem(r"$\leftarrow$") != normalise_problem("arrow")  # \left only as a whole word
    assert normalise_problem(r"\quadrant") != normalise_problem("rant")


def test_drop_problems_removes_math500_duplicates_only():
    banned = [r"What is $\frac{1}{2} + \frac{1}{3}$?", "How many primes are less than 20?"]
    rows = [
        {"problem": r"what is $\frac{1}{2}+\frac{1}{3}$ ?", "k": 0},     # same up to normalisation
        {"problem": r"What is $\frac{1}{2} + \frac{1}{4}$?", "k": 1},    # a different problem
        {"problem": "How many primes are less than  20?", "k": 2},       # same
        {"problem": "How many primes are less than 30?", "k": 3},
    ]
    kept, dropped = drop_problems(rows, banned)
    assert [r["k"] for r in kept] == [1, 3] and dropped == 2
    kept, dropped = drop_problems([{"q": "How many primes are less than 20?"}], banned, field="q")
    assert (kept, dropped) == ([], 1)


# ------------------------------------------------------------------ hub loaders, with doubles


def _math_row(level: str, answer: str, subject: str, k: int) -> dict:
    return {"problem": f"{subject} problem {k} ({level})", "level": level, "type": subject.title(),
            "solution": f"Work. Hence $\\boxed{{{answer}}}$." if answer else "No boxed answer here."}


def test_math_train_rows_asks_for_the_train_split_only_and_keeps_levels_3_to_5():
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision, kwargs))
        if split != "train":
            return [_math_row("Level 4", "99", name, 99)]  # test problems must never be read
        levels = ["Level 1", "Level 2", "Level 3", "Level 4", "Level 5", "Level ?", "Level 5"]
        answers = ["1", "2", r"\frac{3}{4}", "4", "5", "6", ""]
        return [_math_row(lv, ans, name, k) for k, (lv, ans) in enumerate(zip(levels, answers))]

    rows = math_train_rows(load_dataset=fake_load_dataset)
    assert [c[1] for c in calls] == list(MATH_SUBJECTS)
    assert all(c[0] == "EleutherAI/hendrycks_math" and c[2] == "train" and c[3] == MATH_TRAIN_REVISION
               for c in calls)
    assert len(rows) == 3 * len(MATH_SUBJECTS)  # levels 3, 4, 5; "Level ?" and the unboxed solution skipped
    assert [r["level"] for r in rows[:3]] == [3, 4, 5]
    assert [r["answer"] for r in rows[:3]] == [r"\frac{3}{4}", "4", "5"]
    assert set(rows[0]) == {"problem", "solution", "answer", "level", "type"}
    assert rows[0]["type"] == "Algebra" and all(r["answer"] != "99" for r in rows)
    assert [r["level"] for r in math_train_rows(levels=(1,), load_dataset=fake_load_dataset)] == [1] * 7
    with pytest.raises(ValueError, match="levels"):
        math_train_rows(levels=(0, 6), load_dataset=fake_load_dataset)


def test_math500_rows():
    calls = []

    def fake_load_dataset(path, name=None, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        return [{"problem": "p", "solution": r"\boxed{1}", "answer": "1", "subject": "Algebra", "level": 2,
                 "unique_id": "test/algebra/1.json"}]

    rows = math500_rows(load_dataset=fake_load_dataset)
    assert calls == [("HuggingFaceH4/MATH-500", None, "test", MATH500_REVISION)]
    assert rows[0]["answer"] == "1" and rows[0]["level"] == 2


class FakeStream:
    """A stand-in for a streaming ``IterableDataset``: records shuffle/take, applies take."""

    def __init__(self, rows, log):
        self.rows, self.log = rows, log

    def shuffle(self, seed=None, buffer_size=None):
        self.log.append(("shuffle", seed, buffer_size))
        return FakeStream(self.rows, self.log)

    def take(self, n):
        self.log.append(("take", n))
        return FakeStream(self.rows[:n], self.log)

    def __iter__(self):
        return iter(self.rows)


def test_code_instruct_rows_streams_shuffles_takes_and_keeps_only_full_scores(code_rows):
    log = []

    def fake_load_dataset(path, name=None, split=None, revision=None, streaming=False, **kwargs):
        log.append((path, split, revision, streaming))
        return FakeStream(code_rows, log)

    rows = code_instruct_rows(load_dataset=fake_load_dataset)
    assert log == [("nvidia/OpenCodeInstruct", "train", CODE_INSTRUCT_REVISION, True), ("shuffle", 42, 10000),
                   ("take", 50000)]
    full = [r for r in code_rows if r["average_test_score"] == "1"]
    assert rows == [{"input": r["input"], "output": r["output"]} for r in full]
    assert len(rows) < len(code_rows)
    log.clear()
    first = code_instruct_rows(n_take=5, seed=7, load_dataset=fake_load_dataset)
    assert ("shuffle", 7, 10000) in log and ("take", 5) in log
    assert len(first) == sum(r["average_test_score"] == "1" for r in code_rows[:5])


# ------------------------------------------------------------------ built-in math_problems


def test_builtins_are_registered():
    assert {"math_problems", "code_instruct"} <= set(BUILTIN_NAMES)
    assert resolve("builtin:math_problems") == builtin("math_problems")


def test_math_problems_rows(math_rows):
    assert len(math_rows) == make_math.N_PROBLEMS
    assert (len(split(math_rows, "train")), len(split(math_rows, "eval"))) == (200, 40)
    assert len({r["id"] for r in math_rows}) == len({normalise_problem(r["problem"]) for r in math_rows}) == 240
    for row in math_rows:
        assert 1 <= row["level"] <= 5
        assert row["solution"].rstrip().endswith("$.") and boxed_contents(row["solution"])[-1] == row["answer"]
        assert gold_answer({"solution": row["solution"]}) == gold_answer(row) == row["answer"]
    kinds = Counter("frac" if r"\frac" in r["answer"] else "decimal" if "." in r["answer"] else "int"
                    for r in math_rows)
    assert min(kinds.values()) >= 20, kinds
    assert {t for r in split(math_rows, "eval") for t in [r["template"]]} == set(make_math.TEMPLATES)


def test_math_problems_file_is_the_generator_output():
    assert builtin("math_problems").read_text(encoding="utf-8") == make_math.render(make_math.generate())


def _value(answer: str) -> Fraction:
    m = re.fullmatch(r"(-?)\\frac\{(\d+)\}\{(\d+)\}", answer)
    if m:
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return Fraction(answer)


def test_math_problems_verify_with_the_real_verifier(math_rows):
    """A positive control: each solution's boxed answer, and another way of writing the same number, verify
    against ``answer``; the number plus one does not."""
    completions, golds, expected = [], [], []
    for row in math_rows:
        value = _value(row["answer"])
        other = f"{value.numerator}/{value.denominator}" if value.denominator != 1 else f"{value.numerator}.0"
        for text, ok in [(row["solution"], 1.0), (rf"\boxed{{{other}}}", 1.0),
                         (rf"\boxed{{{make_math.latex_number(value + 1)}}}", 0.0)]:
            completions.append(text)
            golds.append(row["answer"])
            expected.append(ok)
    with Verifier(timeout_s=30.0, workers=2) as verifier:
        assert verifier.correct(completions, golds) == expected
        assert verifier.n_timeouts == verifier.n_errors == 0


# ------------------------------------------------------------------ built-in code_instruct

# Behaviour each full-score solution must have (and that each partial-score one gets wrong somewhere).
CODE_CHECKS = {
    "second_largest": [(([3, 1, 3, 2],), 2), (([5, 5],), None)],
    "is_palindrome": [(("A man, a plan, a canal: Panama",), True), (("abc",), False)],
    "word_counts": [(("The cat. the CAT!",), {"the": 2, "cat": 2})],
    "flatten": [(([1, [2, [3, []]], 4],), [1, 2, 3, 4])],
    "fizzbuzz": [((5,), ["1", "2", "Fizz", "4", "Buzz"]), ((15,), [*["1", "2", "Fizz", "4", "Buzz", "Fizz", "7",
                                                                      "8", "Fizz", "Buzz", "11", "Fizz", "13",
                                                                      "14", "FizzBuzz"]])],
    "merge_intervals": [(([[3, 5], [1, 3], [7, 8]],), [[1, 5], [7, 8]])],
    "is_prime": [((2,), True), ((1,), False), ((91,), False), ((97,), True)],
    "binary_search": [(([1, 3, 5, 7], 7), 3), (([1, 3, 5, 7], 4), -1), (([], 1), -1)],
    "roman_to_int": [(("MCMXCIV",), 1994), (("IV",), 4)],
    "balanced": [(("{[()]}x",), True), (("([)]",), False), (("((",), False)],
    "rotate": [(([[1, 2], [3, 4]],), [[3, 1], [4, 2]])],
    "run_length_encode": [(("aaabcc",), "a3b1c2"), (("",), "")],
    "two_sum": [(([2, 7, 11, 15], 9), (0, 1)), (([1, 2], 7), None)],
    "celsius_to_fahrenheit": [(([0, 100, -40, 36.6],), [32.0, 212.0, -40.0, 97.9])],
    "group_anagrams": [((["eat", "tea", "tan", "ate", "nat"],), [["eat", "tea", "ate"], ["tan", "nat"]])],
    "fibonacci": [((0,), 0), ((10,), 55)],
    "moving_average": [(([1, 2, 3, 4], 2), [1.5, 2.5, 3.5]), (([1], 3), [])],
    "parse_key_values": [(("# c\na = 1\n\nb=2\na=3",), {"a": "3", "b": "2"})],
    "longest_common_prefix": [((["flower", "flow", "flight"],), "fl"), (([],), "")],
    "median": [(([3, 1, 2],), 2), (([4, 1, 3, 2],), 2.5)],
    "count_vowels": [(("Banana",), 3), (("AEIOU",), 5)],
    "days_in_month": [((2024, 2), 29), ((1900, 2), 28), ((2000, 2), 29), ((2023, 4), 30)],
    "unique_in_order": [(([3, 1, 3, 2, 1],), [3, 1, 2])],
}


def _passes(code: str) -> bool:
    namespace: dict = {}
    exec(compile(code, "<solution>", "exec"), namespace)  # noqa: S102 - our own packaged solutions
    if "Stack" in namespace:
        s = namespace["Stack"]()
        s.push(1)
        s.push(2)
        ok = (len(s), s.peek(), s.pop(), s.pop(), s.peek()) == (2, 2, 2, 1, None)
        try:
            s.pop()
        except IndexError:
            return ok
        return False
    (name,) = [n for n in CODE_CHECKS if n in namespace]
    return all(namespace[name](*args) == want for args, want in CODE_CHECKS[name])


def test_code_instruct_rows(code_rows):
    assert len(code_rows) >= 20 and len({r["id"] for r in code_rows}) == len(code_rows)
    scores = Counter(r["average_test_score"] for r in code_rows)
    assert set(scores) <= {"1", "0.8", "0.5", "0"} and scores["1"] >= 18 and len(code_rows) - scores["1"] >= 3
    for row in code_rows:
        blocks = FENCE.findall(row["output"])
        assert len(blocks) == 1, row["id"]
        ast.parse(blocks[0])
        # the filter's premise: a full score means a correct solution, anything less a wrong one
        assert _passes(blocks[0]) == (row["average_test_score"] == "1"), row["id"]
