"""MATH500, GSM8K maj@8, MMLU 5-shot and IFEval through lm-evaluation-harness's Python API (pinned 0.4.13).

One shared runner, ``run_lm_eval(benchmark, model_path, cfg)``; the thin modules ``math500``, ``gsm8k``, ``mmlu``
and ``ifeval`` expose it as ``evaluate(model_path, cfg)``. The lm-eval model is ``vllm`` when vLLM is importable
and a GPU is present (``backend: auto``), else ``hf`` (transformers, float32 on the CPU, bf16 on a GPU).

Tasks (spec: ../shared/reference/evals.md §3):

* ``math500``: stock ``minerva_math500``, 0-shot, chat template, the Qwen-Math system instruction, greedy,
  ``max_gen_toks`` 2048; reports ``math_verify,none`` (also ``exact_match,none``).
* ``gsm8k_maj8``: ``tasks/gsm8k_maj8.yaml`` includes ``gsm8k_cot_self_consistency`` with ``repeats: 8`` (the
  stock one draws 64) and keeps its sampling (temperature 0.2); reports ``exact_match,maj@8``.
* ``mmlu``: the stock ``mmlu`` group, 5-shot, loglikelihood; reports ``acc,none`` (size-weighted over subjects).
* ``ifeval``: stock ``ifeval``, chat template, greedy, ``max_gen_toks`` 1280; reports
  ``prompt_level_strict_acc,none`` (and the three others). Needs nltk's ``punkt_tab`` installed beforehand
  (``nltk_data``): lm-eval otherwise tries to download it at import.

Sampling is explicit: besides the task's own settings, every generation gets ``top_p`` 1, no top-k, no min-p and
no repetition (presence, frequency) penalty (:func:`frpo.evals.backend.neutral_sampling_kwargs`), so nothing from
the model's shipped ``generation_config`` leaks in: vLLM is built with ``generation_config="vllm"``, and the ``hf``
model generates with a complete neutral config in place of its own (:func:`hf_generation_config`).

The whole benchmark runs unless the benchmark's own section (or ``lm_eval``) sets ``limit`` (items per task):
the demo's global ``eval.max_prompts`` does not apply here. The result records ``limit`` (null for a full run),
``n`` (items scored) and a bootstrap ``ci95`` over the per-item scores.

Offline data (``data_dir``): each task is re-declared by a generated YAML that ``include:``s the stock one and sets
``dataset_path`` and ``dataset_kwargs.data_files`` to local files (in that task's HF schema): ``math500.jsonl``
(problem, solution, answer), ``gsm8k.jsonl`` (question, answer with ``#### N``), ``ifeval.jsonl`` (key, prompt,
instruction_id_list, kwargs), and for MMLU the ``cais/mmlu`` repository layout, ``mmlu/<subject>/test-*.parquet``
and ``mmlu/<subject>/dev-*.parquet`` (or ``test.jsonl`` / ``dev.jsonl``; question, subject, choices, answer int).
MMLU then runs as the stock group does: the 57 subject tasks, each with its own header and its own 5 dev rows as
shots, aggregated by size. ``mmlu.subjects`` names a subset of subjects instead (recorded in the result).
"""

from __future__ import annotations

import json
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import yaml

from ..generation import explicit_generation_config, generation_record
from .registry import QWEN_MATH_SYSTEM
from .registry import options as benchmark_options
from .scoring import mean_result

__all__ = ["LM_EVAL_BENCHMARKS", "QWEN_MATH_SYSTEM", "ensure_punkt", "hf_generation_config", "lm_eval_gen_kwargs",
           "make_lm", "mmlu_subjects", "run_lm_eval", "write_tasks"]

TASKS_DIR = Path(__file__).with_name("tasks")
#: the marker lm-eval's regex filter leaves when no answer matches
INVALID_ANSWER = "[invalid]"

