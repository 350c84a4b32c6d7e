"""The workflow on a real SLURM cluster: a single-node cluster (munged, slurmctld, slurmd) started on this machine
by tests/slurm/cluster.sh, the smoke config submitted through `--profile profiles/slurm`, and an RL job killed
with `scancel` that resumes from its checkpoint when snakemake resubmits it.

Opt-in: the module runs only with FRPO_SLURM_TESTS=1 (it takes several minutes, and `.ci/run` runs it in its own
step: `FRPO_SLURM_TESTS=1 python -m pytest -m slurm tests/test_slurm.py`). Once opted in it never skips: it fails,
saying why, when SLURM is not installed (`apt-get install slurm-wlm munge`), when not root, or when the cluster
does not come up.

What sbatch receives is recorded by tests/slurm/shim/sbatch (first on PATH), which logs each call's arguments as a
JSON line and execs /usr/bin/sbatch. tests/slurm/shim/srun restores SLURM_CONF inside jobs (see that file).

The profile is used as it is except for what a 2-core test node cannot satisfy (see `local_profile`): the
profile's cpus_per_gpu (8) and mem_mb (64-128 GB) are capped to the node. They are applied by writing a derived
profile, not with `--set-resources` on the command line: a command-line `--set-resources` replaces the
profile's whole `set-resources` block, so the GPU requests would silently disappear.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml
from configs import load_config, write_config

from frpo.models import merge_mem_mb

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SHIM = ROOT / "tests" / "slurm" / "shim"
PROFILE = ROOT / "profiles" / "slurm" / "profile.yaml"
PYTHON = os.path.abspath(sys.executable)  # not resolved: keep the venv
SNAKEMAKE = [PYTHON, "-m", "snakemake"]
LOCAL_MEM_MB = 6000  # two concurrent jobs must fit the node's RealMemory (<= 20000 MB)
TRAINING_RULES = {"rl_train": "rl", "warmup_sft": "sft_full", "finetune": "sft_lora"}  # placed by frpo.compute

OPTED_IN = os.environ.get("FRPO_SLURM_TESTS") == "1"


def _missing_prerequisite() -> str | None:
    if not (shutil.which("slurmctld") or Path("/usr/sbin/slurmctld").exists()) or not Path("/usr/bin/sbatch").exists() \
            or not shutil.which("munged"):
        return "SLURM not installed (needs slurmctld, slurmd, sbatch, munged: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the test cluster's slurmd must run as root"
    return None


# Opt-in: without FRPO_SLURM_TESTS=1 the module is skipped. Once opted in, nothing skips: a missing SLURM, a
# non-root user or a cluster that does not start FAILS the tests, so a CI run that asked for them cannot pass
# without running them.
pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(not OPTED_IN, reason="SLURM cluster tests are opt-in: set FRPO_SLURM_TESTS=1 (as .ci/run does)"),
]


@pytest.fixture(scope="module")
def cluster():
    missing = _missing_prerequisite()
    if missing:
        pytest.fail(f"FRPO_SLURM_TESTS=1 but {missing}")
    state = Path(tempfile.mkdtemp(prefix="frpo-slurm-", dir="/tmp"))  # short: the munge socket path is limited
    started = subprocess.run(["bash", str(CLUSTER), "start", str(state)], capture_output=True, text=True)
    if started.returncode != 0:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True)
        pytest.fail(f"the test SLURM cluster did not start:\n{started.stdout}\n{started.stderr[-4000:]}")
    try:
        yield state
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop", str(state)], capture_output=True)
        shutil.rmtree(state, ignore_errors=True)


def _env(state: Path, sbatch_log: Path) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", SLURM_CONF=str(state / "slurm.conf"),
               FRPO_SLURM_CONF=str(state / "slurm.conf"), FRPO_SBATCH_LOG=str(sbatch_log))
    env["PATH"] = os.pathsep.join([str(SHIM), str(Path(PYTHON).parent), env.get("PATH", "")])
    return env


def local_profile(dest: Path) -> dict:
    """profiles/slurm with only what this node needs changed: cpus_per_gpu capped to the node's CPUs, mem_mb capped
    to LOCAL_MEM_MB, for the profile's rules and for the evaluations (whose rules declare the registry's
    resources). Everything else (gpu, runtime, retries, requeue, log dir) is the profile's or the rule's."""
    from frpo.evals import BENCHMARKS, resources

    profile = yaml.safe_load(PROFILE.read_text())
    cpus = os.cpu_count() or 1
    for bench in BENCHMARKS:
        if resources(bench)["mem_mb"] > LOCAL_MEM_MB:
            profile["set-resources"][f"eval_{bench}"] = {"mem_mb": LOCAL_MEM_MB}
    for res in profile["set-resources"].values():
        if res.get("cpus_per_gpu", 0) > cpus:
            res["cpus_per_gpu"] = cpus
        if res.get("mem_mb", 0) > LOCAL_MEM_MB:
            res["mem_mb"] = LOCAL_MEM_MB
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "profile.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return profile


# Executor settings for a cluster without accounting (slurmdbd): job status from squeue (the cluster keeps
# finished jobs for MinJobAge=600 s), no account. The short first status check keeps the test fast; the plugin
# uses that value as its polling interval after every finished job (default 40 s).
CLUSTER_FLAGS = ["--slurm-status-command", "squeue", "--slurm-no-account",
                 "--slurm-init-seconds-before-status-checks", "2"]


def sbatch_calls(log: Path) -> list[dict]:
    calls = []
    for line in log.read_text().splitlines():
        argv = json.loads(line)["argv"]
        comment = argv[argv.index("--comment") + 1]
        rule = re.fullmatch(r"rule_(.+?)(_wildcards_.*)?", comment).group(1)
        calls.append({"rule": rule, "comment": comment, "argv": argv})
    return calls


def flag(argv: list[str], *names: str):
    """Value of an sbatch flag given as `--x v`, `--x=v`, `-x v`; None when absent."""
    for i, a in enumerate(argv):
        for n in names:
            if a == n and i + 1 < len(argv):
                return argv[i + 1]
            if a.startswith(n + "="):
                return a.split("=", 1)[1]
    return None


def test_smoke_workflow_runs_through_sbatch_with_the_profiles_resources(cluster, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    profile = local_profile(tmp_path / "profile")
    log = tmp_path / "sbatch_calls.jsonl"
    start = time.time()
    # the safety track of the smoke config (the math track's rules are the same rules; CI runs it locally)
    configfile = write_config(tmp_path / "smoke.yaml", load_config("smoke.yaml", tracks=["safety"]))
    # one chain from the base model to a fine-tuned model's tracking, and one evaluation, through sbatch (CI runs
    # every rule of the smoke config, figures included, locally: .ci/run)
    out_dir = "results/smoke/safety"
    tracked = "ft/grpo/seed0/arithmetic-lora-lr1e-3-ep1/seed0/tracking.csv"
    targets = [f"{out_dir}/{tracked}", f"{out_dir}/eval/ref/refusal.json"]
    result = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *targets, "-d", str(work), "--profile",
                             str(tmp_path / "profile"), "--jobs", "2", *CLUSTER_FLAGS,
                             "--configfile", str(configfile)],
                            cwd=work, env=_env(cluster, log), capture_output=True, text=True, timeout=1200)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-6000:]
    print(f"smoke workflow on SLURM: {time.time() - start:.0f} s")
    for f in (tracked, "eval/ref/refusal.json"):
        assert (work / "results" / "smoke" / "safety" / f).is_file(), f

    calls = sbatch_calls(log)
    done = re.findall(r"(\d+) of (\d+) steps \(100%\) done", out)
    assert done, out[-3000:]
    n_jobs = int(done[-1][1])
    assert len(calls) == n_jobs, f"{len(calls)} sbatch calls for {n_jobs} jobs (every one is submitted)"
    assert len({c["comment"] for c in calls}) == len(calls), "each job submitted once"
    rules = {c["rule"] for c in calls}
    assert rules == {"prepare_base_model", "fit_refusal_judge", "warmup_sft", "rl_train", "merge_lora", "finetune",
                     "eval_refusal"}

    from frpo.evals import resources

    from frpo.compute import job
    from frpo.config import view

    smoke = view(yaml.safe_load(configfile.read_text()), "safety")
    for c in calls:
        argv, declared = c["argv"], profile["set-resources"].get(c["rule"], {})
        if c["rule"].startswith("eval_"):  # sized by the evaluation registry (memory capped to this node's)
            want = resources(c["rule"][len("eval_"):])
            declared = {"mem_mb": min(want["mem_mb"], LOCAL_MEM_MB), "runtime": want["runtime"]}
        if c["rule"] in TRAINING_RULES:  # placed by the model's size (config compute.sizes.tiny)
            assert c["rule"] not in profile["set-resources"]
            declared = job(smoke, TRAINING_RULES[c["rule"]]).resources()
        assert flag(argv, "-p", "--partition") == "debug", c
        assert flag(argv, "--mem") is not None and flag(argv, "-t", "--time") is not None, c
        assert "--requeue" in argv, c  # slurm-requeue: true
        assert "-A" not in argv and "--account" not in argv, c
        if "mem_mb" in declared:
            assert flag(argv, "--mem") == str(declared["mem_mb"]), c
        if "runtime" in declared:
            assert flag(argv, "-t", "--time") == str(declared["runtime"]), c
        if c["rule"] == "merge_lora":  # sized by the rule from its base model, not by the profile
            assert "mem_mb" not in declared
            assert flag(argv, "--mem") == str(merge_mem_mb(work / "results" / "smoke" / "safety" / "warmup" / "model")), c
        # a CPU config: no rule asks for a GPU
        assert flag(argv, "--gpus") is None and flag(argv, "--gres") is None, c
        assert flag(argv, "--cpus-per-task") is not None, c
        if c["rule"] == "rl_train":  # two processes (frpo launch, DDP over gloo): two tasks of one CPU each
            assert flag(argv, "--ntasks") == "2" and flag(argv, "--cpus-per-task") == "1", c
        else:
            assert flag(argv, "--ntasks") == "1", c
    rl_log = (work / "logs" / "smoke" / "safety" / "rl_train" / "grpo" / "seed0.log").read_text()
    assert "frpo launch: " in rl_log and "--num_processes 2" in rl_log
    summary = json.loads((work / "results" / "smoke" / "safety" / "rl" / "grpo" / "seed0" / "summary.json").read_text())
    assert summary["processes"] == 2


def test_the_paper_configs_large_model_jobs_reach_sbatch_with_several_gpus(cluster, tmp_path):
    """config/paper.yaml's math track on a 32B model (model.size 32b): its RL and fine-tuning jobs are submitted
    with the GPUs, CPUs per GPU, memory and runtime of compute.sizes.32b. This one-node cluster has one (dummy)
    GPU, so SLURM refuses the jobs at submission, after the shim has recorded what sbatch received: the point is
    the sbatch line. Their inputs are stand-ins (only rl_train and finetune may run: nothing upstream does)."""
    config = load_config("paper.yaml", tracks=["math"])  # the safety experiments read local files
    config["tracks"]["math"]["model"]["size"] = "32b"
    configfile = write_config(tmp_path / "paper_32b.yaml", config)
    work = tmp_path / "paper"
    math = work / "results" / "paper" / "math"
    for path in ("models/base/", "data/math_problems.jsonl", "data/code.jsonl", "rl/grpo/seed0/adapter/",
                 "rl/grpo/seed0/metrics.jsonl", "models/grpo/seed0/"):  # in the order the stages would write them
        (math / path).parent.mkdir(parents=True, exist_ok=True)
        (math / path).mkdir() if path.endswith("/") else (math / path).write_text("{}\n")
        time.sleep(0.05)
    local_profile(tmp_path / "profile")
    log = tmp_path / "sbatch_calls.jsonl"
    targets = ["results/paper/math/rl/frpo_lam10/seed0/metrics.jsonl",
               "results/paper/math/ft/grpo/seed0/code-lora-lr5e-5-ep1/seed0/tracking.csv"]
    result = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *targets, "-d", str(work), "--profile",
                             str(tmp_path / "profile"), "--jobs", "2", "--keep-going", "--retries", "0",
                             "--allowed-rules", "rl_train", "finetune", "--rerun-triggers", "mtime",
                             *CLUSTER_FLAGS, "--configfile", str(configfile)],
                            cwd=work, env=_env(cluster, log), capture_output=True, text=True, timeout=600)
    out = result.stdout + result.stderr
    assert result.returncode != 0, "one dummy GPU cannot hold a 32B job: SLURM refuses it"
    calls = {}
    for c in sbatch_calls(log) if log.exists() else []:  # the first attempt's (a retry doubles the runtime)
        calls.setdefault(c["rule"], c["argv"])
    assert set(calls) == {"rl_train", "finetune"}, out[-4000:]
    assert "Requested node configuration is not available" in out, out[-4000:]
    sizes = config["compute"]["sizes"]["32b"]
    for rule, stage in (("rl_train", "rl"), ("finetune", "sft_lora")):
        argv, want = calls[rule], sizes[stage]
        assert flag(argv, "--gpus") == str(want["gpus"]) and int(want["gpus"]) >= 2, argv
        assert flag(argv, "--cpus-per-gpu") == str(want["cpus_per_gpu"]), argv
        assert flag(argv, "--mem") == str(want["mem_mb"]) and flag(argv, "-t", "--time") == str(want["runtime"])
        assert flag(argv, "--ntasks") is None and flag(argv, "--ntasks-per-gpu") is None, argv
    print("32B jobs' sbatch lines:", json.dumps(calls, indent=1)[:3000])


def _config(tmp_path: Path) -> Path:
    config = load_config("smoke.yaml", tracks=["safety"], name="slurm_resume")
    config["tracks"]["safety"]["rl"].update(steps=16, save_steps=2)
    return write_config(tmp_path / "slurm_resume.yaml", config)


RUN_DIR = "results/slurm_resume/safety/rl/grpo/seed0"
TARGET = f"{RUN_DIR}/metrics.jsonl"


def _squeue_rl_train(env) -> list[str]:
    out = subprocess.run(["squeue", "-h", "-t", "RUNNING", "-o", "%i %k"], env=env, capture_output=True,
                         text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if "rule_rl_train_wildcards_" in line and "grpo" in line]


def test_rl_job_cancelled_with_scancel_resumes_from_its_checkpoint(cluster, tmp_path):
    configfile = _config(tmp_path)
    work = tmp_path / "slurm"
    work.mkdir()
    local_profile(tmp_path / "profile")
    log = tmp_path / "sbatch_calls.jsonl"
    env = _env(cluster, log)
    ckpt = work / "results" / "slurm_resume" / ".ckpt" / "safety" / "rl" / "grpo" / "seed0"
    out_file = tmp_path / "snakemake.out"
    start = time.time()
    with out_file.open("w") as out:
        proc = subprocess.Popen([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), TARGET, "-d", str(work), "--profile",
                                 str(tmp_path / "profile"), "--jobs", "2", *CLUSTER_FLAGS,
                                 "--configfile", str(configfile)],
                                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 600
        while not (ckpt / "checkpoint-4" / "trainer_state.json").is_file():
            assert proc.poll() is None, "snakemake ended before training reached checkpoint-4:\n" + \
                out_file.read_text()[-4000:]
            assert time.time() < deadline, "training never reached checkpoint-4"
            time.sleep(0.1)
        jobs = _squeue_rl_train(env)
        assert len(jobs) == 1, jobs
        subprocess.run(["scancel", jobs[0]], env=env, check=True)
        cancelled_at = time.time()
        proc.wait(timeout=900)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    text = out_file.read_text()
    assert proc.returncode == 0, text[-6000:]
    print(f"resume run on SLURM: {time.time() - start:.0f} s (cancelled after {cancelled_at - start:.0f} s)")
    assert "CANCELLED" in text, "snakemake saw the job cancelled"
    rl_calls = [c for c in sbatch_calls(log) if c["rule"] == "rl_train"]
    assert len(rl_calls) == 2, "rl_train submitted again after the scancel (profile: retries: 1)"
    train_log = (work / "logs" / "slurm_resume" / "safety" / "rl_train" / "grpo" / "seed0.log").read_text()
    assert "resuming grpo from results/slurm_resume/.ckpt/safety/rl/grpo/seed0/checkpoint-" in train_log
    resumed = _rows(work / TARGET)
    assert [r["step"] for r in resumed] == list(range(1, 17)), "every step logged once, before and after"

    # The same config, uninterrupted (locally: the computation is the same, and it is faster).
    plain = tmp_path / "plain"
    plain.mkdir()
    local = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), TARGET, "-d", str(plain), "--cores", "2",
                            "--configfile", str(configfile)], cwd=plain, env=env, capture_output=True, text=True)
    assert local.returncode == 0, local.stderr[-4000:]
    straight = _rows(plain / TARGET)
    assert [r["step"] for r in straight] == list(range(1, 17))
    report = compare(resumed, straight, work / RUN_DIR / "adapter", plain / RUN_DIR / "adapter")
    print("resumed vs uninterrupted:", json.dumps(report, indent=1))
    (tmp_path / "comparison.json").write_text(json.dumps(report, indent=1))
    resumed_from = int(re.search(r"checkpoint-(\d+)", train_log.split("resuming grpo from", 1)[1]).group(1))
    # Steps up to the checkpoint it resumed from were computed once, by the first job: identical by construction.
    for a, b in zip(resumed[:resumed_from], straight[:resumed_from]):
        assert a == b or _same_except_time(a, b), (a, b)
    assert report["adapter"]["all_finite"]
    assert_resume_is_exact(report)


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


TIME_KEYS = {"time", "elapsed", "elapsed_s", "wall_s", "timestamp", "step_time", "runtime"}


def _same_except_time(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in TIME_KEYS} == {k: v for k, v in b.items() if k not in TIME_KEYS}


def compare(resumed: list[dict], straight: list[dict], adapter_a: Path, adapter_b: Path) -> dict:
    from safetensors.numpy import load_file

    fields = sorted({k for r in straight for k, v in r.items() if isinstance(v, (int, float)) and k not in TIME_KEYS
                     and k != "step"})
    rows = {}
    for k in fields:
        diffs = [abs(a[k] - b[k]) for a, b in zip(resumed, straight)
                 if isinstance(a.get(k), (int, float)) and isinstance(b.get(k), (int, float))]
        first = next((a["step"] for a, b in zip(resumed, straight) if a.get(k) != b.get(k)), None)
        rows[k] = {"max_abs_diff": max(diffs) if diffs else None, "first_differing_step": first}
    wa = load_file(str(adapter_a / "adapter_model.safetensors"))
    wb = load_file(str(adapter_b / "adapter_model.safetensors"))
    assert wa.keys() == wb.keys()
    import numpy as np
    max_diff = max(float(np.abs(wa[k].astype(np.float64) - wb[k].astype(np.float64)).max()) for k in wa)
    scale = max(float(np.abs(wb[k]).max()) for k in wb)
    finite = all(bool(np.isfinite(wa[k]).all()) for k in wa)
    return {"metrics": rows, "adapter": {"max_abs_diff": max_diff, "max_abs_weight": scale,
                                         "identical": max_diff == 0.0, "all_finite": finite}}


def assert_resume_is_exact(report: dict) -> None:
    """Measured here (SLURM 22.05, CPU, torch 2.13): resuming from checkpoint-4 after scancel reproduces the
    uninterrupted run exactly, every metric of every step and every adapter weight (max |diff| 0.0), so the
    checkpoint restores the model, optimizer, scheduler and RNG states completely. Hold it to that."""
    differing = {k: v for k, v in report["metrics"].items() if v["max_abs_diff"] not in (0, 0.0, None)}
    assert not differing, f"resumed run differs from the uninterrupted one: {differing}"
    assert report["adapter"]["identical"], report["adapter"]
