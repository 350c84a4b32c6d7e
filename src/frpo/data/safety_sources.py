"""The safety track's paper data: the 2000-prompt RL set and the two downstream fine-tuning sets (spec §1.2,
§2.1, §2.2).

All network access of the safety track's data lives here. The hub loaders take ``load_dataset=None`` (then
``datasets.load_dataset``), so tests pass an offline double, and a ``revision`` pinned to a dataset commit.

* :func:`alpaca_rows`: ``tatsu-lab/alpaca`` train, its first 40,000 rows, the first 50 held out (``eval``), as
  the public ``SFT_alpaca.py`` draws them (spec §2.1).
* :func:`gsm8k_rows`: ``openai/gsm8k`` "main" train (7,473 rows), the first 50 held out, with the worked answer
  cut before ``####`` as the public ``SFT_gsm8k.py`` trains on it (spec §2.2) and the final number kept apart.
* :func:`safety_prompt_rows`: the public ``training/data/train_lambda_0.5.parquet`` (a local file: the public
  repository ships it, no hub holds it), mapped to tasks and split exactly as ``FRPO_training_mistral.py`` does
  (spec §1.2): a stratified ``train_test_split`` holding out 2.5% (50 of 2000).

Where the public code failed obscurely or silently on malformed data, these refuse it by name instead: a GSM8K row
without ``####`` (the public code raised ``UnboundLocalError``), and a parquet row whose ``ability`` is none of the
four (the public code dropped it silently through ``task.notna()``).

The pinned commits below were taken from public projects that pin these datasets (no hub access here to confirm
them); pass ``revision="main"`` to follow the current head instead.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Callable

__all__ = [
    "ABILITY_TASK", "ALPACA_REVISION", "ALPACA_ROWS", "ALPACA_SOURCE", "GSM8K_CONFIG", "GSM8K_REVISION",
    "GSM8K_SOURCE", "N_EVAL", "SAFETY_EVAL_FRACTION", "SAFETY_SPLIT_SEED", "alpaca_rows", "gsm8k_final",
    "gsm8k_rows", "safety_prompt_rows", "safety_split",
]

ALPACA_SOURCE = "tatsu-lab/alpaca"
ALPACA_REVISION = "dce01c9b08f87459cf36a430d809084718273017"
#: the public Alpaca SFT's ``max_samples`` (52,002 rows exist)
ALPACA_ROWS = 40000
GSM8K_SOURCE = "openai/gsm8k"
GSM8K_CONFIG = "main"
GSM8K_REVISION = "cc7b047b6e5bb11b4f1af84efc572db110a51b3c"
#: both public SFT scripts hold out their first 50 rows (``val_size = 50``)
N_EVAL = 50
#: the parquet's ``ability`` -> the track's task (``FRPO_training_mistral.py``): the OR-Bench benign prompts are
#: labelled ``refusal`` (prompts a model over-refuses), the three harmful sources ``safety``
ABILITY_TASK = {"refusal": "normal", "wildjailbreak": "safety", "rainbow": "safety", "aegis": "safety"}
SAFETY_EVAL_FRACTION = 0.025
SAFETY_SPLIT_SEED = 42


def _default_load_dataset() -> Callable:
    from datasets import load_dataset

    return load_dataset


def _first_eval(n_eval: int, rows: list[dict]) -> list[dict]:
    return [{**r, "split": "eval" if i < n_eval else "train"} for i, r in enumerate(rows)]


def _text(row: dict, field: str, where: str, optional: bool = False) -> str:
    value = row.get(field)
    if value is None and optional:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {field!r} must be a string, got {type(value).__name__}")
    return value


# --------------------------------------------------------------------------------------------------------------
# Hub loaders (downstream fine-tuning)


def alpaca_rows(
    n_rows: int = ALPACA_ROWS,
    n_eval: int = N_EVAL,
    source: str = ALPACA_SOURCE,
    revision: str = ALPACA_REVISION,
    load_dataset: Callable | None = None,
) -> list[dict]:
    """The first ``n_rows`` rows of the ``train`` split (all of them if fewer) as ``{"instruction", "input",
    "output", "split"}``, the first ``n_eval`` ``"eval"`` and the rest ``"train"`` (source order kept). As the
    public script formats them, ``instruction`` and ``output`` are stripped and a missing ``input`` is ``""``;
    the SFT format ``alpaca`` (:func:`frpo.sft.sft_rows`) builds the "### Instruction:" prompt from them."""
    if n_rows <= n_eval:
        raise ValueError(f"alpaca: n_rows ({n_rows}) must exceed n_eval ({n_eval}), or no row is left to train on")
    load = load_dataset or _default_load_dataset()
    rows = []
    for i, row in enumerate(itertools.islice(load(source, split="train", revision=revision), n_rows)):
        where = f"{source} train row {i}"
        rows.append({"instruction": _text(row, "instruction", where).strip(),
                     "input": _text(row, "input", where, optional=True),
                     "output": _text(row, "output", where).strip()})
    return _first_eval(n_eval, rows)


def gsm8k_final(answer: str, where: str = "gsm8k") -> tuple[str, float]:
    """A GSM8K answer split at its (first) ``####``: the worked solution before it, stripped, and the final number
    after it as a float (thousands commas removed). No ``####``, or no number after it, is an error naming
    ``where``."""
    pos = answer.find("####")
    if pos == -1:
        raise ValueError(f"{where}: the answer has no '####' line (the final number): {answer[-80:]!r}")
    final = answer[pos + len("####"):].strip().replace(",", "")
    try:
        value = float(final)
    except ValueError:
        raise ValueError(f"{where}: the text after '####' is not a number: {final!r}") from None
    return answer[:pos].strip(), value


def gsm8k_rows(
    n_eval: int = N_EVAL,
    source: str = GSM8K_SOURCE,
    config: str = GSM8K_CONFIG,
    revision: str = GSM8K_REVISION,
    load_dataset: Callable | None = None,
) -> list[dict]:
    """The ``train`` split of config ``config`` (7,473 rows) as ``{"question", "answer", "final", "split"}``, the
    first ``n_eval`` ``"eval"`` and the rest ``"train"`` (source order kept).

    ``answer`` is the worked solution *without* its ``#### <number>`` line, ``<<calc>>`` annotations kept: the
    public GSM8K SFT trained on that text, and we keep it so for fidelity (spec §5 item 11), though a model so
    fine-tuned never learns to state a final answer in GSM8K's format. ``final`` is that number, kept apart for
    grading. A row without ``####`` is an error naming the row (0-based index); the public code crashed there
    with an ``UnboundLocalError``."""
    load = load_dataset or _default_load_dataset()
    rows = []
    for i, row in enumerate(load(source, config, split="train", revision=revision)):
        where = f"{source} ({config}) train row {i}"
        answer, final = gsm8k_final(_text(row, "answer", where), where)
        rows.append({"question": _text(row, "question", where), "answer": answer, "final": final})
    if len(rows) <= n_eval:
        raise ValueError(f"{source} ({config}) train: {len(rows)} rows, no more than the {n_eval} held out")
    return _first_eval(n_eval, rows)


# --------------------------------------------------------------------------------------------------------------
# The RL prompts (a local parquet file)


def safety_split(tasks: list[str], test_size: float = SAFETY_EVAL_FRACTION,
                 seed: int = SAFETY_SPLIT_SEED) -> set[int]:
    """The held-out row indices, exactly as the public script draws them: ``train_test_split(range(n),
    test_size=0.025, random_state=42, stratify=tasks)`` (sklearn), so the held-out set has each task's share."""
    from sklearn.model_selection import train_test_split

    _, held_out = train_test_split(range(len(tasks)), test_size=test_size, random_state=seed, stratify=tasks)
    return set(held_out)