#: benchmark -> how to run it. ``base``: the stock YAML (relative to lm_eval/tasks) that local overrides include;
#: ``files``: split -> file name in ``data_dir``; ``invalid``: count items whose filtered answer is lm-eval's
#: no-match marker as ``n_malformed``. The options (few-shot count, chat template, lengths, backend, ...) and
#: their defaults are the registry's (:func:`frpo.evals.registry.options`: its defaults, then ``lm_eval``, then
#: the benchmark's own section).
LM_EVAL_BENCHMARKS: dict[str, dict] = {
    "math500": {
        "task": "minerva_math500", "base": "minerva_math/minerva_math500.yaml",
        "metric": "math_verify,none", "also": ["exact_match,none"], "files": {"test": "math500.jsonl"},
    },
    "gsm8k_maj8": {
        "task": "gsm8k_cot_maj8", "yaml": "gsm8k_maj8.yaml", "invalid": True,
        "metric": "exact_match,maj@8", "also": ["exact_match,score-first"], "files": {"test": "gsm8k.jsonl"},
    },
    "mmlu": {
        "task": "mmlu", "subjects_dir": "mmlu/default",
        "metric": "acc,none", "also": [],
    },
    "ifeval": {
        "task": "ifeval", "base": "ifeval/ifeval.yaml",
        "metric": "prompt_level_strict_acc,none",
        "also": ["inst_level_strict_acc,none", "prompt_level_loose_acc,none", "inst_level_loose_acc,none"],
        "files": {"train": "ifeval.jsonl"},
    },
}


def _lm_eval_tasks_dir() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks"


def mmlu_subjects() -> list[str]:
    """The subjects of lm-eval's stock ``mmlu`` group (57), read from its installed task YAMLs."""
    d = _lm_eval_tasks_dir() / LM_EVAL_BENCHMARKS["mmlu"]["subjects_dir"]
    return sorted(p.stem[len("mmlu_"):] for p in d.glob("mmlu_*.yaml"))


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


def _local_files(directory: Path, split: str) -> tuple[str, list[str]]:
    """``(datasets builder, files)`` of one split in a local subject directory: the HF repository's
    ``<split>-*.parquet`` shards, else ``<split>.jsonl``."""
    parquet = sorted(directory.glob(f"{split}-*.parquet"))
    if parquet:
        return "parquet", [str(p) for p in parquet]
    if (directory / f"{split}.jsonl").is_file():
        return "json", [str(directory / f"{split}.jsonl")]
    raise FileNotFoundError(f"mmlu: no {split} split in {directory} (expected {split}-*.parquet or {split}.jsonl)")


def _mmlu_local_docs(opts: dict, data_dir: Path) -> tuple[list[dict], list[str]]:
    """The task YAMLs of MMLU on local data: one per subject, each including the stock subject task (its header,
    its dev rows as first-n shots), and the group over them (accuracy weighted by size, as the stock group)."""
    stock = _lm_eval_tasks_dir() / LM_EVAL_BENCHMARKS["mmlu"]["subjects_dir"]
    known = mmlu_subjects()
    subjects = list(opts.get("subjects") or known)
    unknown = sorted(set(subjects) - set(known))
    if unknown:
        raise ValueError(f"mmlu.subjects: unknown subject(s) {unknown} (lm-eval's mmlu has {len(known)})")
    root = data_dir / "mmlu"
    missing = [s for s in subjects if not (root / s).is_dir()]
    if missing:
        raise FileNotFoundError(
            f"mmlu: local data {root} lacks {len(missing)} of the {len(subjects)} subjects ({', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}): give the cais/mmlu layout <subject>/test-*.parquet and "
            "<subject>/dev-*.parquet, or list the subjects to run in eval.mmlu.subjects")
    docs, names = [], []
    for subject in subjects:
        (builder, test), (dev_builder, dev) = (_local_files(root / subject, s) for s in ("test", "dev"))
        if builder != dev_builder:
            raise ValueError(f"mmlu: {root / subject} mixes file formats ({builder} test, {dev_builder} dev)")
        name = f"frpo_mmlu_local_{subject}"
        docs.append({"include": str(stock / f"mmlu_{subject}.yaml"), "task": name, "tag": "frpo_mmlu_local_tasks",
                     "dataset_path": builder, "dataset_name": None,
                     "dataset_kwargs": {"data_files": {"test": test, "dev": dev}}})
        names.append(name)
    docs.append({"group": "frpo_mmlu_local", "task": names,
                 "aggregate_metric_list": [{"metric": "acc", "weight_by_size": True}], "metadata": {"version": 2}})
    return docs, subjects


