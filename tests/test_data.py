"""The built-in CPU-demo data sets (src/frpo/data): sizes, balance, splits, integrity, and the JSONL reader."""

from __future__ import annotations

import ast
import operator
import re
from collections import Counter
from fractions import Fraction
from pathlib import Path

import pytest

from frpo.data import BUILTIN_NAMES, DATA_DIR, DataError, builtin, read_jsonl, resolve, split
from frpo.data import make_arithmetic

REPO = Path(__file__).resolve().parents[1]
HARM_CATEGORIES = {
    "violence", "weapons", "cybercrime", "fraud", "drugs", "harassment", "self_harm", "privacy", "hate",
    "misinformation",
}
REFUSAL_WORDS = re.compile(r"\b(sorry|can't|cannot|unable|won't|unfortunately)\b", re.IGNORECASE)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


@pytest.fixture(scope="module")
def safety():
    return read_jsonl(
        builtin("safety_prompts"), {"id": str, "prompt": str, "task": str, "category": str, "split": str}
    )


@pytest.fixture(scope="module")
def arithmetic():
    return read_jsonl(builtin("arithmetic"), {"question": str, "answer": str, "final": int, "split": str})


# ------------------------------------------------------------------ loader API


def test_every_builtin_resolves_to_a_packaged_file():
    for name in BUILTIN_NAMES:
        path = builtin(name)
        assert path == DATA_DIR / f"{name}.jsonl" and path.is_file()
        assert resolve(f"builtin:{name}") == path
    assert builtin("arithmetic.jsonl") == builtin("arithmetic")
    assert (DATA_DIR / "README.md").is_file()


def test_unknown_builtin_and_missing_path_are_named(tmp_path):
    with pytest.raises(ValueError, match=r"unknown built-in data set 'nope' \(known: safety_prompts, "):
        builtin("nope")
    with pytest.raises(ValueError, match="known: .*arithmetic"):
        resolve("builtin:nope")
    missing = tmp_path / "absent.jsonl"
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        resolve(str(missing))
    with pytest.raises(FileNotFoundError, match="absent.jsonl"):
        read_jsonl(missing)
    own = tmp_path / "own.jsonl"
    own.write_text('{"a": 1}\n')
    assert resolve(str(own)) == own


