"""What the training stages (warm-up and downstream SFT, RL) share: the TrainingArguments they have in common
(schedule, precision, checkpoints), the numerical precision of the trained weights, the LoRA config, and finding
the checkpoint to resume from.

Precision (``spec["precision"]``; by default ``bf16-mixed`` on CUDA and ``fp32`` on the CPU) is a parameter, so
that a CPU test runs the very code path a GPU run takes:

* ``fp32``: float32 weights, no autocast;
* ``bf16-mixed``: the trained parameters are float32 master weights and the forward/backward passes run under
  bf16 autocast (Trainer's ``bf16=True``). With LoRA only the adapters train: the frozen base is held in bf16 and
  PEFT keeps the adapters in float32;
* ``bf16``: every weight in bf16, the trained ones too. AdamW steps below half a bf16 ulp are rounded away: at
  lr 1e-6 about 2% of N(0, 0.02²) weights change in 10 steps. Kept only to show that loss (the tests' control).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PRECISIONS", "common_training_args", "last_checkpoint", "lora_config", "precision", "precision_record"]

#: precision -> (dtype of the trained parameters, autocast dtype or None)
PRECISIONS = {"fp32": ("float32", None), "bf16-mixed": ("float32", "bfloat16"), "bf16": ("bfloat16", "bfloat16")}


def precision(spec: dict, lora: bool = False) -> dict:
    """The precision settings of a training stage: ``{"precision", "load_dtype", "autocast_dtype"}``.

    ``load_dtype`` is the dtype to load the model in: the master dtype for full-parameter training, and for LoRA
    under autocast the autocast dtype (the frozen base is only read; PEFT keeps the adapters in float32)."""
    name = spec.get("precision") or ("fp32" if spec.get("device", "cpu") == "cpu" else "bf16-mixed")
    if name not in PRECISIONS:
        raise ValueError(f"precision: unknown precision {name!r} (known: {', '.join(PRECISIONS)})")
    master, autocast = PRECISIONS[name]
    load = autocast if (lora and autocast) else master
    return {"precision": name, "load_dtype": load, "autocast_dtype": autocast}


def precision_record(model, settings: dict) -> dict:
    """What a run's summary records about its precision: the setting, the dtypes of the trained parameters (the
    master weights the optimiser updates), of the frozen ones, and the autocast dtype."""

    def dtypes(trainable: bool) -> list[str]:
        return sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()
                       if p.requires_grad == trainable})

    return {"precision": settings["precision"], "trainable_dtype": dtypes(True), "frozen_dtype": dtypes(False),
            "autocast_dtype": settings["autocast_dtype"]}


def last_checkpoint(ckpt_dir: str | Path) -> str | None:
    """The newest complete ``checkpoint-N`` directory in ``ckpt_dir`` (one with a trainer_state.json), or None."""
    ckpts = [p for p in Path(ckpt_dir).glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    if not ckpts:
        return None
    return str(max(ckpts, key=lambda p: int(p.name.split("-")[-1])))


def common_training_args(section: dict, spec: dict, ckpt_dir: str | Path) -> dict:
    """The TrainingArguments shared by the RL and SFT stages: schedule, checkpoints for resuming, device, autocast
    (:func:`precision`)."""
    cpu = spec.get("device", "cpu") == "cpu"
    autocast = precision(spec)["autocast_dtype"]
    return {
        "output_dir": str(ckpt_dir),
        "learning_rate": float(section["learning_rate"]),
        "lr_scheduler_type": section.get("lr_scheduler_type", "constant"),
        "warmup_steps": section.get("warmup_ratio", 0.0),  # transformers 5: a float < 1 is a ratio of the steps
        "weight_decay": section.get("weight_decay", 0.0),
        "max_grad_norm": section.get("max_grad_norm", 1.0),
        "save_strategy": "steps",
        "save_steps": section["save_steps"],
        "save_total_limit": 2,
        "logging_steps": 1,
        "seed": spec.get("seed", 0),
        "use_cpu": cpu,
        "bf16": autocast == "bfloat16",
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
