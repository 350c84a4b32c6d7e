"""config/paper.yaml's safety experiments (issue 12), planned offline: a dry run of the whole paper config through
the SLURM profile builds both tracks, with the job counts each paper item needs, every training job sized by its
model, and Fig. 2 drawn over the five models. The plan is also read through frpo.config directly (sweeps, the
Fig. 5 sample, the per-run β, the experiments' inheritance)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from itertools import product
from pathlib import Path

import pytest
import yaml
from configs import PAPER_ENV, paper_files

from frpo.config import (finetune_settings, finetune_sweeps, rl_runs, rl_seeds, rl_spec, run_beta, sweep_settings,
                         view)

ROOT = Path(__file__).resolve().parents[1]
SAFETY = ("mistral", "qwen7b", "qwen3b", "qwen14b", "qwen32b")
RUNS = ["grpo"] + [f"frpo_lam{lam}" for lam in ("5", "2", "1", "0.5", "0.2", "0.1")]
MAIN = {"alpaca-full-lr1e-6-ep1", "gsm8k-full-lr6e-6-ep1"}
FIG2 = {f"gsm8k-{m}-lr{lr}-ep{ep}" for m, lr, ep in product(("full", "lora_r16"), ("1e-6", "6e-6", "6e-5"), (1, 2))}
FIG5_GRID = {f"{d}-{m}-lr{lr}-ep{ep}" for d, m, lr, ep in product(
    ("alpaca", "gsm8k"), ("full", "lora_r16", "lora_r32"), ("1e-6", "3e-6", "1e-5", "3e-5", "6e-5", "1e-4"), (1, 2))}


def paper() -> dict:
    return yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())


def fig5_sample(v) -> set[str]:
    (sweep,) = [s for s in finetune_sweeps(v) if s.get("sample")]
    return set(sweep_settings(sweep))


def test_the_safety_experiments_follow_the_paper():
    config = paper()
    mistral, qwen, q32 = view(config, "mistral"), view(config, "qwen7b"), view(config, "qwen32b")
    assert {view(config, e)["track"] for e in SAFETY} == {"safety"} and view(config, "math")["track"] == "math"
    assert rl_runs(mistral) == RUNS and rl_seeds(mistral) == [0, 1, 2]
    # β per run, from the public launcher; the λ scaling that produced the figures
    betas = {run: run_beta(mistral["rl"], run) for run in RUNS}
    assert betas == {"grpo": 0.1, "frpo_lam5": 2e-4, "frpo_lam2": 5e-4, "frpo_lam1": 1e-3, "frpo_lam0.5": 2e-3,
                     "frpo_lam0.2": 5e-3, "frpo_lam0.1": 0.1}
    rl = mistral["rl"]
    assert (rl["lambda_scale"], rl["num_generations"], rl["prompts_per_step"], rl["top_p"]) == \
        ("max_lambda_1", 8, 16, 0.9)
    # the public launcher's 500 steps (≈4 epochs), not the text's 2 epochs (244 steps); GRPO's advantages scaled by
    # the group std as that launcher ran it, FRPO's never
    assert (rl["learning_rate"], rl["steps"], rl["lr_scheduler_type"], rl["warmup_ratio"], rl["weight_decay"]) == \
        (1e-5, 500, "cosine", 0.1, 0.1)
    assert "epochs" not in rl
    assert {run: rl_spec(mistral, run, 0, None)["rl"]["scale_rewards"] for run in RUNS} == \
        {run: "group" if run == "grpo" else "none" for run in RUNS}
    assert rl["lora"]["r"] == rl["lora"]["alpha"] == 64 and rl["use_vllm"] and rl["disable_dropout"]
    # the floor's and λ*'s completions are samples of the RL model itself: top_p 1, though RL sampled at 0.9
    from frpo.config import samples_spec

    assert samples_spec(mistral, None)["samples"]["top_p"] == 1.0 and rl["top_p"] == 0.9
    # Qwen inherits everything but its schedule (extends: mistral)
    assert (qwen["rl"]["learning_rate"], qwen["rl"]["steps"]) == (3e-5, 366)  # the text's 3 epochs of 1,950 / 16
    assert qwen["rl"]["beta"] == rl["beta"] and qwen["model"]["hf"]["id"] == "Qwen/Qwen2.5-7B-Instruct"
    assert q32["model"]["size"] == "32b" and rl_runs(q32) == ["grpo"] and q32["finetune"]["batch_size"] == 2
    # the sweeps: the main settings for every run and seed, Fig. 2's 12 for GRPO, Fig. 5's 48 of 72 for two runs
    assert set(finetune_settings(mistral, "frpo_lam1", 2)) == MAIN
    assert set(finetune_settings(mistral, "grpo", 1)) == MAIN
    sample = fig5_sample(mistral)
    assert len(sample) == 48 and sample <= FIG5_GRID and fig5_sample(view(paper(), "mistral")) == sample
    assert set(finetune_settings(mistral, "grpo", 0)) == MAIN | FIG2 | sample
    assert set(finetune_settings(mistral, "frpo_lam0.2", 0)) == MAIN | sample
    assert set(finetune_settings(qwen, "grpo", 0)) == MAIN | FIG2 and set(finetune_settings(q32, "grpo", 0)) == FIG2


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run of config/paper.yaml through the SLURM profile, offline, with the safety experiments' local
    files in place (stand-ins) and a placeholder API key: (its output, the job stats)."""
    work = tmp_path_factory.mktemp("paper")
    paper_files(work)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", **PAPER_ENV)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-n", "-p",
                             "--profile", str(ROOT / "profiles" / "slurm"), "-d", str(work),
                             "--configfile", str(ROOT / "config" / "paper.yaml")],
                            cwd=work, env=env, capture_output=True, text=True, timeout=900)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-5000:]
    stats = {k: int(v) for k, v in re.findall(r"^(\w+)\s+(\d+)$", out.split("Job stats:")[1].split("Reasons:")[0],
                                              flags=re.M)}
    return out, stats


