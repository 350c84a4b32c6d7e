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


#: the environment a dry run of config/paper.yaml needs: its API judges' key is checked before any job starts
#: (a placeholder: a dry run calls no API)
PAPER_ENV = {"OPENAI_API_KEY": "sk-placeholder-for-dry-runs"}


def paper_files(workdir: Path) -> Path:
    """The local files config/paper.yaml's safety experiments read, under ``workdir`` (the working directory of a
    run), as stand-ins: a 40-row parquet in the public safety prompts' schema, and the test fixtures for
    HarmBench's behaviours and StrongREJECT's small set. A dry run checks that they exist; nothing reads them."""
    import shutil

    import pandas as pd

    data = Path(workdir) / "data" / "safety"
    data.mkdir(parents=True, exist_ok=True)
    abilities = ["refusal", "wildjailbreak", "rainbow", "aegis"] * 10
    pd.DataFrame({"prompt": [[{"role": "user", "content": f"prompt {i}"}] for i in range(len(abilities))],
                  "ability": abilities}).to_parquet(data / "train_lambda_0.5.parquet")
    fixtures = ROOT / "tests" / "fixtures" / "evals"
    shutil.copy(fixtures / "harmbench_behaviors_tiny.csv", data / "harmbench_behaviors_text_all.csv")
    shutil.copy(fixtures / "strongreject_tiny.csv", data / "strongreject_small_dataset.csv")
    return data
