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

import os
from pathlib import Path

__all__ = ["PRECISIONS", "REPORTERS", "common_training_args", "last_checkpoint", "lora_config", "precision",
           "precision_record", "reporting", "run_name"]

#: the live-curve writers a training stage may report to (``spec["report_to"]``)
REPORTERS = ("tensorboard", "wandb")

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


def run_name(spec: dict, ckpt_dir: str | Path) -> str:
    """A name that tells one training run from the others on a shared dashboard (W&B's run name).

    The workflow's checkpoint folder, ``results/<config>/.ckpt/<track>/<stage>/<run>/seed<n>[/<setting>/seed<m>]``,
    names a stage completely (the fine-tuning specs carry neither the RL run nor the setting), so it is the name
    when ``ckpt_dir`` lies under a ``.ckpt`` folder; otherwise the spec's track, run, setting and seed, as present,
    and the folder's own name when the spec has none of them."""
    parts = Path(ckpt_dir).resolve().parts
    if ".ckpt" in parts[:-1]:
        at = len(parts) - 1 - parts[::-1].index(".ckpt")
        return "/".join(parts[at - 1:at] + parts[at + 1:])  # the config's name, then the path below .ckpt
    named = [str(spec[k]) for k in ("track", "run", "setting") if spec.get(k)]
    if spec.get("seed") is not None:
        named.append(f"seed{spec['seed']}")
    return "/".join(named) if named else Path(ckpt_dir).name


def reporting(spec: dict, ckpt_dir: str | Path) -> dict:
    """The TrainingArguments of a stage's live curves (``spec["report_to"]``, a list among :data:`REPORTERS`;
    absent: none), and the environment their Trainer callbacks read.

    TrainingArguments has no ``logging_dir`` in transformers 5: TensorBoardCallback reads
    ``TENSORBOARD_LOGGING_DIR`` when the Trainer is built (which follows this call in the stages), else it
    writes to a new ``<output_dir>/runs/<date>_<host>`` folder on every start. Pinned to
    ``<ckpt_dir>/tensorboard`` (next to the checkpoints, outside the rule's declared outputs), the curves are
    there while the job runs, survive a crash, and a resumed run adds its event file to the same folder.

    W&B reads ``WANDB_PROJECT``/``WANDB_ENTITY``/``WANDB_DIR`` (set here from ``spec["wandb"]``, its local files
    next to the checkpoints) and the run's name from ``run_name``. Only the main process writes either: both
    callbacks return early unless ``state.is_world_process_zero``."""
    report_to = spec.get("report_to") or []
    if isinstance(report_to, str) or not all(isinstance(r, str) for r in report_to):
        raise ValueError(f"report_to: expected a list of names among {', '.join(REPORTERS)}, got {report_to!r}")
    unknown = [r for r in report_to if r not in REPORTERS]
    if unknown:
        raise ValueError(f"report_to: unknown {', '.join(map(repr, unknown))} (known: {', '.join(REPORTERS)})")
    out = {"report_to": list(report_to), "run_name": run_name(spec, ckpt_dir)}
    if "tensorboard" in report_to:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(ckpt_dir).resolve() / "tensorboard")
    if "wandb" in report_to:
        try:
            import wandb  # noqa: F401
        except ImportError as e:
            raise ImportError(f"report_to: 'wandb' needs the Weights & Biases client (pip install wandb), which "
                              f"is not importable here ({e}); install it or drop 'wandb' from report_to") from e
        opts = spec.get("wandb") or {}
        Path(ckpt_dir).mkdir(parents=True, exist_ok=True)  # W&B writes its run files under WANDB_DIR/wandb
        os.environ["WANDB_DIR"] = str(Path(ckpt_dir).resolve())
        os.environ["WANDB_PROJECT"] = str(opts.get("project") or "frpo")
        if opts.get("entity"):
            os.environ["WANDB_ENTITY"] = str(opts["entity"])
    return out


def common_training_args(section: dict, spec: dict, ckpt_dir: str | Path) -> dict:
    """The TrainingArguments shared by the RL and SFT stages: schedule, checkpoints for resuming, device, autocast
    (:func:`precision`), live curves (:func:`reporting`)."""
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
        "disable_tqdm": False,
        **reporting(spec, ckpt_dir),
    }


def lora_config(lora: dict):
    """The peft LoraConfig of a config's ``lora`` section (r, alpha, optional dropout, target_modules)."""
    from peft import LoraConfig

    return LoraConfig(
        r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora.get("dropout", 0.0),
        target_modules=lora["target_modules"], bias="none", task_type="CAUSAL_LM",
    )
