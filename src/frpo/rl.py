"""Stage 1, RL training: GRPO or FRPO on a track's prompts and rewards, with LoRA, resumable from checkpoints.

``run_rl(spec, model_dir, out_dir, ckpt_dir)`` is what ``frpo rl`` (and the ``rl_train`` rule) calls. ``spec`` is
the part of the workflow config this stage reads::

    {"track": "safety", "run": "frpo_lam0.2", "objective": "frpo", "frpo_lambda": 0.2, "seed": 0, "device": "cpu",
     "rl": {...the track's rl section, per-run values resolved...}, "judges": {...}, "reward": {...},
     "data": {"safety_prompts": "builtin:safety_prompts"}}

The prompts and the reward functions (and their weights) are the track's (:mod:`frpo.tracks`). Checkpoints go
to ``ckpt_dir`` (outside the rule's declared outputs) and a rerun resumes from the newest one. The adapter and
``metrics.jsonl`` land in ``out_dir`` atomically, written by the main process alone when several run.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .io import atomic_dir
from .training import common_training_args, last_checkpoint, lora_config, precision, precision_record

from .runs import canonical_lambda

__all__ = ["build_rl_config", "canonical_lambda", "run_rl", "select_lambda_star"]


def per_device_batch(prompts_per_step: int, num_generations: int, grad_accum: int, world_size: int) -> int:
    """``per_device_train_batch_size`` (completions) such that one optimiser step sees ``prompts_per_step`` prompts
    over all ``world_size`` processes and ``grad_accum`` micro-batches, each micro-batch holding whole groups."""
    shards = grad_accum * world_size
    if prompts_per_step % shards:
        raise ValueError(
            f"rl.prompts_per_step ({prompts_per_step}) must be a multiple of rl.gradient_accumulation_steps "
            f"({grad_accum}) × processes ({world_size}) = {shards}: every micro-batch of every process holds whole "
            "groups of completions"
        )
    return prompts_per_step // shards * num_generations


def world_size() -> int:
    """Processes of this job (accelerate/torchrun set WORLD_SIZE; a plain process is 1)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def build_rl_config(spec: dict, ckpt_dir: str | Path, processes: int | None = None, reward_weights=None):
    """The FRPOConfig of one run; ``processes`` defaults to this job's :func:`world_size`."""
    from .trainer import FRPOConfig

    rl = spec["rl"]
    G, grad_accum = rl["num_generations"], rl.get("gradient_accumulation_steps", 1)
    length = {"max_steps": rl["steps"]} if "steps" in rl else {"num_train_epochs": rl["epochs"], "max_steps": -1}
    return FRPOConfig(
        **common_training_args(rl, spec, ckpt_dir),
        # TRL loads the model from its path in this dtype: float32 masters for full RL, a bf16 frozen base for LoRA
        model_init_kwargs={"dtype": precision(spec, lora=bool(rl.get("lora")))["load_dtype"]},
        **length,
        objective=spec["objective"],
        frpo_lambda=float(spec.get("frpo_lambda") or 1.0),
        jackknife=rl.get("jackknife", True),
        baseline=rl.get("baseline", True),
        lambda_scale=rl.get("lambda_scale", "equation_4_1"),
        beta=float(rl["beta"]),
        num_generations=G,
        per_device_train_batch_size=per_device_batch(rl["prompts_per_step"], G, grad_accum,
                                                     processes or world_size()),
        gradient_accumulation_steps=grad_accum,
        max_completion_length=rl["max_completion_length"],
        temperature=rl.get("temperature", 1.0),
        top_p=rl.get("top_p", 1.0),
        disable_dropout=rl.get("disable_dropout", True),
        reward_weights=reward_weights,
        max_reward_failure_fraction=rl.get("max_reward_failure_fraction", 0.0),
        scale_rewards=rl.get("scale_rewards", "none"),
        **vllm_args(rl),
    )


def vllm_args(rl: dict) -> dict:
    """GRPOConfig's vLLM settings: colocated with training (each group of ``tensor_parallel_size`` processes
    shares one engine), with the memory fraction and tensor parallelism of the model's size (config ``compute``;
    ``rl.vllm`` in the spec). Nothing but ``use_vllm=False`` when generation runs in transformers."""
    if not rl.get("use_vllm"):
        return {"use_vllm": False}
    v = rl.get("vllm", {})
    out = {"use_vllm": True, "vllm_mode": "colocate",
           "vllm_tensor_parallel_size": v.get("tensor_parallel_size", 1),
           "vllm_gpu_memory_utilization": v.get("gpu_memory_utilization", 0.3),
           "vllm_enable_sleep_mode": v.get("enable_sleep_mode", False)}
    if v.get("max_model_length"):
        out["vllm_max_model_length"] = v["max_model_length"]
    return out