def write_tasks(benchmark: str, opts: dict, work_dir: Path) -> tuple[str, dict]:
    """Write the task YAMLs for ``benchmark`` into ``work_dir`` (local data overrides when ``data_dir`` is set);
    returns the task (or group) name to run and what the result records about the data."""
    spec = LM_EVAL_BENCHMARKS[benchmark]
    stock = _lm_eval_tasks_dir()
    docs, info = [], {}
    doc = None
    if "yaml" in spec:
        doc = yaml.safe_load((TASKS_DIR / spec["yaml"]).read_text().replace("{LM_EVAL_TASKS}", str(stock)))
    if opts["data_dir"]:
        data_dir = Path(opts["data_dir"]).resolve()
        if benchmark == "mmlu":
            docs, subjects = _mmlu_local_docs(opts, data_dir)
            info = {"data_dir": str(data_dir / "mmlu"), "subjects": subjects}
        else:
            files = {split: str(data_dir / name) for split, name in spec["files"].items()}
            for f in files.values():
                if not Path(f).is_file():
                    raise FileNotFoundError(f"{benchmark}: local data file {f} does not exist")
            doc = doc or {"include": str(stock / spec["base"])}
            doc.update({"task": f"frpo_{benchmark}_local", "dataset_path": "json", "dataset_name": None,
                        "dataset_kwargs": {"data_files": files}})
            for split in files:
                key = {"test": "test_split", "train": "test_split" if "test" not in files else "training_split",
                       "dev": "fewshot_split"}[split]
                doc[key] = split
            if "test" in files and "train" not in files:
                doc["training_split"] = None
            doc.pop("tag", None)
            info = {"data_files": files}
    elif benchmark == "mmlu" and opts.get("subjects"):
        raise ValueError("mmlu.subjects needs lm_eval.data_dir (the stock group runs all subjects)")
    if doc is not None:
        docs.append(doc)
    if not docs:
        return spec["task"], info  # a stock task, as registered
    work_dir.mkdir(parents=True, exist_ok=True)
    for d in docs:
        (work_dir / f"{d.get('task') if 'group' not in d else d['group']}.yaml").write_text(
            yaml.safe_dump(d, sort_keys=False))
    last = docs[-1]
    return (last["group"] if "group" in last else last["task"]), info


def lm_eval_gen_kwargs(backend: str, max_gen_toks, greedy) -> dict | None:
    """``gen_kwargs`` for ``simple_evaluate`` (None for loglikelihood tasks): the length, greedy decoding where the
    benchmark is greedy, and the neutral sampling settings of ``backend`` (``hf`` or ``vllm``) so that nothing of the
    model's ``generation_config`` applies; a sampling task keeps its own temperature."""
    from .backend import neutral_sampling_kwargs

    if max_gen_toks is None:
        return None
    kwargs = {"max_gen_toks": int(max_gen_toks), **neutral_sampling_kwargs(backend)}
    if greedy:
        kwargs.update(do_sample=False, temperature=0.0)
    return kwargs


def hf_generation_config(lm):
    """For lm-eval's ``hf`` model: a complete neutral ``GenerationConfig`` (:func:`frpo.generation.generation_config`,
    length left to lm-eval) that stands in for the model's shipped one while lm-eval generates, so that only
    lm-eval's own generation kwargs apply on top of it. None for any other model."""
    from ..generation import generation_config

    model, tokenizer = getattr(lm, "model", None), getattr(lm, "tokenizer", None)
    if model is None or tokenizer is None or not hasattr(model, "generation_config"):
        return None
    config = generation_config(model, tokenizer, do_sample=False, max_new_tokens=1)
    config.max_new_tokens = None  # lm-eval passes max_length per request
    return config


def make_lm(backend: str, model_path, opts: dict, benchmark: str):
    """The lm-eval model (``hf`` or ``vllm``) for ``model_path``: ``(lm, model_args, batch_size)``."""
    import lm_eval.api.registry

    if backend == "hf":
        import torch

        model_args = {"pretrained": str(model_path),
                      "dtype": "float32" if opts["device"] == "cpu" else "bfloat16"}
        batch_size = opts["batch_size"]
        if not torch.cuda.is_available() and opts["device"] != "cpu":
            raise RuntimeError(f"{benchmark}: device {opts['device']!r} requested but no CUDA")
        extra = {"batch_size": batch_size, "max_batch_size": None, "device": opts["device"]}
    else:
        model_args = {"pretrained": str(model_path), "dtype": "bfloat16", "tensor_parallel_size": 1,
                      "gpu_memory_utilization": 0.9, "seed": opts["seed"], "generation_config": "vllm",
                      **({"max_gen_toks": int(opts["max_gen_toks"])} if opts["max_gen_toks"] else {}),
                      **(opts["vllm"] or {})}
        batch_size = "auto"
        extra = {"batch_size": batch_size, "max_batch_size": None, "device": None}
    lm = lm_eval.api.registry.get_model(backend).create_from_arg_obj(model_args, extra)
    return lm, model_args, batch_size


