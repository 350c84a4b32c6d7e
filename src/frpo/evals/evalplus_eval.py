"""MBPP+ and HumanEval+ (EvalPlus 0.3.1): greedy samples from our backend, scored by ``evalplus.evaluate``.

* Prompts follow EvalPlus's chat formatting (``provider/utility.py::make_raw_chat_prompt``): the instruction
  prefix, then the task prompt in a code fence, and the assistant turn prefilled with EvalPlus's response
  prefix (ending in an opened python fence), which the model continues. The code is extracted from prefix +
  completion by ``evalplus.sanitize`` (tree-sitter), as EvalPlus does for raw text.
* Scoring runs ``python -m evalplus.evaluate --dataset D --samples S.jsonl`` in a subprocess (its own session)
  under a wall-clock limit ``timeout_s``: past it the whole process group is killed and the rule fails with
  TimeoutError instead of hanging (EvalPlus 0.3.1's own per-task timeout can fail to kill a hung test: #294).
  Per-test limits are EvalPlus's ``max(min_time_limit, gt_time_limit_factor x ground-truth time)``.
* pass@1 is computed here (scoring.pass_at_1) from the per-task ``base_status``/``plus_status`` in EvalPlus's
  result JSON (0.3.1 does not store pass@k): a task counts for the plus score only when both pass.
* Offline data: ``data_path`` (a MbppPlus/HumanEvalPlus-format JSONL) is passed as ``MBPP_OVERRIDE_PATH`` /
  ``HUMANEVAL_OVERRIDE_PATH``; with ``limit`` the first N tasks are written to a subset file that overrides the
  dataset (EvalPlus refuses samples that do not cover every task).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from .scoring import pass_at_1

__all__ = ["ASSISTANT_PREFILL", "DATASETS", "INSTRUCTION_PREFIX", "build_prompt", "evaluate", "extract_solution", "score_samples"]

INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and passes "
                   "corresponding tests:")
ASSISTANT_PREFILL = f"{RESPONSE_PREFIX}\n```python\n"  # EvalPlus's response prefix, which the model continues
#: benchmark -> (evalplus dataset name, override environment variable, dataset version recorded)
DATASETS = {
    "mbpp_plus": ("mbpp", "MBPP_OVERRIDE_PATH", "MbppPlus-v0.2.0"),
    "humaneval_plus": ("humaneval", "HUMANEVAL_OVERRIDE_PATH", "HumanEvalPlus-v0.1.10"),
}
#: evalplus dataset name -> the environment variable that points it at a local file
OVERRIDE_ENV = {name: env for name, env, _ in DATASETS.values()}
_DEFAULTS = {"backend": "auto", "device": None, "batch_size": 8, "max_new_tokens": 768, "limit": None,
             "data_path": None, "work_dir": None, "timeout_s": 3600, "parallel": None, "min_time_limit": 1.0,
             "gt_time_limit_factor": 4.0, "cache_dir": None}


def _read_jsonl(path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def _load_problems(dataset: str, data_path) -> list[dict]:
    if data_path:
        return _read_jsonl(data_path)
    from evalplus.data import get_human_eval_plus, get_mbpp_plus  # downloads the release once (network)

    return list((get_mbpp_plus() if dataset == "mbpp" else get_human_eval_plus()).values())


def build_prompt(task: dict) -> list[dict]:
    """EvalPlus's chat prompt for one task: the user turn, then the assistant turn prefilled with the response
    prefix (the model continues it)."""
    return [{"role": "user", "content": f"{INSTRUCTION_PREFIX}\n```\n{task['prompt'].strip()}\n```\n"},
            {"role": "assistant", "content": ASSISTANT_PREFILL}]


def extract_solution(task: dict, response: str) -> str:
    """A complete program from a raw answer: EvalPlus's sanitizer (code block, entry point and its
    dependencies); the task prompt is prepended when the answer lacks the entry point's ``def``."""
    from evalplus.sanitize import sanitize

    code = sanitize(response, task["entry_point"])
    if f"def {task['entry_point']}" not in code:
        code = task["prompt"] + code  # a bare function body (direct completion)
    return code


# evalplus.evaluate, with its threads made daemons: 0.3.1 starts a non-daemon "stucking_checker" thread that
# sleeps 20 s per round, which otherwise holds the finished process open for up to 20 s.
_RUNNER = """
import sys, threading
_init = threading.Thread.__init__
def _daemon_init(self, *args, **kwargs):
    kwargs.setdefault("daemon", True)
    _init(self, *args, **kwargs)
threading.Thread.__init__ = _daemon_init
from fire import Fire
from evalplus.evaluate import evaluate
sys.argv[0] = "evalplus.evaluate"
Fire(evaluate)
"""


