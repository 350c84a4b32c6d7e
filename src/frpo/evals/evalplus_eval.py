"""MBPP+ and HumanEval+ (EvalPlus 0.3.1): greedy samples from our backend, scored by ``evalplus.evaluate``.

* Generation follows EvalPlus's chat mode (``codegen.py``, ``provider/{vllm,hf,utility}.py``): the user turn is the
  instruction prefix and the task prompt in a code fence, the assistant turn is prefilled with the response prefix
  (ending in an opened python fence) and the model continues it, greedily, up to ``max_new_tokens`` (768) or the
  first of upstream's stop strings (``EOS`` plus the closing fence ``"\\n```\\n"``). As upstream, the solution is
  ``evalplus.sanitize`` of that continuation (tabs as four spaces), with nothing prepended.
* Scoring runs ``python -m evalplus.evaluate --dataset D --samples S.jsonl`` in a subprocess (its own session)
  under a wall-clock limit ``timeout_s``: past it the whole process group is killed and the rule fails with
  TimeoutError instead of hanging (EvalPlus 0.3.1's own per-task timeout can fail to kill a hung test: #294).
  Per-test limits are EvalPlus's ``max(min_time_limit, gt_time_limit_factor x ground-truth time)``. It runs
  ``parallel`` workers, by default half the CPUs this job may use (``os.sched_getaffinity``; upstream halves the
  node's ``cpu_count``, which oversubscribes a SLURM job and turns slow tests into timeouts), and the generated
  code sees an environment without secrets (:func:`scrubbed_env`).
* ``value`` is base pass@1 (``metric: pass@1_base``, Table 1's HumanEval column); ``pass@1_plus`` (base and plus
  tests, EvalPlus's MBPP+/HumanEval+ number) is recorded beside it (scoring.pass_at_1, from the per-task
  ``base_status``/``plus_status`` in EvalPlus's result JSON: 0.3.1 does not store pass@k).
* Data: ``data_path`` (a MbppPlus/HumanEvalPlus-format JSONL) or the release file EvalPlus downloads into its cache
  (``cache_dir``/evalplus, default ``~/.cache/evalplus``), passed to the scorer as ``MBPP_OVERRIDE_PATH`` /
  ``HUMANEVAL_OVERRIDE_PATH``. The whole set runs unless this benchmark's section sets ``limit`` (the demo's
  ``eval.max_prompts`` does not apply): then the first N tasks, as stored in the file, are written to a subset file
  that overrides the dataset (EvalPlus refuses samples that do not cover every task).
"""

from __future__ import annotations

import gzip
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from .registry import options as benchmark_options
from .scoring import mean_result, pass_at_1

__all__ = ["ASSISTANT_PREFILL", "DATASETS", "INSTRUCTION_PREFIX", "build_prompt", "chat_stop", "default_parallel",
           "evaluate", "extract_solution", "load_problems", "score_samples", "scrubbed_env"]

INSTRUCTION_PREFIX = ("Please provide a self-contained Python script that solves the following problem in a "
                      "markdown code block:")
RESPONSE_PREFIX = ("Below is a Python script with a self-contained function that solves the problem and passes "
                   "corresponding tests:")
ASSISTANT_PREFILL = f"{RESPONSE_PREFIX}\n```python\n"  # EvalPlus's response prefix, which the model continues
#: benchmark -> (evalplus dataset name, override environment variable, release name, release version)
DATASETS = {
    "mbpp_plus": ("mbpp", "MBPP_OVERRIDE_PATH", "MbppPlus", "v0.2.0"),
    "humaneval_plus": ("humaneval", "HUMANEVAL_OVERRIDE_PATH", "HumanEvalPlus", "v0.1.10"),
}
#: evalplus dataset name -> the environment variable that points it at a local file
OVERRIDE_ENV = {name: env for name, env, _, _ in DATASETS.values()}
#: environment variables whose name contains one of these (upper-cased) never reach the generated code
SECRET_MARKERS = ("KEY", "TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL")


def chat_stop() -> list[str]:
    """Upstream's chat-mode stop strings: ``provider/utility.py``'s ``EOS`` and the closing fence that
    ``provider/vllm.py`` and ``provider/hf.py`` add when the tokenizer has a chat template."""
    from evalplus.provider.utility import EOS

    return [*EOS, "\n```\n"]


