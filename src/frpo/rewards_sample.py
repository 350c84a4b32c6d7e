"""Sampled rewards of a model per held-out prompt: the forgetting floor's input (``frpo sample-rewards``).

The forgetting floor (:mod:`frpo.floor`) bounds from below the mean reward of every model within KL ρ of an RL
model π, from rewards of completions *sampled from π*: n per prompt, so that the log-mean-exp of each prompt can
be estimated (and jackknifed). :func:`sample_rewards` draws them for the probes the forgetting tracker measures
(``frpo.tracks.get_track(spec["track"]).probes(spec)``: the same held-out prompts and judges), so that the floor
and the tracked fine-tuning points (``P_reward_sampled`` against ``kl_per_sequence_sampled``, :mod:`frpo.track`)
speak of the same prompts, the same reward and the same π.

π is the model's own distribution: ``temperature`` 1 and ``top_p`` 1 (the defaults) sample it; other values sample
another model, whose floor is not the RL model's. The tracker's KL is taken against the RL model as its fine-tuning
loads it, so the model is loaded here in the same dtype (the precision's master dtype, :func:`frpo.training.
precision`: float32 on the CPU and under ``bf16-mixed``), unless ``samples.dtype`` says otherwise.

``spec`` (built by the workflow's ``samples_spec``): ``track``, ``device``, ``seed``, ``data``, ``judges``,
``track_forgetting`` (``n_prompts``, ...), optionally ``precision``, and ``samples``: ``n`` (completions per
prompt), ``max_new_tokens``, ``temperature``, ``top_p``, ``batch_size`` (prompts' completions per generate call).

Output, written atomically: a JSONL file, one line per (probe, prompt) in the probe's order,
``{"probe", "prompt_index", "prompt", "rewards": [n floats]}`` (what ``frpo floor --probe`` and ``frpo collect
rewards`` read), and :func:`summary_path` beside it: the counts, each probe's mean reward and seed, the exact
generation config (:func:`frpo.generation.generation_record`), the dtype and the seconds taken.

Each probe is sampled under a seed of its own, from ``spec["seed"]`` and the probe's name, so a probe's rewards
do not depend on which other probes the track has; a fixed seed repeats the file exactly on one device.
"""

from __future__ import annotations

import json
import math
import time
import zlib
from pathlib import Path

__all__ = ["probe_seed", "read_rewards", "sample_rewards", "sampling_options", "summary_path"]


def summary_path(out: str | Path) -> Path:
    """The summary written beside the rewards file ``out``: ``rewards.jsonl`` -> ``rewards.summary.json``."""
    return Path(out).with_suffix(".summary.json")


def probe_seed(seed: int, probe: str) -> int:
    """The sampling seed of probe ``probe`` under the run's ``seed`` (independent of the other probes)."""
    return int(seed) * 1_000_003 + zlib.crc32(probe.encode())