def run_rl(spec: dict, model_dir: str | Path, out_dir: str | Path, ckpt_dir: str | Path) -> dict:
    """Train one RL run; returns its summary. Resumes from the newest checkpoint in ``ckpt_dir``."""
    from .generation import explicit_generation_config, trainer_generation_config, trainer_generation_record
    from .models import load_tokenizer
    from .trainer import FRPOTrainer
    from .tracks import get_track

    rl = spec["rl"]
    track = get_track(spec.get("track", "safety"))
    reward_funcs, reward_weights = track.reward_funcs(spec)
    args = build_rl_config(spec, ckpt_dir, reward_weights=reward_weights)
    lora = rl.get("lora")
    peft_config = lora_config(lora) if lora else None
    tokenizer = load_tokenizer(model_dir)
    trainer = FRPOTrainer(
        model=str(model_dir),
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=track.rl_dataset(spec, "train"),
        processing_class=tokenizer,
        peft_config=peft_config,
    )
    resume = last_checkpoint(ckpt_dir)
    if resume and trainer.accelerator.is_main_process:
        print(f"resuming {spec['run']} from {resume}", flush=True)
    with explicit_generation_config(trainer.model, trainer_generation_config(trainer)):
        trainer.train(resume_from_checkpoint=resume)
    steps = [h for h in trainer.state.log_history if "loss" in h]
    summary = {
        "track": spec.get("track", "safety"),
        "run": spec["run"],
        "seed": spec.get("seed"),
        "reward_weights": reward_weights,
        "objective": args.objective,
        "frpo_lambda": args.frpo_lambda if args.objective == "frpo" else None,
        "lambda_scale": args.lambda_scale if args.objective == "frpo" else None,
        "beta": args.beta,
        "scale_rewards": args.scale_rewards,
        "steps": len(steps),
        "resumed_from": resume,
        # what one optimiser step saw: prompts_per_step = per_device_prompts × micro-batches × processes
        "prompts_per_step": rl["prompts_per_step"],
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "processes": world_size(),
        "precision": precision_record(trainer.model, precision(spec, lora=bool(lora))),
        "generation": trainer_generation_record(trainer),
        "schedule": {"lr_scheduler_type": getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type),
                     "warmup_steps": args.warmup_steps, "weight_decay": args.weight_decay,
                     "disable_dropout": args.disable_dropout},
    }
    save_outputs(trainer, out_dir, "adapter" if peft_config else "model", spec["run"], steps, summary)
    return summary


def save_outputs(trainer, out_dir: str | Path, weights: str, run: str, steps: list[dict], summary: dict) -> None:
    """Write ``out_dir`` (the weights under ``weights``, ``metrics.jsonl``, ``summary.json``) atomically, from the
    main process only. ``trainer.save_model`` runs on every process (it is collective under ZeRO-3 and FSDP) into
    the same temporary directory, which only the main process creates, fills and renames; the others wait at the
    barriers, so that on return every process sees the finished ``out_dir`` and none wrote a file of its own."""
    accelerator = trainer.accelerator
    main = accelerator.is_main_process
    target = atomic_dir(out_dir)
    if main:
        target.__enter__()
    accelerator.wait_for_everyone()  # the temporary directory exists before anyone saves into it
    try:
        trainer.save_model(str(target.tmp / weights))
        if main:
            with open(target.tmp / "metrics.jsonl", "w") as f:
                for h in steps:
                    f.write(json.dumps({"run": run, **h}) + "\n")
            (target.tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    except BaseException as exc:
        if main:
            target.__exit__(type(exc), exc, exc.__traceback__)  # removes the temporary directory
        raise
    if main:
        target.__exit__(None, None, None)  # renames it into place
    accelerator.wait_for_everyone()


def select_lambda_star(metrics_paths, rho: float, last_k: int = 5) -> dict:
    """λ* = std/√(2ρ) (Remark 3.3), with std the within-group reward std over the last ``last_k`` logged steps of
    a (GRPO) run, as the paper reads it off the end of training (§5.1.1); with several runs (seeds), the mean of
    their stds. ``metrics_paths``: one ``metrics.jsonl`` or a list of them."""
    from .data import read_jsonl
    from .objective import lambda_star

    paths = [metrics_paths] if isinstance(metrics_paths, (str, Path)) else list(metrics_paths)
    per_run = []
    for path in paths:
        rows = read_jsonl(path)
        stds = [r["frpo/reward_std_within_group"] for r in rows if "frpo/reward_std_within_group" in r]
        if not stds:
            raise ValueError(f"{path}: no frpo/reward_std_within_group values to choose λ* from")
        per_run.append(sum(stds[-last_k:]) / len(stds[-last_k:]))
    std = sum(per_run) / len(per_run)
    if std <= 0:
        raise ValueError(f"{', '.join(map(str, paths))}: the within-group reward std is 0 at the end of training; "
                         "λ* is undefined")
    lam = lambda_star(std, rho)
    return {"reward_std": std, "reward_std_per_run": per_run, "rho": rho, "lambda_star": lam,
            "lambda": canonical_lambda(lam), "last_k": last_k}
