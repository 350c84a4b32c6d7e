"""The math track's real data, from the Hugging Face Hub, and the contamination filter (spec §1.3, §2.3, §5.7).

All network access of the math track's data lives here. Every loader takes ``load_dataset=None`` (then
``datasets.load_dataset``), so tests pass an offline double, and a ``revision`` pinned to a dataset commit.

* :func:`math_train_rows`: MATH *train split only*, levels 3-5, from ``EleutherAI/hendrycks_math`` (one config
  per subject, the official train/test split kept). The public code read ``qwedsacf/competition_math``, a single
  12.5k split that merges MATH train and test, so its RL data contained most of the MATH500 evaluation set
  (spec §5 item 7). MATH500 is drawn from MATH test, so the train split alone should already be disjoint from it;
  :func:`drop_problems` with :func:`math500_rows` is the belt-and-braces check for duplicates across the split.
* :func:`math500_rows`: ``HuggingFaceH4/MATH-500`` (test, 500 problems), the evaluation set.
* :func:`code_instruct_rows`: ``nvidia/OpenCodeInstruct`` as the public code samples it for the code SFT
  (streaming, shuffle seed 42 with a 10,000-row buffer, the first 50,000, then ``average_test_score == "1"``).

The pinned commits below were taken from public projects that pin these datasets (no hub access here to confirm
them); pass ``revision="main"`` to follow the current head instead.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Iterable

from ..math_grading import gold_answer

__all__ = [
    "CODE_INSTRUCT_REVISION", "CODE_INSTRUCT_SOURCE", "MATH500_REVISION", "MATH500_SOURCE", "MATH_SUBJECTS",
    "MATH_TRAIN_REVISION", "MATH_TRAIN_SOURCE", "code_instruct_rows", "drop_problems", "math500_rows",
    "math_train_rows", "normalise_problem",
]

MATH_TRAIN_SOURCE = "EleutherAI/hendrycks_math"
MATH_TRAIN_REVISION = "21a5633873b6a120296cce3e2df9d5550074f4a3"
#: the configs of ``EleutherAI/hendrycks_math``, one per MATH subject (7,500 train problems in all)
MATH_SUBJECTS: tuple[str, ...] = (
    "algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory", "prealgebra",
    "precalculus",
)
MATH500_SOURCE = "HuggingFaceH4/MATH-500"
MATH500_REVISION = "6e4ed1a2a79af7d8630a6b768ec859cb5af4d3be"
CODE_INSTRUCT_SOURCE = "nvidia/OpenCodeInstruct"
CODE_INSTRUCT_REVISION = "8f3ba5bafe4d6e8db46082cf7ae6741bc370604d"

_LEVEL = re.compile(r"^\s*Level\s+([1-5])\s*$")
# TeX spacing commands; ``\quad`` only as a whole control word (not the start of ``\quadrant``).
_SPACING = re.compile(r"\\(?:[,;:! ]|q?quad(?![A-Za-z]))|~")
# ``\left``/``\right`` only as whole control words (not ``\leftarrow``, ``\rightarrow``).
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?![A-Za-z])")
_WHITESPACE = re.compile(r"\s+")


def _default_load_dataset() -> Callable:
    from datasets import load_dataset

    return load_dataset


# --------------------------------------------------------------------------------------------------------------
# Matching problems across sources


def normalise_problem(text: str) -> str:
    """A key for matching the same problem across sources. Conservative: only differences that never change the
    problem are removed, so two distinct problems cannot get the same key. In order: Unicode NFKC; ``\\$`` and
    ``$`` dropped (math delimiters and the currency sign alike); ``\\left``/``\\right`` dropped; the spacing
    commands ``\\,`` ``\\;`` ``\\:`` ``\\!`` ``\\<space>`` ``\\quad`` ``\\qquad`` and ``~`` dropped; all whitespace
    removed (TeX ignores it in math, and sources differ in line breaks and spaces around operators); case folded.
    """
    t = unicodedata.normalize("NFKC", text)
    t = t.replace("\\$", "").replace("$", "")
    t = _LEFT_RIGHT.sub("", t)
    t = _SPACING.sub(" ", t)
    t = _WHITESPACE.sub("", t)
    return t.casefold()


def drop_problems(rows: list[dict], banned: Iterable[str], field: str = "problem") -> tuple[list[dict], int]:
    """The rows whose normalised ``row[field]`` is not among the normalised ``banned`` problems (order kept), and
    how many rows were dropped."""
    keys = {normalise_problem(b) for b in banned}
    kept = [row for row in rows if normalise_problem(row[field]) not in keys]
    return kept, len(rows) - len(kept)


# --------------------------------------------------------------------------------------------------------------
# Loaders


def math_train_rows(
    levels: Iterable[int] = (3, 4, 5),
    source: str = MATH_TRAIN_SOURCE,
    revision: str = MATH_TRAIN_REVISION,
    load_dataset: Callable | None = None,
) -> list[dict]:
    """The MATH train split (every subject config of ``source``, split ``train`` only) at the given levels.

    Rows are ``{"problem", "solution", "answer", "level": int, "type"}``, subjects in :data:`MATH_SUBJECTS`
    order and the source's order within each. ``answer`` is the last ``\\boxed{}`` of the solution
    (:func:`frpo.math_grading.gold_answer`); rows whose level is not ``"Level 1"``..``"Level 5"`` (MATH has a few
    ``"Level ?"``) or whose solution has no box are skipped, since they can be neither selected nor graded.
    """
    wanted = {int(level) for level in levels}
    if not wanted or not wanted <= {1, 2, 3, 4, 5}:
        raise ValueError(f"levels must be a non-empty subset of 1..5, got {sorted(wanted)}")
    load = load_dataset or _default_load_dataset()
    rows: list[dict] = []
    for subject in MATH_SUBJECTS:
        for row in load(source, subject, split="train", revision=revision):
            m = _LEVEL.match(str(row.get("level", "")))
            if m is None or int(m.group(1)) not in wanted:
                continue
            try:
                answer = gold_answer({"solution": row["solution"]})
            except ValueError:
                continue
            rows.append({"problem": row["problem"], "solution": row["solution"], "answer": answer,
                         "level": int(m.group(1)), "type": row["type"]})
    return rows


def math500_rows(
    source: str = MATH500_SOURCE, revision: str = MATH500_REVISION, load_dataset: Callable | None = None
) -> list[dict]:
    """MATH500 (split ``test``), each row as the source gives it (``problem``, ``solution``, ``answer``,
    ``subject``, ``level``, ``unique_id``)."""
    load = load_dataset or _default_load_dataset()
    return [dict(row) for row in load(source, split="test", revision=revision)]


def code_instruct_rows(
    n_take: int = 50000,
    seed: int = 42,
    source: str = CODE_INSTRUCT_SOURCE,
    revision: str = CODE_INSTRUCT_REVISION,
    load_dataset: Callable | None = None,
) -> list[dict]:
    """The code-SFT rows ``{"input", "output"}`` as the public code draws them (spec §2.3): the ``train`` split
    streamed, ``shuffle(seed=seed, buffer_size=10000).take(n_take)``, then only the rows whose
    ``average_test_score`` is the string ``"1"`` (every unit test passed; about half of the 50,000)."""
    load = load_dataset or _default_load_dataset()
    stream = load(source, split="train", streaming=True, revision=revision)
    sample = stream.shuffle(seed=seed, buffer_size=10000).take(n_take)
    return [{"input": row["input"], "output": row["output"]} for row in sample
            if row.get("average_test_score") == "1"]