def _write(tmp_path, text, name="bad.jsonl"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_read_jsonl_skips_blank_lines_and_checks_types(tmp_path):
    path = _write(tmp_path, '\n{"prompt": "hi", "x": 1}\n   \n{"prompt": "yo", "x": 2.5}\n\n', "ok.jsonl")
    rows = read_jsonl(path, {"prompt": str, "x": float})  # float accepts JSON integers
    assert [r["prompt"] for r in rows] == ["hi", "yo"]
    assert read_jsonl(path) == rows
    assert read_jsonl(path, {"x": (int, float)}) == rows


@pytest.mark.parametrize(
    ("text", "required", "message"),
    [
        ('{"prompt": "a"}\n\n{"prompt": \n', None, r"bad.jsonl:3: invalid JSON: "),
        ('{"prompt": "a"}\n[1, 2]\n', None, r"bad.jsonl:2: expected a JSON object, got list"),
        ('"just a string"\n', None, r"bad.jsonl:1: expected a JSON object, got str"),
        ('{"prompt": "a"}\n{"response": "b"}\n', {"prompt": str}, r"bad.jsonl:2: missing required key 'prompt'"),
        (
            '{"prompt": "a"}\n\n\n\n{"prompt": 7}\n',
            {"prompt": str},
            r"bad.jsonl:5: key 'prompt' must be str, got int",
        ),
        ('{"final": true}\n', {"final": int}, r"bad.jsonl:1: key 'final' must be int, got bool"),
        ('{"final": "3"}\n', {"final": (int, float)}, r"bad.jsonl:1: key 'final' must be int or float, got str"),
    ],
)
def test_read_jsonl_errors_name_file_and_line(tmp_path, text, required, message):
    path = _write(tmp_path, text)
    with pytest.raises(DataError, match=message) as err:
        read_jsonl(path, required)
    assert str(path) in str(err.value) and isinstance(err.value, ValueError)


def test_split_selects_by_field():
    rows = [{"split": "train", "i": 0}, {"split": "eval", "i": 1}, {"i": 2}, {"split": "train", "i": 3}]
    assert [r["i"] for r in split(rows, "train")] == [0, 3]
    assert [r["i"] for r in split(rows, "eval")] == [1]
    assert split(rows, "val") == []


def test_pyproject_ships_the_data_files():
    pyproject = REPO / "pyproject.toml"
    if not pyproject.is_file():
        pytest.skip("not running from a source checkout")
    text = pyproject.read_text()
    assert '"data/*.jsonl"' in text and '"data/*.md"' in text


# ------------------------------------------------------------------ safety prompts


def test_safety_prompts_sizes_and_balance(safety):
    tasks = Counter(r["task"] for r in safety)
    assert set(tasks) == {"safety", "normal"}
    assert 140 <= tasks["safety"] <= 160 and 140 <= tasks["normal"] <= 165
    categories = Counter(r["category"] for r in safety)
    assert {r["category"] for r in safety if r["task"] == "safety"} == HARM_CATEGORIES
    assert {r["category"] for r in safety if r["task"] == "normal"} == {"borderline", "benign"}
    assert all(categories[c] >= 10 for c in HARM_CATEGORIES)
    assert categories["borderline"] >= 60 and categories["benign"] >= 60


def test_safety_prompts_are_unique(safety):
    assert len({r["id"] for r in safety}) == len(safety)
    assert len({_norm(r["prompt"]) for r in safety}) == len(safety)
    assert all(re.fullmatch(rf"{r['category']}-\d{{3}}", r["id"]) for r in safety)


def test_safety_eval_split_is_stratified_and_disjoint(safety):
    assert {r["split"] for r in safety} == {"train", "eval"}
    for key in {(r["task"], r["category"]) for r in safety}:
        group = [r for r in safety if (r["task"], r["category"]) == key]
        frac = len(split(group, "eval")) / len(group)
        assert 0.2 <= frac <= 0.3, (key, frac)
    train = {_norm(r["prompt"]) for r in split(safety, "train")}
    evals = {_norm(r["prompt"]) for r in split(safety, "eval")}
    assert train and evals and not train & evals


# ------------------------------------------------------------------ refusal demos


def test_refusal_demos_use_only_train_prompts(safety):
    demos = read_jsonl(builtin("refusal_demos"), {"prompt": str, "response": str, "task": str})
    assert 70 <= len(demos) <= 90
    by_prompt = {r["prompt"]: r for r in safety}
    for demo in demos:
        source = by_prompt[demo["prompt"]]  # KeyError = a prompt not in safety_prompts
        assert source["split"] == "train", demo["prompt"]
        assert source["task"] == demo["task"]
        assert 0 < len(demo["response"]) <= 400
    tasks = Counter(d["task"] for d in demos)
    assert 35 <= tasks["safety"] <= 45 and 35 <= tasks["normal"] <= 45
    assert sum(by_prompt[d["prompt"]]["category"] == "borderline" for d in demos) >= 10
    assert len({d["prompt"] for d in demos}) == len(demos)
    assert len({d["response"] for d in demos}) == len(demos)


# ------------------------------------------------------------------ refusal-judge labels


def test_judge_labels_are_balanced_and_split(safety):
    rows = read_jsonl(builtin("judge_labelled"), {"prompt": str, "response": str, "refusal": int, "split": str})
    assert 200 <= len(rows) <= 280
    assert {r["refusal"] for r in rows} == {0, 1}
    assert 0.45 <= sum(r["refusal"] for r in rows) / len(rows) <= 0.55
    assert {r["split"] for r in rows} == {"fit", "val"}
    for label in (0, 1):
        group = [r for r in rows if r["refusal"] == label]
        assert 0.25 <= len(split(group, "val")) / len(group) <= 0.35
    assert len({(r["prompt"], r["response"]) for r in rows}) == len(rows)
    assert len({_norm(r["response"]) for r in rows}) == len(rows)
    assert {r["prompt"] for r in rows} <= {r["prompt"] for r in safety}
    # hard cases exist on both sides: compliances that sound apologetic, refusals without the usual words
    assert sum(1 for r in rows if r["refusal"] == 0 and REFUSAL_WORDS.search(r["response"])) >= 15
    assert sum(1 for r in rows if r["refusal"] == 1 and not REFUSAL_WORDS.search(r["response"])) >= 15
    # refusal is not the same thing as "the prompt was harmful"
    task = {r["prompt"]: r["task"] for r in safety}
    assert sum(1 for r in rows if r["refusal"] == 1 and task[r["prompt"]] == "normal") >= 15
    assert sum(1 for r in rows if r["refusal"] == 0 and task[r["prompt"]] == "safety") >= 15


# ------------------------------------------------------------------ alpaca-like


def test_alpaca_like_format_and_split():
    rows = read_jsonl(
        builtin("alpaca_like"), {"instruction": str, "input": str, "output": str, "split": str}
    )
    assert 140 <= len(rows) <= 160
    assert {r["split"] for r in rows} == {"train", "eval"}
    assert 0.15 <= len(split(rows, "eval")) / len(rows) <= 0.25
    assert len({(r["instruction"], r["input"]) for r in rows}) == len(rows)
    assert all(r["instruction"].strip() and r["output"].strip() for r in rows)
    assert 0.3 <= sum(r["input"] == "" for r in rows) / len(rows) <= 0.7
    assert len({r["category"] for r in rows}) >= 7


# ------------------------------------------------------------------ arithmetic (GSM8K-like)

_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _evaluate(expr: str) -> Fraction:
    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return Fraction(str(node.value))
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](walk(node.left), walk(node.right))
        raise AssertionError(f"unexpected expression {expr!r}")

    return walk(ast.parse(expr, mode="eval"))


ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>=]+)>>(\S*)")