def _user_content(prompt, where: str) -> str:
    if (not isinstance(prompt, list) or len(prompt) != 1 or not isinstance(prompt[0], dict)
            or prompt[0].get("role") != "user"):
        raise ValueError(f"{where}: 'prompt' must be a list of exactly one {{'role': 'user', 'content': ...}} "
                         f"message, got {str(prompt)[:120]}")
    content = prompt[0].get("content")
    if not isinstance(content, str) or not content.strip():
        raise ValueError(f"{where}: the user message's 'content' must be a non-empty string, got {content!r}")
    return content


def safety_prompt_rows(path: str | os.PathLike) -> tuple[list[dict], dict]:
    """The prompts of the public RL parquet as ``{"prompt", "task", "split", "category"}`` rows in file order, and
    counts (``rows_in``, ``train``, ``eval``, ``by_ability``, ``eval_by_task``).

    Columns read: ``prompt`` (a list holding one user message) and ``ability`` (``refusal`` → task ``normal``;
    ``wildjailbreak``, ``rainbow``, ``aegis`` → ``safety``), which becomes ``category``; the others
    (``reward_model``, ``extra_info``, ...) are unused, as in the public code. The split is
    :func:`safety_split` over the rows' tasks (1950 ``train`` / 50 ``eval`` for the 2000 prompts). A malformed
    row names the file and its 0-based row index; an unknown ``ability`` names itself."""
    import pyarrow.parquet as pq

    where = os.fspath(path)
    try:
        table = pq.read_table(where)
    except Exception as err:  # pyarrow raises its own types for a file that is not parquet
        raise ValueError(f"{where}: cannot read as parquet: {err}") from err
    missing = [c for c in ("prompt", "ability") if c not in table.column_names]
    if missing:
        raise ValueError(f"{where}: missing column(s) {', '.join(map(repr, missing))} "
                         f"(columns: {', '.join(table.column_names)})")
    rows = []
    for i, (prompt, ability) in enumerate(zip(table.column("prompt").to_pylist(),
                                              table.column("ability").to_pylist(), strict=True)):
        at = f"{where}: row {i}"
        if ability not in ABILITY_TASK:
            raise ValueError(f"{at}: unknown ability {ability!r} (known: {', '.join(ABILITY_TASK)})")
        rows.append({"prompt": _user_content(prompt, at), "task": ABILITY_TASK[ability], "category": ability})
    if not rows:
        raise ValueError(f"{where}: no rows")
    try:
        held_out = safety_split([r["task"] for r in rows])
    except ValueError as err:  # sklearn: too few rows of a task to stratify
        raise ValueError(f"{where}: cannot split {len(rows)} rows stratified by task: {err}") from err
    rows = [{**r, "split": "eval" if i in held_out else "train"} for i, r in enumerate(rows)]
    info = {"rows_in": len(rows), "train": len(rows) - len(held_out), "eval": len(held_out),
            "by_ability": dict(Counter(r["category"] for r in rows)),
            "eval_by_task": dict(Counter(r["task"] for r in rows if r["split"] == "eval"))}
    return rows, info
