"""The Snakemake workflow as a user drives it: lint, dry runs, and a kill mid-training that resumes."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the `frpo` command
    return env


def snakemake(*args, cwd=ROOT, check=True, **kwargs):
    result = subprocess.run([*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), *args], cwd=cwd, env=_env(),
                            capture_output=True, text=True, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-5000:]}")
    return result


def test_lint_is_clean():
    result = snakemake("--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


@pytest.mark.parametrize("configfile", ["config/config.yaml", "config/smoke.yaml"])
def test_dry_run_plans_the_pipeline(configfile, tmp_path):
    result = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(ROOT / configfile))
    out = result.stdout + result.stderr
    for rule in ("prepare_base_model", "rl_train", "lambda_select", "figure_lambda_landscape", "table_final"):
        assert rule in out


def test_slurm_profile_dry_run_declares_gpu_resources(tmp_path):
    result = snakemake("-n", "--profile", str(ROOT / "profiles" / "slurm"), "-d", str(tmp_path),
                       "--configfile", str(ROOT / "config" / "config.yaml"))
    out = result.stdout + result.stderr
    assert "rule rl_train" in out and "gpu=1" in out and "cpus_per_gpu=8" in out


def test_the_slurm_profile_sizes_gpu_rules_and_gives_cpu_rules_no_gpu(tmp_path):
    """Every rule that declares a GPU on a cuda config has gpu, memory and runtime in the profile; every rule that
    declares none gets no GPU from the profile either (a dry run of the smoke config on cuda, all rules planned)."""
    from frpo.evals import BENCHMARKS

    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["device"] = "cuda"
    config["rl"]["lambda_star"]["enabled"] = False  # a checkpoint would defer the downstream jobs
    config["eval"]["benchmarks"] = ["refusal", "over_refusal", "arithmetic"]
    cfg = tmp_path / "cuda.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    declared = {rule: int(gpu) for rule, gpu in
                re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: [^\n]*?gpu=(\d+)", out, flags=re.M)}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())["set-resources"]
    gpu_rules = {r for r, g in declared.items() if g > 0}
    cpu_rules = {r for r, g in declared.items() if g == 0}
    assert {"rl_train", "finetune", "warmup_sft", "eval_refusal"} <= gpu_rules
    assert {"prepare_base_model", "merge_lora", "collect_tracking", "table_final"} <= cpu_rules
    for rule in gpu_rules | {f"eval_{b}" for b in BENCHMARKS}:
        res = profile.get(rule, {})
        assert res.get("gpu", 0) >= 1 and res.get("mem_mb", 0) > 0 and res.get("runtime", 0) > 0, (rule, res)
    for rule in cpu_rules:
        assert not profile.get(rule, {}).get("gpu"), (rule, profile.get(rule))
    assert set(profile) <= set(declared) | {f"eval_{b}" for b in BENCHMARKS}, "the profile sizes no unknown rule"


def test_every_benchmark_has_its_own_rule_sized_by_the_slurm_profile(tmp_path):
    from frpo.evals import BENCHMARKS

    rules = set(snakemake("--list-rules").stdout.split())
    eval_rules = {r for r in rules if r.startswith("eval_")}
    assert eval_rules == {f"eval_{b}" for b in BENCHMARKS}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())["set-resources"]
    for rule in eval_rules:
        assert {"gpu", "cpus_per_gpu", "mem_mb", "runtime"} <= set(profile[rule]), rule

    # Every benchmark planned for pi_ref, each RL model and each fine-tuned model, each job by the rule of its
    # benchmark, reading the model its target names (lambda* off: its checkpoint would defer the eval jobs).
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["rl"]["lambda_star"]["enabled"] = False
    config["eval"]["benchmarks"] = sorted(BENCHMARKS)
    config["eval"]["harmbench"] = {"behaviors": str(ROOT / "tests/fixtures/evals/harmbench_behaviors_tiny.csv"),
                                   "judge": {"name": "minilm_refusal"}}
    config["eval"]["strongreject"] = {"datasets": {"small": str(ROOT / "tests/fixtures/evals/strongreject_tiny.csv")},
                                      "judge": {"name": "strongreject_finetuned"}}
    cfg = tmp_path / "all_benchmarks.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    jobs = re.findall(r"rule eval_([a-z_0-9]+):\n    input: ([^,\n]+).*?\n    output: (\S+)\n.*?wildcards: target=(\S+)\n",
                      out, flags=re.S)
    expected_models = {"ref": "results/smoke/warmup/model", "rl/grpo": "results/smoke/models/grpo",
                       "rl/frpo_lam0.2": "results/smoke/models/frpo_lam0.2"}
    for run in ("grpo", "frpo_lam0.2"):
        key = f"ft/{run}/arithmetic-lora-lr1e-3-ep1"
        expected_models[key] = f"results/smoke/{key}/model"
    assert {(bench, target) for bench, _, _, target in jobs} == {(b, t) for b in BENCHMARKS for t in expected_models}
    assert len(jobs) == len(BENCHMARKS) * len(expected_models)
    for bench, model, output, target in jobs:
        assert output == f"results/smoke/eval/{target}/{bench}.json"
        assert model == expected_models[target], (bench, target, model)


def test_a_config_without_warm_up_plans_rl_from_the_base_model(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["warmup"] = {"enabled": False}  # the schema lets a disabled warm-up leave out its train section
    cfg = tmp_path / "no_warmup.yaml"
    cfg.write_text(yaml.safe_dump(config))
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    assert "rule rl_train:" in out and "rule warmup_sft:" not in out


def test_an_invalid_config_fails_before_any_job(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["rl"]["num_generations"] = 1
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(config))
    result = snakemake("-n", "--cores", "1", "-d", str(tmp_path), "--configfile", str(bad), check=False)
    assert result.returncode != 0
    assert "rl.num_generations: 1 is less than the minimum of 2" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_rl_training_killed_mid_run_resumes_from_its_checkpoint(tmp_path):
    config = yaml.safe_load((ROOT / "config" / "smoke.yaml").read_text())
    config["name"] = "resume"
    config["rl"].update(steps=16, save_steps=2)
    configfile = tmp_path / "resume.yaml"
    configfile.write_text(yaml.safe_dump(config))
    target = "results/resume/rl/grpo/metrics.jsonl"
    args = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), target, "-d", str(tmp_path), "--cores", "2",
            "--configfile", str(configfile)]
    ckpt = tmp_path / "results" / "resume" / ".ckpt" / "rl" / "grpo"

    proc = subprocess.Popen(args, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    try:
        while not (ckpt / "checkpoint-4" / "trainer_state.json").is_file():
            assert proc.poll() is None, "snakemake ended before training reached checkpoint-4"
            assert time.time() < deadline, "training never reached checkpoint-4"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # a crash, not a clean shutdown
        proc.wait()
    assert not (tmp_path / target).exists(), "the job was killed before it could write its outputs"
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt.glob("checkpoint-*"))
    assert killed_at < 16

    # After a crash the working directory stays locked; a user runs --unlock once, then the same command again.
    snakemake(target, "--unlock", "-d", str(tmp_path), "--configfile", str(configfile), cwd=tmp_path)
    snakemake(target, "--cores", "2", "--rerun-incomplete", "-d", str(tmp_path), "--configfile", str(configfile),
              cwd=tmp_path)
    log = (tmp_path / "logs" / "resume" / "rl_train" / "grpo.log").read_text()
    assert "resuming grpo from results/resume/.ckpt/rl/grpo/checkpoint-" in log
    rows = [json.loads(line) for line in (tmp_path / target).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17)), "every step logged once, before and after the kill"
    assert not list((tmp_path / "results" / "resume" / "rl").glob(".*partial"))

    # A config change reruns only what it touches: a new λ or new eval settings leave this run alone,
    # a new KL coefficient retrains it.
    def planned(change):
        changed = yaml.safe_load(configfile.read_text())
        change(changed)
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(changed))
        out = snakemake(target, "-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(path), cwd=tmp_path)
        return out.stdout + out.stderr

    assert "Nothing to be done" in planned(lambda c: c["rl"]["lambdas"].append("0.5"))
    assert "Nothing to be done" in planned(lambda c: c["eval"]["generation"].update(max_new_tokens=4))
    assert "rule rl_train" in planned(lambda c: c["rl"].update(beta=0.05))
    shutil.rmtree(tmp_path / "results", ignore_errors=True)