def sampling_options(spec: dict) -> dict:
    """``spec["samples"]`` checked, with the defaults filled in (temperature 1, top_p 1, batch size 16; the
    tracker's ``track_forgetting.max_new_tokens`` when ``samples.max_new_tokens`` is absent)."""
    samples = spec.get("samples")
    if not isinstance(samples, dict):
        raise ValueError("samples: missing (an object with n, max_new_tokens, temperature, top_p, batch_size)")
    known = {"n", "max_new_tokens", "temperature", "top_p", "top_k", "batch_size", "dtype"}
    unknown = sorted(set(samples) - known)
    if unknown:
        raise ValueError(f"samples: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    max_new = samples.get("max_new_tokens", (spec.get("track_forgetting") or {}).get("max_new_tokens"))
    opts = {"n": samples.get("n"), "max_new_tokens": max_new, "temperature": samples.get("temperature", 1.0),
            "top_p": samples.get("top_p", 1.0), "top_k": samples.get("top_k", 0),
            "batch_size": samples.get("batch_size", 16)}
    for key in ("n", "max_new_tokens", "batch_size"):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            hint = " (or track_forgetting.max_new_tokens)" if key == "max_new_tokens" else ""
            raise ValueError(f"samples.{key}{hint}: must be an integer >= 1, got {value!r}")
    if isinstance(opts["top_k"], bool) or not isinstance(opts["top_k"], int) or opts["top_k"] < 0:
        raise ValueError(f"samples.top_k: must be an integer >= 0 (0: no top-k), got {opts['top_k']!r}")
    for key, upper in (("temperature", math.inf), ("top_p", 1.0)):
        value = opts[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= upper:
            raise ValueError(f"samples.{key}: must be a number in (0, {upper}], got {value!r}")
        opts[key] = float(value)
    return opts


def _dtype(spec: dict):
    """The dtype to sample in: ``samples.dtype``, else the precision's master dtype (see the module docstring)."""
    from .models import as_dtype
    from .training import precision

    name = spec["samples"].get("dtype") or precision(spec)["load_dtype"]
    return as_dtype(name, "samples.dtype")


def _scores(probe, prompts: list, texts: list[str]) -> list[float]:
    """The probe's judge on ``texts``, checked: one finite number per completion."""
    scores = list(probe.judge.score(prompts, texts))
    if len(scores) != len(texts):
        raise ValueError(f"probe {probe.name!r}: the judge returned {len(scores)} scores for {len(texts)} "
                         "completions")
    out = []
    for s in scores:
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not math.isfinite(s):
            raise ValueError(f"probe {probe.name!r}: the judge returned {s!r}, not a finite number")
        out.append(float(s))
    return out


def sample_rewards(spec: dict, model_dir: str | Path, out: str | Path) -> dict:
    """Sample ``samples.n`` completions of every probe prompt from the model in ``model_dir``, score them with
    the probe's judge, write the rewards to ``out`` and the summary beside it; return the summary."""
    import torch

    from .generation import generate
    from .io import atomic_file, atomic_write_text
    from .models import load_causal_lm
    from .tracks import get_track

    start = time.perf_counter()
    opts = sampling_options(spec)
    seed = int(spec.get("seed", 0))
    device = spec.get("device", "cpu")
    dtype = _dtype(spec)
    probes = get_track(spec["track"]).probes(spec)
    model, tokenizer = load_causal_lm(model_dir, device, dtype=dtype)
    n = opts["n"]
    lines, per_probe, generation = [], {}, None
    for probe in probes:
        # prompt-major: the n completions of a prompt sit side by side, mostly in one batch of equal prompts
        prompts = [p for p in probe.prompts for _ in range(n)]
        with torch.random.fork_rng(devices=[torch.cuda.current_device()] if torch.cuda.is_available() else []):
            torch.manual_seed(probe_seed(seed, probe.name))
            sampled = generate(model, tokenizer, prompts, max_new_tokens=opts["max_new_tokens"], do_sample=True,
                               temperature=opts["temperature"], top_p=opts["top_p"], top_k=opts["top_k"],
                               batch_size=opts["batch_size"])
        generation = sampled.config
        scores = _scores(probe, prompts, sampled.texts)
        for i, prompt in enumerate(probe.prompts):
            lines.append({"probe": probe.name, "prompt_index": i, "prompt": prompt,
                          "rewards": scores[i * n:(i + 1) * n]})
        per_probe[probe.name] = {"prompts": len(probe.prompts), "samples": len(scores),
                                 "mean_reward": sum(scores) / len(scores), "seed": probe_seed(seed, probe.name)}
        print(f"[sample-rewards] {probe.name}: {len(probe.prompts)} prompts x {n} samples, mean reward "
              f"{per_probe[probe.name]['mean_reward']:.4f}", flush=True)
    with atomic_file(out) as tmp:
        tmp.write_text("".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    summary = {"track": spec["track"], "model": str(model_dir), "rewards": str(out), "seed": seed, "n": n,
               "lines": len(lines), "probes": per_probe, "samples": opts, "generation": generation,
               "device": device, "dtype": str(dtype).removeprefix("torch."),
               "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_text(summary_path(out), json.dumps(summary, indent=2) + "\n")
    return summary


def read_rewards(path: str | Path) -> list[dict]:
    """The lines of a rewards file written by :func:`sample_rewards`, checked: each an object with ``probe``
    (str), ``prompt_index`` (int) and ``rewards`` (a non-empty list of finite numbers). Errors name the file and
    line."""
    from .io import json_lines

    rows = []
    for i, row in json_lines(path):
        rewards = row.get("rewards") if isinstance(row, dict) else None
        if (not isinstance(row, dict) or not isinstance(row.get("probe"), str)
                or isinstance(row.get("prompt_index"), bool) or not isinstance(row.get("prompt_index"), int)
                or not isinstance(rewards, list) or not rewards
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                           for v in rewards)):
            raise ValueError(f"{path}:{i}: expected an object with probe (a string), prompt_index (an integer) "
                             "and rewards (a non-empty list of finite numbers)")
        rows.append(row)
    return rows
