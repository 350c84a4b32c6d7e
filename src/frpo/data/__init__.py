"""Small built-in data sets for the CPU demo, and a strict JSONL reader.

The files in this package are original, CPU-demo-scale stand-ins for the paper's data (WildJailbreak /
Rainbow / Aegis harmful prompts, OR-Bench benign prompts, Alpaca, GSM8K); see ``README.md`` beside this
module. Refer to them by name::

    from frpo.data import builtin, read_jsonl, resolve, split

    rows = read_jsonl(resolve("builtin:safety_prompts"), required={"prompt": str, "task": str})
    eval_rows = split(rows, "eval")

``resolve`` also accepts an ordinary path, so configs can point at a user's own JSONL file instead.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

__all__ = [
    "BUILTIN_NAMES", "BUILTIN_PREFIX", "DATA_DIR", "SAFETY_PROMPT_FIELDS", "DataError", "builtin", "read_jsonl",
    "read_safety_prompts", "resolve", "split", "spread", "take",
]

#: Directory holding the packaged data files.
DATA_DIR: Path = Path(__file__).resolve().parent

#: Names accepted by :func:`builtin` (each is ``DATA_DIR / f"{name}.jsonl"``).
BUILTIN_NAMES: tuple[str, ...] = (
    "safety_prompts",
    "refusal_demos",
    "judge_labelled",
    "alpaca_like",
    "arithmetic",
    "math_problems",
    "code_instruct",
    "toy_prompts",
    "toy_demos",
    "toy_instructions",
    "toy_arithmetic",
)

#: Prefix that makes :func:`resolve` look a name up among the built-in files.
BUILTIN_PREFIX = "builtin:"

#: The fields every row of a safety-prompts file has (also what the config check asks of ``data.safety_prompts``).
SAFETY_PROMPT_FIELDS: dict[str, type] = {"prompt": str, "task": str, "split": str}


class DataError(ValueError):
    """A data file is malformed; the message names the file and, where it applies, the 1-based line."""


def builtin(name: str) -> Path:
    """Path of the packaged file ``name`` (e.g. ``"safety_prompts"``; a ``.jsonl`` suffix is accepted)."""
    stem = name[: -len(".jsonl")] if name.endswith(".jsonl") else name
    if stem not in BUILTIN_NAMES:
        known = ", ".join(BUILTIN_NAMES)
        raise ValueError(f"unknown built-in data set {name!r} (known: {known})")
    path = DATA_DIR / f"{stem}.jsonl"
    if not path.is_file():  # only if the package was installed without its data files
        raise FileNotFoundError(f"built-in data set {stem!r} is missing from the installed package: {path}")
    return path


def resolve(spec: str | os.PathLike) -> Path:
    """``"builtin:NAME"`` -> the packaged file; anything else is a filesystem path that must exist."""
    text = os.fspath(spec)
    if text.startswith(BUILTIN_PREFIX):
        return builtin(text[len(BUILTIN_PREFIX) :].strip())
    path = Path(text).expanduser()
    if not path.is_file():
        what = "is a directory, not a file" if path.is_dir() else "not found"
        raise FileNotFoundError(f"data file {text!r} {what}")
    return path


def _type_name(types: type | tuple[type, ...]) -> str:
    if isinstance(types, tuple):
        return " or ".join(t.__name__ for t in types)
    return types.__name__


def _has_type(value: object, types: type | tuple[type, ...]) -> bool:
    wanted = types if isinstance(types, tuple) else (types,)
    if isinstance(value, bool):  # JSON true/false are not numbers, even though bool subclasses int
        return bool in wanted
    if isinstance(value, int) and float in wanted:  # JSON 3 is a fine float
        return True
    return isinstance(value, wanted)


def read_jsonl(
    path: str | os.PathLike, required: Mapping[str, type | tuple[type, ...]] | None = None
) -> list[dict]:
    """Read a JSON-lines file: one JSON object per line, empty (whitespace-only) lines skipped.

    ``required`` maps keys every row must have to their type (or a tuple of types); ``float`` accepts JSON
    integers, and ``int``/``float`` never accept ``true``/``false``. Raises :class:`DataError` naming the
    file and 1-based line for invalid JSON, a row that is not an object, a missing key, or a wrong type;
    :class:`FileNotFoundError` if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(f"{where}: invalid JSON: {err.msg} (column {err.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            for key, types in (required or {}).items():
                if key not in row:
                    raise DataError(f"{where}: missing required key {key!r}")
                if not _has_type(row[key], types):
                    raise DataError(
                        f"{where}: key {key!r} must be {_type_name(types)}, got {type(row[key]).__name__}"
                    )
            rows.append(row)
    return rows


def split(rows: Iterable[Mapping], name: str) -> list:
    """The rows whose ``"split"`` field equals ``name`` (e.g. ``"train"``, ``"eval"``, ``"fit"``, ``"val"``)."""
    return [row for row in rows if row.get("split") == name]


def read_safety_prompts(spec: str | os.PathLike, split_name: str, task: str | None = None) -> list[dict]:
    """The rows of the safety-prompts file ``spec`` (see :func:`resolve`) in split ``split_name``, and of task
    ``task`` (``"safety"`` or ``"normal"``) when given. Every row of the file is checked, not just these."""
    rows = split(read_jsonl(resolve(spec), required=SAFETY_PROMPT_FIELDS), split_name)
    return rows if task is None else [r for r in rows if r["task"] == task]


def take(rows: list, n: int, key: str, what: str = "rows") -> list:
    """Exactly ``n`` of ``rows``, at even intervals (:func:`spread`); a count above what there is is an error naming
    the config ``key`` (a configured count is never cut silently)."""
    if n > len(rows):
        raise ValueError(f"{key}: {n} asked for, but there are only {len(rows)} {what}")
    return spread(rows, n)


def spread(rows: list, n: int | None) -> list:
    """``n`` rows taken at even intervals (so every category of a file sorted by category is represented);
    all rows when ``n`` is None or not smaller than ``len(rows)``."""
    if n is None or n >= len(rows):
        return list(rows)
    return [rows[(i * len(rows)) // n] for i in range(n)]
