"""The shipped configs as tests use them: a copy of a config with some of its tracks, its repository-relative
paths (test fixtures) made absolute, so that a workflow run in another working directory reads the same files."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _absolute(node):
    if isinstance(node, dict):
        return {k: _absolute(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_absolute(v) for v in node]
    if isinstance(node, str) and node.startswith("tests/"):
        return str(ROOT / node)
    return node


def load_config(file: str = "smoke.yaml", tracks: list[str] | None = None, **top) -> dict:
    """``config/<file>`` with only ``tracks`` (default: all), repository-relative paths made absolute, and the
    top-level keys ``top`` replaced."""
    config = yaml.safe_load((ROOT / "config" / file).read_text())
    if tracks is not None:
        config["tracks"] = {t: config["tracks"][t] for t in tracks}
    config = _absolute(config)
    config.update(top)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path
