"""Stage 4, evaluations: one module per benchmark, each with ``evaluate(model_path, cfg) -> dict``.

``run_eval(name, model_path, cfg, out_path)`` runs one benchmark by name and writes its result JSON, which
records the model, the data, the judge and its version, the generation settings and the timings.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from pathlib import Path

from ..io import atomic_write_text, update_hash

__all__ = ["BENCHMARKS", "DEFAULT_JUDGES", "eval_judge", "model_fingerprint", "run_eval", "strongreject_dataset"]

#: benchmark name -> module in this package that defines ``evaluate(model_path, cfg) -> dict``
BENCHMARKS = {
    # CPU demo stand-ins, on the project's own held-out data
    "refusal": "refusal",          # refusal rate on held-out harmful prompts (the demo's HarmBench stand-in)
    "over_refusal": "refusal",     # refusal rate on held-out benign, borderline-looking prompts (lower is better)
    "arithmetic": "arithmetic",    # accuracy on held-out GSM8K-like word problems (the demo's GSM8K stand-in)
    # the paper's benchmarks
    "harmbench": "harmbench",      # refusal rate = 1 - ASR on the standard behaviours (fixed subset or all)
    "strongreject": "strongreject",  # mean StrongREJECT score (rubric or fine-tuned judge), lower is better
    "math500": "math500",          # lm-eval minerva_math500, math_verify
    "gsm8k_maj8": "gsm8k",         # lm-eval gsm8k_cot_self_consistency with 8 samples, maj@8
    "mmlu": "mmlu",                # lm-eval mmlu, 5-shot
    "ifeval": "ifeval",            # lm-eval ifeval
    "mbpp_plus": "evalplus_eval",  # EvalPlus MBPP+, pass@1 over base + plus tests
    "humaneval_plus": "evalplus_eval",  # EvalPlus HumanEval+
}

#: the judge a judged benchmark uses when its config section names none (the paper's API judges)
DEFAULT_JUDGES = {"harmbench": "gpt4o_harmbench", "strongreject": "strongreject_rubric"}


def eval_judge(section: dict, benchmark: str) -> dict:
    """The judge of a judged benchmark's config section as a dict with a ``name``: its ``judge`` (a dict, or just
    a name) or the benchmark's default. Used by the benchmark and by the key check at DAG start."""
    judge = section.get("judge") or {}
    judge = {"name": judge} if isinstance(judge, str) else dict(judge)
    judge.setdefault("name", DEFAULT_JUDGES[benchmark])
    return judge


def strongreject_dataset(section: dict) -> tuple[str, str | None, str]:
    """StrongREJECT's prompt set from its config section: ``(set name, CSV path, config key of the path)``.
    ``dataset`` names a set of ``datasets`` ("small", the default, or "full") or is a CSV path itself; the path is
    None when the named set is not configured. Used by the benchmark and by the config check at DAG start."""
    which = str(section.get("dataset", "small"))
    datasets = section.get("datasets") or {}
    if which in datasets:
        return which, str(datasets[which]), f"eval.strongreject.datasets.{which}"
    if which in ("small", "full"):
        return which, None, f"eval.strongreject.datasets.{which}"
    return Path(which).stem, which, "eval.strongreject.dataset"


def model_fingerprint(model_path: str | Path) -> str:
    """SHA-256 over the model directory's weight and config files (names and bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for f in sorted(Path(model_path).rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".json", ".bin", ".model", ".txt"}:
            digest.update(f.name.encode())
            update_hash(digest, f)
    return digest.hexdigest()[:16]


def run_eval(name: str, model_path: str | Path, cfg: dict, out_path: str | Path) -> dict:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {sorted(BENCHMARKS)})")
    module = importlib.import_module(f"{__name__}.{BENCHMARKS[name]}")
    start = time.perf_counter()
    result = module.evaluate(model_path, {**cfg, "benchmark": name})
    result = {
        "benchmark": name,
        "model_path": str(model_path),
        "model_sha256_16": model_fingerprint(model_path),
        **result,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out_path, json.dumps(result, indent=2) + "\n")
    return result
