"""MATH500, GSM8K maj@8, MMLU 5-shot and IFEval through lm-evaluation-harness's Python API (pinned 0.4.13).

One shared runner, ``run_lm_eval(benchmark, model_path, cfg)``; the thin modules ``math500``, ``gsm8k``, ``mmlu``
and ``ifeval`` expose it as ``evaluate(model_path, cfg)``. The lm-eval model is ``vllm`` when vLLM is importable
and a GPU is present (``backend: auto``), else ``hf`` (transformers, float32 on the CPU, bf16 on a GPU).

Tasks (spec: ../shared/reference/evals.md §3):

* ``math500``: stock ``minerva_math500``, 0-shot, chat template, the Qwen-Math system instruction, greedy,
  ``max_gen_toks`` 2048; reports ``math_verify,none`` (also ``exact_match,none``).
* ``gsm8k_maj8``: ``tasks/gsm8k_maj8.yaml`` includes ``gsm8k_cot_self_consistency`` with ``repeats: 8`` (the
  stock one draws 64) and keeps its sampling (temperature 0.2); reports ``exact_match,maj@8``.
* ``mmlu``: the stock ``mmlu`` group, 5-shot, loglikelihood; reports ``acc,none`` (size-weighted).
* ``ifeval``: stock ``ifeval``, chat template, greedy, ``max_gen_toks`` 1280; reports
  ``prompt_level_strict_acc,none`` (and the three others). Needs nltk's ``punkt_tab`` installed beforehand
  (``nltk_data``): lm-eval otherwise tries to download it at import.

Offline data (``data_dir``): each task is re-declared by a generated YAML that ``include:``s the stock one and sets
``dataset_path: json`` and ``dataset_kwargs.data_files`` to the JSONL files below (in that task's HF schema):
``math500.jsonl`` (problem, solution, answer), ``gsm8k.jsonl`` (question, answer with ``#### N``),
``mmlu_test.jsonl`` + ``mmlu_dev.jsonl`` (question, choices, answer int; one local task, not the 57 subjects),
``ifeval.jsonl`` (key, prompt, instruction_id_list, kwargs).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import yaml

__all__ = ["LM_EVAL_BENCHMARKS", "QWEN_MATH_SYSTEM", "ensure_punkt", "run_lm_eval", "write_minimal_punkt_tab"]

QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
TASKS_DIR = Path(__file__).with_name("tasks")

#: benchmark -> how to run it. ``base``: the stock YAML (relative to lm_eval/tasks) that local overrides include;
#: ``files``: split -> fixture file name in ``data_dir``; defaults are overridable from the config.
LM_EVAL_BENCHMARKS: dict[str, dict] = {
    "math500": {
        "task": "minerva_math500", "base": "minerva_math/minerva_math500.yaml",
        "metric": "math_verify,none", "also": ["exact_match,none"], "files": {"test": "math500.jsonl"},
        "defaults": {"num_fewshot": 0, "apply_chat_template": True, "system_instruction": QWEN_MATH_SYSTEM,
                     "max_gen_toks": 2048, "greedy": True},
    },
    "gsm8k_maj8": {
        "task": "gsm8k_cot_maj8", "yaml": "gsm8k_maj8.yaml",
        "metric": "exact_match,maj@8", "also": ["exact_match,score-first"], "files": {"test": "gsm8k.jsonl"},
        "defaults": {"num_fewshot": 8, "apply_chat_template": False, "system_instruction": None,
                     "max_gen_toks": 256, "greedy": False},  # sampling (T=0.2, 8 repeats) is what maj@8 votes over
    },
    "mmlu": {
        "task": "mmlu", "base": "mmlu/default/_default_template_yaml",
        "metric": "acc,none", "also": [], "files": {"test": "mmlu_test.jsonl", "dev": "mmlu_dev.jsonl"},
        "defaults": {"num_fewshot": 5, "apply_chat_template": False, "system_instruction": None,
                     "max_gen_toks": None, "greedy": None},  # loglikelihood: no generation
    },
    "ifeval": {
        "task": "ifeval", "base": "ifeval/ifeval.yaml",
        "metric": "prompt_level_strict_acc,none",
        "also": ["inst_level_strict_acc,none", "prompt_level_loose_acc,none", "inst_level_loose_acc,none"],
        "files": {"train": "ifeval.jsonl"},
        "defaults": {"num_fewshot": 0, "apply_chat_template": True, "system_instruction": None,
                     "max_gen_toks": 1280, "greedy": True},
    },
}

_COMMON_DEFAULTS = {"backend": "auto", "device": None, "batch_size": 8, "limit": None, "data_dir": None,
                    "nltk_data": None, "work_dir": None, "seed": 0, "vllm": {}, "log_samples": 20}


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def write_minimal_punkt_tab(root: str | Path, lang: str = "english") -> Path:
    """An *untrained* punkt_tab model (no abbreviations, collocations or sentence starters) under ``root``.

    For offline tests only: IFEval's sentence counting then splits at every period. Real runs install the
    trained model (``python -m nltk.downloader -d DIR punkt_tab``) and point ``nltk_data`` at DIR.
    """
    d = Path(root) / "tokenizers" / "punkt_tab" / lang
    d.mkdir(parents=True, exist_ok=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (d / name).touch()
    return Path(root)


def ensure_punkt(nltk_data: str | Path | None = None) -> str:
    """Make nltk find ``punkt_tab`` without a download (``nltk_data`` first on its path); returns where it is."""
    import nltk

    if nltk_data:
        nltk_data = str(Path(nltk_data).resolve())
        if nltk_data not in nltk.data.path:
            nltk.data.path.insert(0, nltk_data)
        os.environ["NLTK_DATA"] = os.pathsep.join(filter(None, [nltk_data, os.environ.get("NLTK_DATA")]))
    try:
        return str(nltk.data.find("tokenizers/punkt_tab/english/"))
    except LookupError as e:
        raise RuntimeError(
            "IFEval needs nltk's punkt_tab and lm-eval would try to download it at import: install it first "
            "(`python -m nltk.downloader -d DIR punkt_tab`) and set the eval config's nltk_data to DIR"
        ) from e


def _write_task_yaml(benchmark: str, spec: dict, opts: dict, work_dir: Path) -> str:
    """Write the task YAML for ``benchmark`` into ``work_dir`` (local data overrides when data_dir is set)."""
    stock = _lm_eval_tasks_dir()
    if "yaml" in spec:
        text = (TASKS_DIR / spec["yaml"]).read_text().replace("{LM_EVAL_TASKS}", str(stock))
        doc = yaml.safe_load(text)
    else:
        doc = None
    if opts["data_dir"]:
        data_dir = Path(opts["data_dir"]).resolve()
        files = {split: str(data_dir / name) for split, name in spec["files"].items()}
        for f in files.values():
            if not Path(f).is_file():
                raise FileNotFoundError(f"{benchmark}: local data file {f} does not exist")
        if doc is None:
            doc = {"include": str(stock / spec["base"])}
        doc.update({"task": f"frpo_{benchmark}_local", "dataset_path": "json", "dataset_name": None,
                    "dataset_kwargs": {"data_files": files}})
        for split in ("test", "train", "dev"):
            if split in files:
                key = {"test": "test_split", "train": "test_split" if "test" not in files else "training_split",
                       "dev": "fewshot_split"}[split]
                doc[key] = split
        if "test" in files and "train" not in files:
            doc["training_split"] = None
        doc.pop("tag", None)
    if doc is None:
        return spec["task"]  # a stock task, as registered
    work_dir.mkdir(parents=True, exist_ok=True)
    (work_dir / f"{doc['task']}.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc["task"]


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def run_lm_eval(benchmark: str, model_path, cfg: dict) -> dict:
    """Run one lm-eval benchmark on the model directory ``model_path``; see the module docstring."""
    from .backend import backend_name

    spec = LM_EVAL_BENCHMARKS[benchmark]
    opts = {**_COMMON_DEFAULTS, **spec["defaults"], **(cfg.get("lm_eval") or {}), **(cfg.get(benchmark) or {})}
    if opts["device"] is None:
        opts["device"] = cfg.get("device") or "cpu"
    if opts["limit"] is None and cfg.get("max_prompts"):
        opts["limit"] = cfg["max_prompts"]
    backend = backend_name(opts["backend"])
    if backend == "transformers":
        backend = "hf"
    if backend not in ("hf", "vllm"):
        raise ValueError(f"{benchmark}: unknown lm-eval backend {backend!r} (auto, hf or vllm)")

    punkt = ensure_punkt(opts["nltk_data"]) if benchmark == "ifeval" else None
    import lm_eval
    from lm_eval.tasks import TaskManager

    tmp = None
    if opts["work_dir"]:
        work_dir = Path(opts["work_dir"])
    else:
        tmp = tempfile.TemporaryDirectory(prefix=f"frpo_lm_eval_{benchmark}_")
        work_dir = Path(tmp.name)
    try:
        task = _write_task_yaml(benchmark, spec, opts, work_dir / "tasks")
        include = str(work_dir / "tasks") if (work_dir / "tasks").is_dir() else None
        task_manager = TaskManager(include_path=include)

        gen_kwargs = None
        if opts["max_gen_toks"] is not None:
            gen_kwargs = {"max_gen_toks": int(opts["max_gen_toks"])}
            if opts["greedy"]:
                gen_kwargs.update(do_sample=False, temperature=0.0)
        if backend == "hf":
            import torch

            model_args = {"pretrained": str(model_path),
                          "dtype": "float32" if opts["device"] == "cpu" else "bfloat16"}
            batch_size = opts["batch_size"]
            if not torch.cuda.is_available() and opts["device"] != "cpu":
                raise RuntimeError(f"{benchmark}: device {opts['device']!r} requested but no CUDA")
        else:
            model_args = {"pretrained": str(model_path), "dtype": "bfloat16", "tensor_parallel_size": 1,
                          "gpu_memory_utilization": 0.9, "seed": opts["seed"],
                          **({"max_gen_toks": int(opts["max_gen_toks"])} if opts["max_gen_toks"] else {}),
                          **(opts["vllm"] or {})}
            batch_size = "auto"
        out = lm_eval.simple_evaluate(
            model=backend, model_args=model_args, tasks=[task], num_fewshot=opts["num_fewshot"],
            batch_size=batch_size, device=opts["device"] if backend == "hf" else None,
            limit=opts["limit"], log_samples=bool(opts["log_samples"]),
            system_instruction=opts["system_instruction"], apply_chat_template=bool(opts["apply_chat_template"]),
            fewshot_as_multiturn=bool(opts["apply_chat_template"]) and bool(opts["num_fewshot"]),
            gen_kwargs=gen_kwargs, task_manager=task_manager, random_seed=opts["seed"],
            numpy_random_seed=opts["seed"], torch_random_seed=opts["seed"], fewshot_random_seed=opts["seed"],
        )
    finally:
        if tmp is not None:
            tmp.cleanup()

    results = out["results"]
    if task not in results:
        raise RuntimeError(f"{benchmark}: lm-eval returned no results for task {task!r} (got {sorted(results)})")
    metric = spec["metric"]
    if metric not in results[task]:
        raise KeyError(f"{benchmark}: metric {metric!r} missing from lm-eval results {sorted(results[task])}")
    n_samples = out.get("n-samples", {})
    leaves = [t for t in n_samples if t == task or t in out.get("group_subtasks", {}).get(task, [])] or list(n_samples)
    n = sum(int(n_samples[t]["effective"]) for t in leaves)
    samples = []
    for t, rows in (out.get("samples") or {}).items():
        for row in rows[: int(opts["log_samples"] or 0)]:
            samples.append({"task": t, "doc_id": row.get("doc_id"), "target": row.get("target"),
                            "filtered_resps": row.get("filtered_resps"),
                            **{k.split(",")[0]: row.get(k.split(",")[0]) for k in [metric, *spec["also"]]
                               if k.split(",")[0] in row}})
    task_config = (out.get("configs") or {}).get(task, {})
    return _jsonable({
        "metric": metric,
        "value": results[task][metric],
        "metrics": {k: results[task][k] for k in [metric, *spec["also"]] if k in results[task]},
        "stderr": results[task].get(metric.replace(",", "_stderr,", 1)),
        "n": n,
        "lm_eval_version": version("lm_eval"),
        "task": task,
        "task_versions": out.get("versions", {}),
        "dataset": {"path": task_config.get("dataset_path"), "name": task_config.get("dataset_name"),
                    "data_files": (task_config.get("dataset_kwargs") or {}).get("data_files"),
                    "limit": opts["limit"]},
        "num_fewshot": opts["num_fewshot"],
        "generation": {"backend": backend, "model_args": model_args, "batch_size": batch_size, "gen_kwargs": gen_kwargs,
                       "task_generation_kwargs": task_config.get("generation_kwargs"),
                       "repeats": task_config.get("repeats"),
                       "apply_chat_template": bool(opts["apply_chat_template"]),
                       "system_instruction": opts["system_instruction"], "seed": opts["seed"]},
        "backend": backend,
        "nltk_punkt": punkt,
        "samples": samples,
    })