def _jsonable(x):
    return json.loads(json.dumps(x, default=str))


def run_lm_eval(benchmark: str, model_path, cfg: dict) -> dict:
    """Run one lm-eval benchmark on the model directory ``model_path``; see the module docstring."""
    from .backend import backend_name

    spec = LM_EVAL_BENCHMARKS[benchmark]
    opts = benchmark_options(benchmark, cfg)
    if opts["device"] is None:
        opts["device"] = cfg.get("device") or "cpu"
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
        task, data_info = write_tasks(benchmark, opts, work_dir / "tasks")
        include = str(work_dir / "tasks") if (work_dir / "tasks").is_dir() else None
        # our YAMLs include the stock ones by absolute path: lm-eval's own index (slow to build) is needed only
        # to run a stock task by name
        task_manager = TaskManager(include_path=include, include_defaults=include is None)
        gen_kwargs = lm_eval_gen_kwargs(backend, opts["max_gen_toks"], opts["greedy"])
        lm, model_args, batch_size = make_lm(backend, model_path, opts, benchmark)
        hf_config = hf_generation_config(lm)
        with explicit_generation_config(getattr(lm, "model", None), hf_config):
            out = lm_eval.simple_evaluate(
                model=lm, tasks=[task], num_fewshot=opts["num_fewshot"],
                limit=opts["limit"], log_samples=True,  # every item's score: n, ci95, n_malformed
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
    name, filt = metric.split(",", 1)
    leaves = list(out.get("n-samples", {}))  # the tasks that ran: ours, or the subject tasks of the MMLU group
    rows = [(t, row) for t in leaves for row in (out.get("samples") or {}).get(t, []) if row.get("filter") == filt]
    scores = [row[name] for _, row in rows]
    if len(scores) != sum(int(out["n-samples"][t]["effective"]) for t in leaves):
        raise RuntimeError(f"{benchmark}: lm-eval logged {len(scores)} item scores for {metric!r}, not one per item")
    summary = mean_result(metric, scores, limit=opts["limit"], value=results[task][metric])
    if data_info.get("subjects") and len(data_info["subjects"]) < len(mmlu_subjects()):
        summary["subset"] = f"{len(data_info['subjects'])} of {len(mmlu_subjects())} subjects"
    if spec.get("invalid"):
        summary["n_malformed"] = sum(1 for _, row in rows if row.get("filtered_resps") == [INVALID_ANSWER])
    keys = [k.split(",")[0] for k in [metric, *spec["also"]]]
    samples = [{"task": t, "doc_id": row.get("doc_id"), "target": row.get("target"), "filter": filt,
                "filtered_resps": row.get("filtered_resps"), **{k: row[k] for k in keys if k in row}}
               for t, row in rows[: int(opts["log_samples"] or 0)]]
    configs = out.get("configs") or {}
    task_config = configs.get(task) or (configs.get(leaves[0]) if leaves else None) or {}
    return _jsonable({
        **summary,
        "metrics": {k: results[task][k] for k in [metric, *spec["also"]] if k in results[task]},
        "stderr": results[task].get(metric.replace(",", "_stderr,", 1)),
        "lm_eval_version": version("lm_eval"),
        "task": task,
        "task_versions": out.get("versions", {}),
        "n_tasks": len(leaves),
        "dataset": {"path": task_config.get("dataset_path"), "name": task_config.get("dataset_name"),
                    **data_info, "limit": opts["limit"]},
        "num_fewshot": opts["num_fewshot"],
        "generation": {"backend": backend, "model_args": model_args, "batch_size": batch_size, "gen_kwargs": gen_kwargs,
                       "model_generation_config": generation_record(hf_config) if hf_config is not None else None,
                       "task_generation_kwargs": task_config.get("generation_kwargs"),
                       "repeats": task_config.get("repeats"),
                       "apply_chat_template": bool(opts["apply_chat_template"]),
                       "system_instruction": opts["system_instruction"], "seed": opts["seed"]},
        "backend": backend,
        "nltk_punkt": punkt,
        "samples": samples,
    })
