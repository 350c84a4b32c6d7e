"""The shared generate-and-judge step of the judged benchmarks (HarmBench, StrongREJECT, the demo's refusal rates)
and the greedy generation of the demo's arithmetic.

:func:`generate_and_judge`: greedy, chat-templated completions of the prompts (:func:`run_generation`, through the
evaluations' one generation path, :func:`frpo.evals.backend.get_backend`), saved before judging
(:func:`saved_generations`, so a judge failure loses none and a rerun reuses them), then judged through the one
judge cache (:func:`frpo.judges.cache.open_judge_cache`, :func:`frpo.judges.cache.cached_score`): one answer record
per prompt in the judges' shared shape (:mod:`frpo.judges.base`). The judge's environment (API key) is checked
before anything is generated.

Also here: a benchmark's generation settings (:func:`generation_settings`; HarmBench's and StrongREJECT's protocol
length :data:`PROTOCOL_MAX_NEW_TOKENS`), the fixed seeded subset of its items (:func:`subset_fields`), the judge a
section names (:func:`build_eval_judge`) and what the result records of it (:func:`judge_record`). Importing this
module imports neither torch nor a model.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from ..io import atomic_write_text
from ..judges import build_judge
from ..judges.base import JudgeConfigError, JudgeResponseError, missing_env
from ..judges.cache import JudgeCache, cached_score, open_judge_cache
from ..judges.local import model_fingerprint
from .registry import benchmark, eval_judge

__all__ = ["PROTOCOL_MAX_NEW_TOKENS", "Judged", "build_eval_judge", "check_env", "exclude_thinking", "fixed_subset",
           "generate_and_judge", "generation_settings", "generations_path", "judge_record", "open_cache",
           "raise_if_malformed", "run_generation", "saved_generations", "subset_fields"]

#: HarmBench's and StrongREJECT's generation length (the paper's protocol, evals.md §1): used unless the benchmark's
#: own section sets ``max_new_tokens``; never the global ``eval.generation.max_new_tokens`` (a demo's 32 tokens would
#: fail HarmBench's "very short" rule and inflate the refusal rate)
PROTOCOL_MAX_NEW_TOKENS = 512


# --------------------------------------------------------------------------------------------------------------
# Items and settings


def fixed_subset(n_total: int, subset: int | None, seed: int) -> list[int]:
    """Sorted indices of a subset of ``subset`` items out of ``n_total``, a function of ``(n_total, subset,
    seed)`` only (``random.Random(seed).sample``), so every call and every step evaluates the same items. All
    indices when ``subset`` is None or >= ``n_total``."""
    if subset is None or subset >= n_total:
        return list(range(n_total))
    if subset <= 0:
        raise ValueError(f"subset must be positive, got {subset}")
    return sorted(random.Random(int(seed)).sample(range(n_total), int(subset)))


def subset_fields(section: dict, n_available: int) -> tuple[list[int], dict]:
    """The fixed subset of a judged benchmark's section: its indices, and the result's ``subset`` (the size used,
    None when all items are used), ``subset_seed`` and ``subset_indices``."""
    seed = int(section.get("seed", 0))
    idx = fixed_subset(n_available, section.get("subset"), seed)
    partial = len(idx) < n_available
    return idx, {"subset": len(idx) if partial else None, "subset_seed": seed,
                 "subset_indices": idx if partial else None}


def exclude_thinking(text: str) -> str:
    """FRPO's reasoning-model handling: the text after ``</think>``, or "" when there is none."""
    pos = text.find("</think>")
    return text[pos + len("</think>") :].lstrip() if pos != -1 else ""


def generation_settings(cfg: dict, section: dict, *, protocol_max_new_tokens: int | None = None) -> dict:
    """Greedy, chat-templated generation settings. ``max_new_tokens`` is the benchmark section's own value, else
    ``protocol_max_new_tokens`` when the benchmark has one (HarmBench, StrongREJECT: 512), else the global
    ``eval.generation.max_new_tokens`` (the demo evals); ``max_new_tokens_from`` records which."""
    gen = dict(cfg.get("generation") or {})
    if "max_new_tokens" in section:
        max_new, source = section["max_new_tokens"], "section"
    elif protocol_max_new_tokens is not None:
        max_new, source = protocol_max_new_tokens, "protocol"
    else:
        max_new, source = gen.get("max_new_tokens", PROTOCOL_MAX_NEW_TOKENS), "eval.generation"
    return {
        "backend": "transformers",
        "do_sample": False,
        "chat_template": True,
        "max_new_tokens": int(max_new),
        "max_new_tokens_from": source,
        "batch_size": int(section.get("batch_size", gen.get("batch_size", 8))),
        "reasoning": bool(section.get("reasoning", False)),
    }


# --------------------------------------------------------------------------------------------------------------
# Generation, saved before judging