def test_arithmetic_answers_are_gsm8k_style_and_correct(arithmetic):
    for row in arithmetic:
        final = row["final"]
        assert not isinstance(final, bool) and final > 0
        lines = row["answer"].split("\n")
        assert lines[-1] == f"#### {final}" and row["answer"].count("####") == 1
        annotations = ANNOTATION.findall(row["answer"])
        assert len(annotations) >= 2, row["answer"]
        assert row["answer"].count("<<") == len(annotations)
        for expr, value, after in annotations:
            assert _evaluate(expr) == Fraction(value), (expr, value)
            assert after.startswith(value), (value, after)  # "<<a*b=c>>c" writes the result out
            assert f"{expr} = <<{expr}=" in row["answer"]
        assert Fraction(annotations[-1][1]) == final


def test_arithmetic_counts_splits_and_uniqueness(arithmetic):
    assert 380 <= len(arithmetic) <= 420
    assert len({r["question"] for r in arithmetic}) == len(arithmetic)
    assert {r["split"] for r in arithmetic} == {"train", "eval"}
    assert 0.18 <= len(split(arithmetic, "eval")) / len(arithmetic) <= 0.22
    templates = Counter(r["template"] for r in arithmetic)
    assert set(templates) == set(make_arithmetic.TEMPLATES) and len(templates) >= 10
    assert {r["template"] for r in split(arithmetic, "eval")} == set(templates)


def test_arithmetic_generator_reproduces_the_packaged_file(tmp_path):
    packaged = builtin("arithmetic").read_bytes()
    assert make_arithmetic.render(make_arithmetic.generate()).encode("utf-8") == packaged
    out = tmp_path / "arith.jsonl"
    assert make_arithmetic.main(["--out", str(out)]) == 0
    assert out.read_bytes() == packaged
    assert make_arithmetic.main(["--check", "--out", str(out)]) == 0
    out.write_bytes(packaged[:-1])
    assert make_arithmetic.main(["--check", "--out", str(out)]) == 1
