"""The evaluation registry: one record per benchmark, the only place that lists them.

A :class:`Benchmark` names the module of this package that runs it (``evaluate(model_path, cfg) -> dict``), the
eval config sections it reads (later ones override earlier ones, over its ``defaults``), the judge it uses when its
section names none and the judges it accepts (judged benchmarks only), the SLURM resources of one job, and a config
check.
The rest of the project asks the registry instead of knowing a benchmark's keys:

* :func:`check_eval_config` checks a track's ``eval`` block when the DAG starts (names known, data files present,
  judges known and their environment variables set) and raises :class:`frpo.config.ConfigError` naming the key;
* :func:`eval_sections` are the sections a run passes through to the benchmarks;
* :func:`resources` sizes a benchmark's SLURM job; :func:`options` is a benchmark's merged settings.

Importing this module imports nothing heavy (no torch, no benchmark module).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from ..judges import known_judges, missing_env

__all__ = ["BENCHMARKS", "DEFAULT_JUDGES", "QWEN_MATH_SYSTEM", "REGISTRY", "Benchmark", "benchmark",
           "check_eval_config", "eval_judge", "eval_judges", "eval_problems", "eval_sections", "judged_benchmarks",
           "options", "resources", "strongreject_dataset"]

#: Qwen2.5-Math's system instruction, MATH500's default (also the math track's; kept here so it imports lightly)
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."

#: a problem found in an eval config: (its key under the track, e.g. "eval.harmbench.behaviors", what is wrong)
Problem = tuple[str, str]


class Absent(tuple):
    """A :data:`Problem` of the machine rather than of the config: a named file or an environment variable that is
    not there (yet). A dry run reports it and plans on (frpo.config.validate_config's ``plan_only``)."""


def _frozen(d: Mapping) -> Mapping:
    return MappingProxyType(dict(d))


@dataclass(frozen=True)
class Benchmark:
    """One benchmark. ``check(eval_cfg, self)`` yields the :data:`Problem` s of a track's ``eval`` block."""

    name: str
    module: str
    doc: str
    resources: Mapping[str, int]
    sections: tuple[str, ...] = ()
    defaults: Mapping[str, Any] = field(default_factory=dict)
    choices: Mapping[str, tuple] = field(default_factory=dict)
    judge: str | None = None
    judges: tuple[str, ...] = ()
    check: Callable[[dict, Benchmark], Iterator[Problem]] | None = None

    def options(self, cfg: dict) -> dict:
        """This benchmark's settings: its ``defaults``, overridden by each of its ``sections`` of ``cfg`` in
        turn."""
        out = copy.deepcopy(dict(self.defaults))
        for section in self.sections:
            out.update(copy.deepcopy(cfg.get(section) or {}))
        return out


def eval_judge(section: dict, bench: str) -> dict:
    """The judge of a judged benchmark's config section as a dict with a ``name``: its ``judge`` (a dict, or just
    a name) or the benchmark's default. Used by the benchmark and by the key check at DAG start."""
    judge = section.get("judge") or {}
    judge = {"name": judge} if isinstance(judge, str) else dict(judge)
    judge.setdefault("name", benchmark(bench).judge)
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


# --------------------------------------------------------------------------------------------------------------
# Checks (pure: they read the config and the filesystem, and load nothing)


def _check_choices(ev: dict, bench: Benchmark) -> Iterator[Problem]:
    for section in bench.sections:
        for key, allowed in bench.choices.items():
            value = (ev.get(section) or {}).get(key)
            if value is not None and value not in allowed:
                yield f"eval.{section}.{key}", f"{value!r} is not one of {', '.join(map(str, allowed))}"


def _check_file(key: str, path: Any) -> Iterator[Problem]:
    if not path:
        yield key, "missing (the path of a local CSV; see config/README.md)"
    elif not Path(os.path.expanduser(str(path))).is_file():
        yield Absent((key, f"{str(path)!r} is not a file"))


def _check_judge(ev: dict, bench: Benchmark) -> Iterator[Problem]:
    key = f"eval.{bench.name}.judge"
    judge = eval_judge(ev.get(bench.name) or {}, bench.name)
    if judge["name"] not in known_judges():
        yield key, f"unknown judge {judge['name']!r} (known: {', '.join(known_judges())})"
    elif judge["name"] not in bench.judges:
        yield key, (f"judge {judge['name']!r} is not a judge of {bench.name} (choose from "
                    f"{', '.join(bench.judges)})")
    else:
        missing = missing_env(judge)
        if missing:
            yield Absent((key, f"judge {judge['name']!r} needs the environment variable(s) {', '.join(missing)}, "
                               "which are not set"))


def _check_harmbench(ev: dict, bench: Benchmark) -> Iterator[Problem]:
    yield from _check_choices(ev, bench)
    yield from _check_file("eval.harmbench.behaviors", (ev.get("harmbench") or {}).get("behaviors"))
    yield from _check_judge(ev, bench)


def _check_strongreject(ev: dict, bench: Benchmark) -> Iterator[Problem]:
    yield from _check_choices(ev, bench)
    _, path, key = strongreject_dataset(ev.get("strongreject") or {})
    yield from _check_file(key, path)
    yield from _check_judge(ev, bench)


# --------------------------------------------------------------------------------------------------------------
# The benchmarks. Resources: one GPU job for a 7-8B policy with vLLM on one 80 GB GPU (starting points, not
# measured on a cluster; the transformers fallback is several times slower); runtime in minutes.

_SMALL = _frozen({"gpu": 1, "cpus_per_gpu": 8, "mem_mb": 32000, "runtime": 30})


def _gpu(runtime: int) -> Mapping[str, int]:
    return _frozen({"gpu": 1, "cpus_per_gpu": 8, "mem_mb": 64000, "runtime": runtime})


#: shared by the lm-eval benchmarks (section ``lm_eval``, then the benchmark's own)
_LM_EVAL = {"backend": "auto", "device": None, "batch_size": 8, "limit": None, "data_dir": None, "nltk_data": None,
            "work_dir": None, "seed": 0, "vllm": {}, "log_samples": 20}
#: shared by the EvalPlus benchmarks (section ``evalplus``, then the benchmark's own)
_EVALPLUS = {"backend": "auto", "device": None, "batch_size": 8, "max_new_tokens": 768, "limit": None,
             "data_path": None, "work_dir": None, "timeout_s": 3600, "parallel": None, "min_time_limit": 1.0,
             "gt_time_limit_factor": 4.0, "cache_dir": None}
_LM_EVAL_BACKENDS = {"backend": ("auto", "hf", "vllm", "transformers")}
_EVALPLUS_BACKENDS = {"backend": ("auto", "vllm", "transformers")}
#: the judged benchmarks' fixed subset: all items unless ``subset`` is set, drawn once with ``seed``
_SUBSET = {"subset": None, "seed": 0, "reasoning": False}

_RECORDS = [
    # CPU demo stand-ins, on the project's own held-out data (their data and judge are the track's, checked there)
    Benchmark("refusal", "refusal", "refusal rate on held-out harmful prompts (the demo's HarmBench stand-in)",
              _SMALL),
    Benchmark("over_refusal", "refusal",
              "refusal rate on held-out benign, borderline-looking prompts (lower is better)", _SMALL),
    Benchmark("arithmetic", "arithmetic",
              "accuracy on held-out GSM8K-like word problems (the demo's GSM8K stand-in)", _SMALL),
    # the paper's benchmarks
    Benchmark("harmbench", "harmbench", "refusal rate = 1 - ASR on the standard behaviours (fixed subset or all)",
              _gpu(120), sections=("harmbench",),  # 200 behaviors x 512 tokens, then the judge on the same GPU
              defaults={**_SUBSET, "on_malformed": "count_as_refusal"},
              choices={"on_malformed": ("count_as_refusal", "exclude", "raise")},
              judge="gpt4o_harmbench", judges=("gpt4o_harmbench", "harmbench_cls", "minilm_refusal"),
              check=_check_harmbench),
    Benchmark("strongreject", "strongreject",
              "mean StrongREJECT score (rubric or fine-tuned judge), lower is better", _gpu(120), sections=("strongreject",),  # 313 prompts x 512 tokens, then the judge
              defaults={**_SUBSET, "dataset": "small", "on_malformed": "exclude"},
              choices={"on_malformed": ("exclude", "raise")},
              judge="strongreject_rubric", judges=("strongreject_rubric", "strongreject_finetuned", "minilm_refusal"),
              check=_check_strongreject),
    Benchmark("math500", "math500", "lm-eval minerva_math500, math_verify", _gpu(240),  # 500 x up to 2048 tokens
              sections=("lm_eval", "math500"), choices=_LM_EVAL_BACKENDS,
              defaults={**_LM_EVAL, "num_fewshot": 0, "apply_chat_template": True,
                        "system_instruction": QWEN_MATH_SYSTEM, "max_gen_toks": 2048, "greedy": True},
              check=_check_choices),
    # sampling (T=0.2, 8 repeats) is what maj@8 votes over; 1319 problems x 8 samples
    Benchmark("gsm8k_maj8", "gsm8k", "lm-eval gsm8k_cot_self_consistency with 8 samples, maj@8", _gpu(360),
              sections=("lm_eval", "gsm8k_maj8"), choices=_LM_EVAL_BACKENDS,
              defaults={**_LM_EVAL, "num_fewshot": 8, "apply_chat_template": False, "system_instruction": None,
                        "max_gen_toks": 256, "greedy": False},
              check=_check_choices),
    Benchmark("mmlu", "mmlu", "lm-eval mmlu, 5-shot", _gpu(240),  # 14k questions, 5-shot log-likelihoods
              sections=("lm_eval", "mmlu"), choices=_LM_EVAL_BACKENDS,
              defaults={**_LM_EVAL, "num_fewshot": 5, "apply_chat_template": False, "system_instruction": None,
                        "max_gen_toks": None, "greedy": None, "subjects": None},  # loglikelihood: no generation
              check=_check_choices),
    Benchmark("ifeval", "ifeval", "lm-eval ifeval", _gpu(120),  # 541 prompts
              sections=("lm_eval", "ifeval"), choices=_LM_EVAL_BACKENDS,
              defaults={**_LM_EVAL, "num_fewshot": 0, "apply_chat_template": True, "system_instruction": None,
                        "max_gen_toks": 1280, "greedy": True},
              check=_check_choices),
    # 378 tasks: generation, then test execution on the job's CPUs
    Benchmark("mbpp_plus", "evalplus_eval", "EvalPlus MBPP+, pass@1 over base + plus tests", _gpu(180),
              sections=("evalplus", "mbpp_plus"), defaults=_EVALPLUS, choices=_EVALPLUS_BACKENDS,
              check=_check_choices),
    Benchmark("humaneval_plus", "evalplus_eval", "EvalPlus HumanEval+", _gpu(120),  # 164 tasks
              sections=("evalplus", "humaneval_plus"), defaults=_EVALPLUS, choices=_EVALPLUS_BACKENDS,
              check=_check_choices),
]

#: benchmark name -> its record, in the order results and figures list them
REGISTRY: Mapping[str, Benchmark] = MappingProxyType({b.name: b for b in _RECORDS})
#: benchmark name -> module in this package that defines ``evaluate(model_path, cfg) -> dict``
BENCHMARKS: Mapping[str, str] = MappingProxyType({b.name: b.module for b in _RECORDS})
#: the judge a judged benchmark uses when its config section names none (the paper's API judges)
DEFAULT_JUDGES: Mapping[str, str] = MappingProxyType({b.name: b.judge for b in _RECORDS if b.judge})


def benchmark(name: str) -> Benchmark:
    """The record of benchmark ``name``; ValueError listing the known ones for another name."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown benchmark {name!r} (known: {', '.join(REGISTRY)})") from None


def options(name: str, cfg: dict) -> dict:
    """Benchmark ``name``'s settings from an eval spec ``cfg`` (:meth:`Benchmark.options`)."""
    return benchmark(name).options(cfg)


def resources(name: str) -> dict:
    """The SLURM resources of one job of benchmark ``name``: ``gpu``, ``cpus_per_gpu``, ``mem_mb``, ``runtime``
    (minutes)."""
    return dict(benchmark(name).resources)


def eval_sections() -> tuple[str, ...]:
    """The eval config sections the benchmarks read, each once, in registry order (what a run passes through)."""
    return tuple(dict.fromkeys(s for b in _RECORDS for s in b.sections))


def judged_benchmarks() -> tuple[str, ...]:
    """The benchmarks whose config section (named as the benchmark) has a ``judge``."""
    return tuple(DEFAULT_JUDGES)


def eval_judges(eval_cfg: dict) -> dict[str, dict]:
    """``{config key: judge spec}`` of each listed judged benchmark: its section's judge or the default one."""
    listed = eval_cfg.get("benchmarks") or []
    return {f"eval.{b}.judge": eval_judge(eval_cfg.get(b) or {}, b) for b in DEFAULT_JUDGES if b in listed}


def eval_problems(eval_cfg: dict) -> list[Problem]:
    """Every problem of a track's ``eval`` block: unknown benchmark names, then each listed benchmark's own check
    (its data files named and present, its judge known, accepted and with its environment variables set, its
    options among their choices)."""
    benches = list(eval_cfg.get("benchmarks") or [])
    problems = [(f"eval.benchmarks.{i}", f"{b!r} is not a benchmark (known: {', '.join(REGISTRY)})")
                for i, b in enumerate(benches) if b not in REGISTRY]
    for name in dict.fromkeys(b for b in benches if b in REGISTRY):
        bench = REGISTRY[name]
        if bench.check is not None:
            problems.extend(bench.check(eval_cfg, bench))
    return problems


def check_eval_config(eval_cfg: dict, where: str, source: str, absent=None) -> None:
    """Raise :class:`frpo.config.ConfigError` for the first of :func:`eval_problems`, naming its key as
    ``"<source>: <where>.eval.<...>: <what is wrong>"`` (``where`` is e.g. ``tracks.safety``). With ``absent`` (a
    callable), an :class:`Absent` problem is handed to it instead (a dry run's warning)."""
    from ..config import ConfigError  # config imports this registry: lazily here

    for problem in eval_problems(eval_cfg):
        key, message = problem
        if absent is not None and isinstance(problem, Absent):
            absent(f"{source}: {where}.{key}: {message}")
            continue
        raise ConfigError(f"{source}: {where}.{key}: {message}")