def run_generation(model_path, cfg: dict, prompts: list[str], settings: dict, sampler: dict | None = None
                   ) -> list[str]:
    """Greedy completions of ``prompts`` by the model at ``model_path`` with the backend ``settings`` name, one per
    prompt (after ``</think>`` when ``settings["reasoning"]``); ``sampler``, when given, receives what the
    backend reports about the generation config it sampled with."""
    from .backend import get_backend

    backend = get_backend(model_path, settings["backend"], device=cfg.get("device", "cpu"),
                          batch_size=settings["batch_size"])
    texts = [out[0] for out in backend.generate(prompts, max_new_tokens=settings["max_new_tokens"])]
    if sampler is not None:
        sampler.update((backend.sampling or {}).get("sampler") or {})
    del backend  # free the model before the judge loads its own
    if settings["reasoning"]:
        texts = [exclude_thinking(t) for t in texts]
    return texts


def generations_path(out_path: str | Path) -> Path:
    """Where :func:`frpo.evals.run_eval` keeps a benchmark's completions: ``<result stem>.generations.jsonl``
    beside it."""
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


# --------------------------------------------------------------------------------------------------------------
# Judging


def open_cache(cfg: dict, section: dict) -> JudgeCache:
    """The judge cache of a benchmark: its section's ``cache_dir``, else the eval's ``judge_cache_dir``, else the
    judges' default (:func:`frpo.judges.cache.open_judge_cache`)."""
    return open_judge_cache(section.get("cache_dir"), cfg.get("judge_cache_dir"))


def build_eval_judge(section: dict, bench: str) -> tuple[str, Any, dict]:
    """``(name, judge, judge config)`` of a judged benchmark's section; ValueError when the registry does not list
    that judge among the benchmark's."""
    judge_cfg = eval_judge(section, bench)
    name, allowed = judge_cfg["name"], benchmark(bench).judges
    if name not in allowed:
        raise ValueError(f"judge {name!r} is not a backend of this benchmark (choose from {list(allowed)})")
    return name, build_judge(name, **(judge_cfg.get("options") or {})), judge_cfg


def check_env(name: str, judge_cfg: dict) -> None:
    """Raise :class:`JudgeConfigError` naming the first environment variable the judge needs that is unset."""
    missing = missing_env({**judge_cfg, "name": name})
    if missing:
        raise JudgeConfigError(f"judge {name!r} needs the environment variable {missing[0]}, which is not set")


class Judged(NamedTuple):
    settings: dict         # the generation settings used
    texts: list[str]       # one completion per prompt
    answers: list[dict]    # one judge answer record per prompt (``cached``: whether the judge cache had it)
    cache_stats: dict      # the judge cache's hits, misses, malformed answers not stored
    generations: dict      # the saved completions file and whether this run reused it


def generate_and_judge(model_path, cfg: dict, section: dict, prompts: list[str], name: str, judge: Any,
                       judge_cfg: dict, *, protocol_max_new_tokens: int | None = None) -> Judged:
    """Greedy completions of ``prompts``, judged through the on-disk judge cache. The judge's environment (API key)
    is checked before any generation. The completions are saved **before** judging (:func:`saved_generations`,
    when ``cfg`` names a file, as :func:`frpo.evals.run_eval` does), so a judge failure loses none of them and a
    rerun of the same model and settings on the same prompts reuses them."""
    settings = generation_settings(cfg, section, protocol_max_new_tokens=protocol_max_new_tokens)
    check_env(name, judge_cfg)
    sampler: dict = {}
    texts, gen_record = saved_generations(model_path, cfg, settings, prompts,
                                          lambda: run_generation(model_path, cfg, prompts, settings, sampler),
                                          sampler=sampler)
    with open_cache(cfg, section) as cache:
        answers = cached_score(judge, prompts, texts, cache)
        cache_stats = cache.stats()
    return Judged({**settings, "sampler": gen_record.pop("sampler")}, texts, answers, cache_stats, gen_record)


def raise_if_malformed(samples: list[dict], run: Judged) -> None:
    """The ``on_malformed: raise`` policy: :class:`JudgeResponseError` when a sample's judge answer is malformed,
    saying where the completions are kept."""
    bad = [s for s in samples if s["malformed"]]
    if bad:
        raise JudgeResponseError(f"{len(bad)} malformed judge answer(s); first: {bad[0]['judge'].get('error')}; "
                                 f"the completions are kept in {run.generations['path']} and the malformed answers "
                                 "are not cached: a rerun asks the judge again")


def judge_record(name: str, judge: Any, judge_cfg: dict) -> dict:
    """What a result records of its judge: name, version, template version and options (never an API key)."""
    opts = {k: v for k, v in (judge_cfg.get("options") or {}).items() if k not in ("api_key",)}
    return {"name": name, "version": str(getattr(judge, "version", name)),
            "template_version": getattr(judge, "template_version", None), "options": opts}