def default_parallel() -> int:
    """Scoring workers: half the CPUs this process may run on (its affinity, which a SLURM job sets), at least 1."""
    return max(1, len(os.sched_getaffinity(0)) // 2)


def scrubbed_env(environ=None) -> dict:
    """``environ`` (default ``os.environ``) without any variable whose name looks like a secret (an API key, a
    token, a password, a credential): the environment the generated code runs in."""
    environ = os.environ if environ is None else environ
    return {k: v for k, v in environ.items() if not any(m in k.upper() for m in SECRET_MARKERS)}


def _read_jsonl(path) -> list[dict]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_problems(benchmark: str, data_path=None, cache_dir=None) -> tuple[list[dict], Path, str]:
    """The tasks of ``benchmark`` as stored in their file (JSON values, before EvalPlus turns some MBPP inputs into
    tuples, sets or complex numbers), the file, and its version: ``data_path`` ("local"), else the release file in
    EvalPlus's cache, downloaded there on first use (network)."""
    _, _, name, release = DATASETS[benchmark]
    if data_path:
        path, label = Path(data_path), "local"
        if not path.is_file():
            raise FileNotFoundError(f"{benchmark}.data_path: {path} does not exist")
    else:
        from evalplus.data.utils import get_dataset_metadata, make_cache

        url, default = get_dataset_metadata(name, release, False, False)
        path = Path(cache_dir) / "evalplus" / Path(default).name if cache_dir else Path(default)
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            make_cache(url, str(path))
        label = f"{name}-{release}"
    return _read_jsonl(path), path, label


def build_prompt(task: dict) -> list[dict]:
    """EvalPlus's chat prompt for one task: the user turn, then the assistant turn prefilled with the response
    prefix (the model continues it)."""
    return [{"role": "user", "content": f"{INSTRUCTION_PREFIX}\n```\n{task['prompt'].strip()}\n```\n"},
            {"role": "assistant", "content": ASSISTANT_PREFILL}]


def extract_solution(task: dict, response: str) -> str:
    """The program EvalPlus's chat mode scores: its sanitizer (code block, entry point and its dependencies) applied
    to the continuation of the prefill, tabs as four spaces; "" when there is no code."""
    from evalplus.sanitize import sanitize

    return sanitize(response.replace("\t", "    "), task["entry_point"])


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
    """Run ``evalplus.evaluate`` on a samples JSONL in a bounded subprocess with a scrubbed environment and
    ``parallel`` workers (default :func:`default_parallel`); returns its result JSON."""
    samples_path = Path(samples_path)
    result_path = Path(str(samples_path).replace(".jsonl", "_eval_results.json"))
    result_path.unlink(missing_ok=True)  # 0.3.1 silently reuses an old result file
    env = {**scrubbed_env(), "TOKENIZERS_PARALLELISM": "false"}
    env.pop("EVALPLUS_TIMEOUT_PER_TASK", None)  # a str there crashes 0.3.1's min()
    for var in OVERRIDE_ENV.values():
        env.pop(var, None)
    if data_path:
        env[OVERRIDE_ENV[dataset]] = str(Path(data_path).resolve())
    if cache_dir:
        env["XDG_CACHE_HOME"] = str(cache_dir)  # ground-truth cache (appdirs.user_cache_dir("evalplus"))
    cmd = [sys.executable, "-c", _RUNNER, "--dataset", dataset, "--samples", str(samples_path),
           "--parallel", str(int(parallel or default_parallel())),
           "--min_time_limit", str(min_time_limit), "--gt_time_limit_factor", str(gt_time_limit_factor)]
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
    dataset = DATASETS[benchmark][0]
    opts = benchmark_options(benchmark, cfg)  # the registry's defaults, then evalplus, then the benchmark's section
    parallel = int(opts["parallel"] or default_parallel())
    tmp = None
    if opts["work_dir"]:
        work = Path(opts["work_dir"])
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix=f"frpo_{benchmark}_")
        work = Path(tmp.name)
    try:
        problems, data_path, dataset_version = load_problems(benchmark, opts["data_path"], opts["cache_dir"])
        n_available = len(problems)
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
                                     temperature=0.0, n=1, stop=chat_stop())
        gen_seconds = time.perf_counter() - t0
        rows = [{"task_id": p["task_id"], "solution": extract_solution(p, r[0]), "raw": r[0]}
                for p, r in zip(problems, responses)]
        samples_path = work / f"{benchmark}_samples.jsonl"
        samples_path.write_text("".join(json.dumps({"task_id": r["task_id"], "solution": r["solution"]}) + "\n"
                                        for r in rows))
        t1 = time.perf_counter()
        result = score_samples(dataset, samples_path, data_path, timeout_s=float(opts["timeout_s"]),
                               parallel=parallel, min_time_limit=opts["min_time_limit"],
                               gt_time_limit_factor=opts["gt_time_limit_factor"], cache_dir=opts["cache_dir"])
        score_seconds = time.perf_counter() - t1
    finally:
        if tmp is not None:
            tmp.cleanup()
    scores = pass_at_1(result["eval"])
    per_task = [scores["per_task"][r["task_id"]] for r in rows]
    return {
        **mean_result("pass@1_base", [t["base"] for t in per_task], limit=opts["limit"], value=scores["base"]),
        "pass@1_plus": scores["plus"],
        "ci95_plus": mean_result("pass@1_plus", [t["plus"] for t in per_task], limit=opts["limit"])["ci95"],
        "metrics": {"pass@1_base": scores["base"], "pass@1_plus": scores["plus"]},
        "n_malformed": sum(1 for r in rows if not re.search(r"\S", r["solution"])),  # no code in the answer
        "evalplus_version": version("evalplus"),
        "dataset": {"name": dataset, "version": dataset_version,
                    "data_path": str(opts["data_path"]) if opts["data_path"] else None,
                    "n_available": n_available, "limit": opts["limit"], "hash": result.get("hash")},
        "generation": {**backend.settings(),
                       "prompt_format": "evalplus chat: instruction prefix, assistant prefilled with the response prefix"},
        "backend": backend.name,
        "scoring": {"min_time_limit": opts["min_time_limit"], "gt_time_limit_factor": opts["gt_time_limit_factor"],
                    "timeout_s": opts["timeout_s"], "parallel": parallel, "env": "secrets removed"},
        "timings": {"generation_s": round(gen_seconds, 2), "scoring_s": round(score_seconds, 2)},
        "samples": [{"task_id": r["task_id"], "raw": r["raw"], "solution": r["solution"],
                     **scores["per_task"][r["task_id"]]} for r in rows],
    }
