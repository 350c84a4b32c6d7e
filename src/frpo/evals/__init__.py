"""Stage 4, evaluations: one module per benchmark, each with ``evaluate(model_path, cfg) -> dict``.

``run_eval(name, model_path, cfg, out_path)`` runs one benchmark by name and writes its result JSON, which
records the model, the data, the judge and its version, the generation settings and the timings. Judged
benchmarks save their completions next to it (``<bench>.generations.jsonl``) before judging, so that a judge
failure loses no generation (:func:`saved_generations`).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from pathlib import Path

from ..io import atomic_write_text
from ..judges.local import model_fingerprint

__all__ = ["BENCHMARKS", "DEFAULT_JUDGES", "eval_judge", "generations_path", "model_fingerprint", "run_eval",
           "saved_generations", "strongreject_dataset"]

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


def generations_path(out_path: str | Path) -> Path:
    """Where :func:`run_eval` keeps a benchmark's completions: ``<result stem>.generations.jsonl`` beside it."""
    out = Path(out_path)
    return out.with_name(f"{out.stem}.generations.jsonl")


def _prompts_sha256(prompts: list) -> str:
    return hashlib.sha256(json.dumps(prompts, ensure_ascii=False).encode("utf-8")).hexdigest()


def saved_generations(model_path, cfg: dict, settings: dict, prompts: list, generate: Callable[[], list[str]],
                      *, sampler: dict | None = None) -> tuple[list[str], dict]:
    """The completions of ``prompts``: those saved in ``cfg["generations_path"]`` when that file was written for the
    same model (fingerprint), generation ``settings`` and prompts, else ``generate()``'s, saved there (atomically)
    before they are returned, so that what comes after (judging) can fail without losing them. ``sampler``, filled
    by ``generate()``, is saved with them (not part of the match). Returns the texts and ``{"path", "reused",
    "sampler"}``. Without ``generations_path`` (a direct ``evaluate`` call) nothing is saved."""
    path = cfg.get("generations_path")
    if not path:
        return generate(), {"path": None, "reused": False, "sampler": sampler}
    path = Path(path)
    key = {"model_sha256_16": cfg.get("model_sha256_16") or model_fingerprint(model_path),
           "generation": settings, "prompts_sha256": _prompts_sha256(prompts), "n": len(prompts)}
    saved = _read_generations(path, key)
    if saved is not None:
        texts, header = saved
        return texts, {"path": str(path), "reused": True, "sampler": header.get("sampler")}
    texts = list(generate())
    if len(texts) != len(prompts):
        raise RuntimeError(f"generation returned {len(texts)} completions for {len(prompts)} prompts")
    lines = [json.dumps({**key, "sampler": sampler}, ensure_ascii=False)]
    lines += [json.dumps({"i": i, "prompt": p, "response": t}, ensure_ascii=False)
              for i, (p, t) in enumerate(zip(prompts, texts))]
    atomic_write_text(path, "\n".join(lines) + "\n")
    return texts, {"path": str(path), "reused": False, "sampler": sampler}


def _read_generations(path: Path, key: dict) -> tuple[list[str], dict] | None:
    """The saved completions and the file's header when ``path`` holds exactly ``key``'s generations, else None
    (missing, another model, settings or prompts, or an unreadable file: then they are generated again)."""
    if not path.is_file():
        return None
    try:
        rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except ValueError:
        return None
    if not rows or not isinstance(rows[0], dict) or len(rows) != key["n"] + 1:
        return None
    if {k: rows[0].get(k) for k in key} != json.loads(json.dumps(key)):
        return None
    texts = [r.get("response") for r in rows[1:]]
    if [r.get("i") for r in rows[1:]] != list(range(key["n"])) or not all(isinstance(t, str) for t in texts):
        return None
    return texts, rows[0]


def run_eval(name: str, model_path: str | Path, cfg: dict, out_path: str | Path) -> dict:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r} (known: {sorted(BENCHMARKS)})")
    module = importlib.import_module(f"{__name__}.{BENCHMARKS[name]}")
    start = time.perf_counter()
    fingerprint = model_fingerprint(model_path)
    result = module.evaluate(model_path, {**cfg, "benchmark": name, "model_sha256_16": fingerprint,
                                          "generations_path": str(generations_path(out_path))})
    result = {
        "benchmark": name,
        "model_path": str(model_path),
        "model_sha256_16": fingerprint,
        **result,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out_path, json.dumps(result, indent=2) + "\n")
    return result