def score_samples(dataset: str, samples_path, data_path=None, *, timeout_s: float, parallel: int | None = None,
                  min_time_limit: float = 1.0, gt_time_limit_factor: float = 4.0, cache_dir=None) -> dict:
    """Run ``evalplus.evaluate`` on a samples JSONL in a bounded subprocess; returns its result JSON."""
    samples_path = Path(samples_path)
    result_path = Path(str(samples_path).replace(".jsonl", "_eval_results.json"))
    result_path.unlink(missing_ok=True)  # 0.3.1 silently reuses an old result file
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # a str there crashes 0.3.1's min()
    if data_path:
        env[OVERRIDE_ENV[dataset]] = str(Path(data_path).resolve())
    if cache_dir:
        env["XDG_CACHE_HOME"] = str(cache_dir)  # ground-truth cache (appdirs.user_cache_dir("evalplus"))
    cmd = [sys.executable, "-c", _RUNNER, "--dataset", dataset, "--samples", str(samples_path),
           "--min_time_limit", str(min_time_limit), "--gt_time_limit_factor", str(gt_time_limit_factor)]
    if parallel:
        cmd += ["--parallel", str(parallel)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise TimeoutError(f"evalplus.evaluate on {samples_path} ran past {timeout_s} s and was killed") from None
    if proc.returncode != 0 or not result_path.is_file():
        raise RuntimeError(f"evalplus.evaluate failed (exit {proc.returncode}):\n{log[-4000:]}")
    return json.loads(result_path.read_text())


def evaluate(model_path, cfg: dict) -> dict:
    from .backend import backend_name, get_backend

    benchmark = cfg.get("benchmark", "mbpp_plus")
    dataset, _, dataset_version = DATASETS[benchmark]
    opts = {**_DEFAULTS, **(cfg.get("evalplus") or {}), **(cfg.get(benchmark) or {})}
    if opts["limit"] is None and cfg.get("max_prompts"):
        opts["limit"] = cfg["max_prompts"]
    tmp = None
    if opts["work_dir"]:
        work = Path(opts["work_dir"])
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix=f"frpo_{benchmark}_")
        work = Path(tmp.name)
    try:
        problems = _load_problems(dataset, opts["data_path"])
        data_path = opts["data_path"]
        if opts["limit"]:
            problems = problems[: int(opts["limit"])]
            data_path = work / f"{benchmark}_subset.jsonl"
            data_path.write_text("".join(json.dumps(p) + "\n" for p in problems))

        t0 = time.perf_counter()
        name = backend_name(opts["backend"])
        if name == "vllm":
            backend = get_backend(model_path, "vllm", **(opts.get("vllm") or {}))
        else:
            backend = get_backend(model_path, name, device=opts["device"] or cfg.get("device"),
                                  batch_size=opts["batch_size"])
        responses = backend.generate([build_prompt(p) for p in problems], max_new_tokens=int(opts["max_new_tokens"]),
                                     temperature=0.0, n=1)
        gen_seconds = time.perf_counter() - t0
        rows = [{"task_id": p["task_id"], "solution": extract_solution(p, ASSISTANT_PREFILL + r[0]), "raw": r[0]}
                for p, r in zip(problems, responses)]
        samples_path = work / f"{benchmark}_samples.jsonl"
        samples_path.write_text("".join(json.dumps({"task_id": r["task_id"], "solution": r["solution"]}) + "\n"
                                        for r in rows))
        t1 = time.perf_counter()
        result = score_samples(dataset, samples_path, data_path, timeout_s=float(opts["timeout_s"]),
                               parallel=opts["parallel"], min_time_limit=opts["min_time_limit"],
                               gt_time_limit_factor=opts["gt_time_limit_factor"], cache_dir=opts["cache_dir"])
        score_seconds = time.perf_counter() - t1
    finally:
        if tmp is not None:
            tmp.cleanup()
    scores = pass_at_1(result["eval"])
    return {
        "metric": "pass@1_plus",
        "value": scores["plus"],
        "metrics": {"pass@1_plus": scores["plus"], "pass@1_base": scores["base"]},
        "n": scores["n_tasks"],
        "evalplus_version": version("evalplus"),
        "dataset": {"name": dataset, "version": dataset_version if not opts["data_path"] else "local",
                    "data_path": str(opts["data_path"]) if opts["data_path"] else None,
                    "limit": opts["limit"], "hash": result.get("hash")},
        "generation": {**backend.settings(), "do_sample": False, "temperature": 0.0, "n": 1,
                       "max_new_tokens": int(opts["max_new_tokens"]),
                       "prompt_format": "evalplus chat: instruction prefix, assistant prefilled with the response prefix"},
        "backend": backend.name,
        "scoring": {"min_time_limit": opts["min_time_limit"], "gt_time_limit_factor": opts["gt_time_limit_factor"],
                    "timeout_s": opts["timeout_s"], "parallel": opts["parallel"]},
        "timings": {"generation_s": round(gen_seconds, 2), "scoring_s": round(score_seconds, 2)},
        "samples": [{"task_id": r["task_id"], "raw": r["raw"], "solution": r["solution"],
                     **scores["per_task"][r["task_id"]]} for r in rows],
    }

