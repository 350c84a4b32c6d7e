"""What the generators of the built-in data sets share: the JSONL text they write and their command line
(``--out``, ``--check`` to compare the packaged file with the generator's output)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path

__all__ = ["generator_main", "render"]


def render(rows: list[dict]) -> str:
    """JSONL text exactly as written to disk."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def generator_main(argv: list[str] | None, generate: Callable[[], list[dict]], default_out: Path,
                   description: str) -> int:
    """Write ``generate()``'s rows to ``--out`` (default ``default_out``), or with ``--check`` compare them with it
    (exit 1 when they differ)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=default_out, help=f"output file (default: {default_out})")
    parser.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing; exit 1 if different"
    )
    args = parser.parse_args(argv)
    text = render(generate())
    if args.check:
        same = args.out.is_file() and args.out.read_bytes() == text.encode("utf-8")
        print(f"{args.out}: {'up to date' if same else 'DIFFERS from the generator output'}")
        return 0 if same else 1
    args.out.write_bytes(text.encode("utf-8"))
    print(f"wrote {args.out} ({text.count(chr(10))} rows)")
    return 0
