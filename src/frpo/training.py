"""What the training stages (warm-up and downstream SFT, RL) share: the TrainingArguments they have in common
(schedule, precision, checkpoints), the LoRA config, and finding the checkpoint to resume from."""

from __future__ import annotations

from pathlib import Path

__all__ = ["common_training_args", "last_checkpoint", "lora_config"]


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` directory in ``ckpt_dir`` (one with a trainer_state.json), or None."""
    ckpts = [p for p in Path(ckpt_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not ckpts:
        return None
    return str(max(ckpts, key=lambda p: int(p.name.split("-")[-1])))


def common_training_args(section: dict, spec: dict, ckpt_dir: str | Path) -> dict:
    """The TrainingArguments shared by the RL and SFT stages: schedule, checkpoints for resuming, device."""
    cpu = spec.get("device", "cpu") == "cpu"
    return {
        "output_dir": str(ckpt_dir),
        "learning_rate": float(section["learning_rate"]),
        "lr_scheduler_type": section.get("lr_scheduler_type", "constant"),
        "warmup_steps": section.get("warmup_ratio", 0.0),  # transformers 5: a float < 1 is a ratio of the steps
        "weight_decay": section.get("weight_decay", 0.0),
        "save_strategy": "steps",
        "save_steps": section["save_steps"],
        "save_total_limit": 2,
        "logging_steps": 1,
        "seed": spec.get("seed", 0),
        "use_cpu": cpu,
        "bf16": not cpu,
        "gradient_checkpointing": section.get("gradient_checkpointing", not cpu),
        "report_to": [],
        "disable_tqdm": False,
    }


def lora_config(lora: dict):
    """The peft LoraConfig of a config's ``lora`` section (r, alpha, optional dropout, target_modules)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora["target_modules"], bias="none", task_type="CAUSAL_LM",
    )
