"""What a config's DAG declares it will cost: jobs and GPU-hours per experiment (track × stage), from the same
lookups the rules take their resources from (:mod:`frpo.compute` for training, the evaluation registry for
evaluations). GPU-hours are each job's GPUs × its declared runtime (first attempt): an upper bound on the SLURM
time asked for, not a measurement. ``frpo cost --config config/paper.yaml`` prints the table.

λ* runs (``rl.lambda_star``) are counted as one more FRPO run per seed: their λ is only known after GRPO.
"""

from __future__ import annotations

__all__ = ["cost_rows", "cost_table"]


def cost_rows(config: dict) -> list[dict]:
    """One row per (track, stage): ``{"track", "stage", "jobs", "gpus_per_job", "hours_per_job", "gpu_hours"}``;
    stages with several placements (LoRA and full fine-tuning) give one row each."""
    from .compute import job, sft_stage
    from .config import evaluated, finetune_settings, ft_seeds, rl_runs, rl_seeds, samples_rewards, view
    from .evals import resources
    from .runs import Target

    rows: dict[tuple, dict] = {}

    def add(track, stage, n, gpus, minutes):
        key = (track, stage, gpus, minutes)
        row = rows.setdefault(key, {"track": track, "stage": stage, "jobs": 0, "gpus_per_job": gpus,
                                    "hours_per_job": minutes / 60})
        row["jobs"] += n

    def total_gpus(j):
        return j.gpus * j.nodes

    for track in config["tracks"]:
        v = view(config, track)
        rl_section = v["rl"]
        runs = list(rl_runs(v))
        if rl_section.get("lambda_star", {}).get("enabled") and "frpo" in rl_section["algorithms"]:
            runs.append("frpo_lam0.1")  # λ* stands in: its name is only known after GRPO, its cost is an FRPO run's
        rl_targets = [Target.rl(run, seed) for run in runs for seed in rl_seeds(v)]
        ft_targets = [Target.ft(t.run.name, t.rl_seed, s, f) for t in rl_targets
                      for s in finetune_settings(v, t.run.name, t.rl_seed) for f in ft_seeds(v)]
        if v["warmup"]["enabled"]:
            w = job(v, sft_stage(v["warmup"]["train"]["method"]))
            add(track, "warmup_sft", 1, total_gpus(w), w.runtime)
        rl = job(v, "rl")
        add(track, "rl_train", len(rl_targets), total_gpus(rl), rl.runtime)
        for t in ft_targets:
            method = t.setting.method
            j = job(v, sft_stage(method))
            add(track, f"finetune ({method})", 1, total_gpus(j), j.runtime)
        if samples_rewards(v):  # sample_rewards (workflow/rules/track.smk): one GPU, 2 h, per RL model
            add(track, "sample_rewards", len(rl_targets), 1 if v["device"] == "cuda" else 0, 120)
        models = [x for x in (Target("base"), *rl_targets, *ft_targets) if evaluated(v, x)]
        for bench in v["eval"]["benchmarks"]:
            res = resources(bench)
            add(track, f"eval_{bench}", len(models), res["gpu"] if v["device"] == "cuda" else 0, res["runtime"])
    out = []
    for row in rows.values():
        row["gpu_hours"] = row["jobs"] * row["gpus_per_job"] * row["hours_per_job"]
        out.append(row)
    return out


def cost_table(config: dict) -> str:
    """:func:`cost_rows` as a Markdown table, with the total."""
    rows = cost_rows(config)
    lines = ["| track | stage | jobs | GPUs per job | hours per job | GPU-hours |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['track']} | {r['stage']} | {r['jobs']} | {r['gpus_per_job']} | "
                     f"{r['hours_per_job']:g} | {r['gpu_hours']:,.0f} |")
    total = sum(r["gpu_hours"] for r in rows)
    lines.append(f"| **total** | | {sum(r['jobs'] for r in rows)} | | | **{total:,.0f}** |")
    return "\n".join(lines) + "\n"