def test_the_paper_dry_run_plans_both_tracks_with_the_paper_job_counts(dry_run):
    out, stats = dry_run
    sample = fig5_sample(view(paper(), "mistral"))
    # 2 models x 7 RL runs x 3 seeds; GRPO once for each Fig. 2 model; the math track's 8
    assert stats["rl_train"] == stats["merge_lora"] == 2 * 7 * 3 + 3 + 8
    # fine-tuning: every run and seed in the main settings; Fig. 2's 12 for GRPO seed 0 (Mistral, Qwen 7B, and the
    # three other sizes); Fig. 5's 48 settings x 2 policies for Mistral (a setting two sweeps name runs once)
    mistral = 7 * 3 * 2 + len(FIG2 - MAIN) + len(sample - MAIN - FIG2) + len(sample - MAIN)
    qwen7b = 7 * 3 * 2 + len(FIG2 - MAIN)
    assert stats["finetune"] == mistral + qwen7b + 3 * 12 + 8 * 3
    for run in ("grpo", "frpo_lam0.2"):  # Fig. 5: each of the 48 settings of both policies is planned
        for setting in sample:
            assert f"results/paper/mistral/ft/{run}/seed0/{setting}/seed0/tracking.csv" in out
    # Fig. 4 / Table 1: the base model, GRPO and FRPO λ=0.2 (3 seeds each) before and after GSM8K fine-tuning
    models = 1 + 2 * 3 + 2 * 3
    assert {b: stats[f"eval_{b}"] for b in ("gsm8k_maj8", "mmlu", "ifeval", "humaneval_plus")} == \
        dict.fromkeys(("gsm8k_maj8", "mmlu", "ifeval", "humaneval_plus"), models)  # Mistral's Table 1
    assert stats["eval_harmbench"] == stats["eval_strongreject"] == 2 * models  # Fig. 4: Mistral and Qwen
    assert stats["eval_math500"] == stats["eval_mbpp_plus"] == 1 + 8 + 8 * 3
    assert stats["sample_rewards"] == 2 * 7 * 3  # the floor and λ*: every RL model of Mistral and Qwen 7B
    # every figure: per experiment (Mistral draws every one, the study's matched-KL comparison too), and Fig. 2
    # once over the five safety models
    assert (stats["figure"], stats["table"], stats["figure_across"]) == (6 + 2 + 5 + 2, 2 + 1 + 1 + 1, 1)
    figures = ("fig_lambda_landscape", "fig_rl_curves", "fig3_lambda_star", "fig4", "fig5", "fig_floor",
               "fig_matched_kl", "fig_paired")
    for path in [f"results/paper/mistral/figures/{f}.png" for f in figures] + [
            "results/paper/mistral/figures/table1.csv", "results/paper/figures/safety/fig2.png",
            "results/paper/qwen7b/figures/fig4.png", "results/paper/math/figures/table2.csv"]:
        assert path in out, path
    fig2 = re.search(r"^rule figure_across:\n((?:    .*\n)+)", out, flags=re.M).group(1)
    for experiment in SAFETY:
        assert f"results/paper/{experiment}/tables/tracking.csv" in fig2, experiment
    assert "results/paper/math/" not in fig2


