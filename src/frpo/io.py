"""Writing outputs so that a killed job never leaves one that looks complete: write under a temporary name in
the same directory, then rename into place (atomic on POSIX filesystems). Also the one file hasher that result
records use, and the parser of the ``LABEL=PATH`` arguments stages pass their inputs with."""

from __future__ import annotations

import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_dir", "atomic_file", "atomic_write_text", "labelled_paths", "sha256_file", "update_hash"]


def json_lines(path: str | os.PathLike):
    """``(line number, value)`` for each non-blank line of the JSON-lines file ``path``; a line that is not JSON
    raises ValueError naming the file and the line."""
    import json

    for i, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield i, json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{i}: not JSON ({err})") from err


def labelled_paths(pairs: list[str]) -> list[tuple[str, Path]]:
    """``["LABEL=PATH", ...]`` (the workflow's way of passing labelled inputs) as ``[(label, Path), ...]``."""
    out = []
    for p in pairs:
        label, sep, path = p.partition("=")
        if not sep:
            raise ValueError(f"expected LABEL=PATH, got {p!r}")
        out.append((label, Path(path)))
    return out


def update_hash(digest, path: str | os.PathLike) -> None:
    """Feed the bytes of the file at ``path`` to the hashlib object ``digest``, 1 MiB at a time."""
    with open(Path(path).expanduser(), "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    update_hash(digest, path)
    return digest.hexdigest()


class atomic_dir:
    """``with atomic_dir(final) as tmp:`` write into ``tmp``; it becomes ``final`` only if the block succeeds."""

    def __init__(self, final: str | Path):
        self.final = Path(final)
        self.tmp = self.final.with_name(f".{self.final.name}.partial")

    def __enter__(self) -> Path:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self.tmp.mkdir(parents=True)
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        shutil.rmtree(self.final, ignore_errors=True)
        self.tmp.rename(self.final)
        return False


@contextmanager
def atomic_file(final: str | Path):
    """``with atomic_file(final) as tmp:`` write the file ``tmp`` (same suffix); it replaces ``final`` on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.stem}.partial{final.suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(final: str | Path, text: str) -> None:
    with atomic_file(final) as tmp:
        tmp.write_text(text)