def test_every_gpu_job_of_the_paper_follows_its_models_size(dry_run):
    out, _ = dry_run
    config = paper()
    sizes = config["compute"]["sizes"]
    jobs = re.findall(r"^rule (rl_train|finetune):\n((?:    .*\n)+)Shell command: (.*)$", out, flags=re.M)
    assert len(jobs) == sum(dry_run[1][r] for r in ("rl_train", "finetune"))
    seen = set()
    for rule, body, command in jobs:
        experiment = re.search(r"output: results/paper/(\w+)/", body).group(1)
        size = view(config, experiment)["model"]["size"]
        if rule == "rl_train":
            stage = "rl"
        else:
            stage = "sft_full" if re.search(r"/[a-z0-9]+-full-lr", body) else "sft_lora"
        want = sizes[size][stage]
        res = re.search(r"resources: ([^\n]*)", body).group(1)
        assert re.search(rf"\bmem_mb={want['mem_mb']}\b", res) and re.search(rf"\bruntime={want['runtime']}\b", res)
        gpus, nodes = want["gpus"], want.get("nodes", 1)
        assert re.search(rf"\bgpu={gpus}\b", res) if nodes == 1 else re.search(rf"\bgres=gpu:{gpus}\b", res), res
        processes = gpus * nodes
        if processes > 1:
            assert command.startswith(f"frpo launch --processes {processes} --nodes {nodes} "
                                      f"--strategy {want['strategy']} -- frpo "), command
        else:
            assert not command.startswith("frpo launch"), command
        seen.add((size, stage))
    # every size of the paper trains RL and both kinds of fine-tuning (32B full fine-tuning: two nodes)
    assert seen >= {(s, st) for s in ("3b", "7b", "14b", "32b") for st in ("rl", "sft_lora", "sft_full")}
    assert "Mistral-7B-Instruct-v0.1" in out and "Qwen/Qwen2.5-32B-Instruct" in out
    for demo_value in ("builtin:", "minilm_", "\"device\": \"cpu\""):
        assert demo_value not in "\n".join(c for _, _, c in jobs), demo_value


def test_the_cost_table_counts_the_jobs_the_paper_dry_run_plans(dry_run):
    from frpo.cost import cost_rows

    _, stats = dry_run
    counted: dict[str, int] = {}
    for row in cost_rows(paper()):
        stage = row["stage"].split(" ")[0]
        counted[stage] = counted.get(stage, 0) + row["jobs"]
    assert counted == {stage: n for stage, n in stats.items() if stage in counted}
    assert set(counted) >= {"rl_train", "finetune", "sample_rewards", "eval_harmbench", "eval_math500"}


def test_a_dry_run_plans_without_the_local_files_and_keys_a_run_refuses_to_start_without(tmp_path):
    """What this machine lacks (the safety experiments' local files, the OpenAI key) is a warning in a dry run,
    which plans the whole DAG, and an error naming the key in a run, before any job."""
    env = {k: v for k, v in os.environ.items() if k not in PAPER_ENV}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    base = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", str(tmp_path), "--cores", "1",
            "--configfile", str(ROOT / "config" / "paper.yaml")]
    planned = subprocess.run([*base, "-np"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = planned.stdout + planned.stderr
    assert planned.returncode == 0, out[-3000:]
    assert ("frpo: planning only; a run would stop here: config: tracks.mistral.data.safety_prompts: "
            "'data/safety/train_lambda_0.5.parquet' is not a file") in out
    assert "tracks.qwen7b.judges.safety: judge 'safety_paper' needs the environment variable(s) OPENAI_API_KEY" in out
    assert re.search(r"^rl_train\s+53$", out, flags=re.M)  # the whole plan all the same
    run = subprocess.run(base, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert ("config: tracks.mistral.data.safety_prompts: 'data/safety/train_lambda_0.5.parquet' is not a file"
            in run.stdout + run.stderr)
    assert not (tmp_path / "results").exists() and "frpo: planning only" not in run.stdout + run.stderr
