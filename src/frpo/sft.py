"""Supervised fine-tuning with TRL's SFTTrainer: the demo's warm-up stage and stage 2, downstream fine-tuning.

``run_sft(spec, model_dir, out_dir, ckpt_dir)`` trains on one data set (prompt-completion, loss on the
completion only, as the paper's SFT scripts), full or LoRA, resumable from ``ckpt_dir``, and writes the
resulting full model (LoRA merged) to ``out_dir`` atomically, in ``spec["save_dtype"]`` or else the dtype
``model_dir`` is stored in. Full fine-tuning keeps float32 master weights under ``spec["precision"]``
``bf16-mixed``, the GPU default (:func:`frpo.training.precision`); ``summary.json`` records the precision.

Data formats (``spec["dataset"]["format"]``):
* ``gsm8k``: {question, answer} → user: question, assistant: the worked answer (we keep the ``#### N`` line;
  the public GSM8K script dropped it, spec §5.11);
* ``alpaca``: {instruction, input, output} → user: "### Instruction:\\n…" (+ "\\n\\n### Input:\\n…"),
  assistant: output, as the public Alpaca script;
* ``chat``: {prompt, response} → one user and one assistant turn (the warm-up refusal demonstrations);
* ``code``: {input, output} → an empty system turn, user: input, assistant: output, as the public
  OpenCodeInstruct script (spec §2.3).

With ``spec["track_forgetting"]`` the tracker measures the probes of the run's track (``spec["track"]``,
:func:`frpo.tracks.get_track`); without it ``tracking.csv`` holds its header line ``step`` only.

Several processes (``frpo launch``: DDP, DeepSpeed ZeRO-2/3, FSDP): every process trains, measures (the tracker
runs on all of them, :mod:`frpo.track`) and takes part in saving the trained weights, which under ZeRO-3 and
FSDP are sharded and gathered by a collective (``trainer.save_model``, into ``<ckpt_dir>/final-model``). Only
the main process writes ``tracking.csv`` and ``out_dir``, from that gathered copy (merging LoRA there, a local
step); the others wait for it, so that ``out_dir`` is complete when any process returns.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
from pathlib import Path

from .guards import FiniteLossCallback
from .io import atomic_dir
from .models import as_dtype, load_causal_lm, stored_dtype
from .training import common_training_args, last_checkpoint, lora_config, precision, precision_record

__all__ = ["run_sft", "sft_rows"]


def sft_rows(dataset_spec: dict) -> list[dict]:
    """Rows of ``dataset_spec`` (path, format, split) as {prompt: [user msg], completion: [assistant msg]}."""
    from .data import read_jsonl, resolve

    fmt = dataset_spec["format"]
    required = {
        "gsm8k": {"question": str, "answer": str},
        "alpaca": {"instruction": str, "input": str, "output": str},
        "chat": {"prompt": str, "response": str},
        "code": {"input": str, "output": str},
    }
    if fmt not in required:
        raise ValueError(f"dataset.format: unknown format {fmt!r} (known: {sorted(required)})")
    rows = read_jsonl(resolve(dataset_spec["path"]), required=required[fmt])
    split = dataset_spec.get("split")
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    out = []
    for r in rows:
        if fmt == "gsm8k":
            user, assistant = r["question"], r["answer"]
        elif fmt == "alpaca":
            user = (f"### Instruction:\n{r['instruction']}"
                    + (f"\n\n### Input:\n{r['input']}" if r["input"] else ""))
            assistant = r["output"].strip()
        elif fmt == "code":
            user, assistant = r["input"], r["output"]
        else:
            user, assistant = r["prompt"], r["response"]
        system = [{"role": "system", "content": ""}] if fmt == "code" else []
        out.append({"prompt": [*system, {"role": "user", "content": user}],
                    "completion": [{"role": "assistant", "content": assistant}]})
    limit = dataset_spec.get("max_examples")
    if not out:
        raise ValueError(f"{dataset_spec['path']}: no rows for split={split!r}")
    return out[:limit] if limit else out


#: the KL-only probe on the fine-tuning set's held-out prompts (finetune.track.data_prompts)
DATA_PROBE = "ft_data"


def data_probe(spec: dict, n: int):
    """The KL-only probe :data:`DATA_PROBE`: ``n`` held-out (``eval`` split) prompts of the fine-tuning data set,
    spread over the file, each the user turn of one example."""
    from .data import take
    from .track import Probe

    rows = sft_rows({**spec["dataset"], "split": "eval", "max_examples": None})
    prompts = [next(m["content"] for m in reversed(r["prompt"]) if m["role"] == "user") for r in rows]
    return Probe(DATA_PROBE, take(prompts, n, "finetune.track.data_prompts",
                                  f"held-out rows in {spec['dataset']['path']}"))


def _tracker(spec: dict, ref_model, tokenizer, csv_path: Path):
    """The forgetting tracker over the track's probes (and, with ``data_prompts``, the fine-tuning set's held-out
    prompts: :func:`data_probe`); ``ref_model`` is the pre-fine-tuning model (a frozen copy, never trained)."""
    from .track import ForgettingTracker
    from .tracks import get_track

    opts = spec["track_forgetting"]
    probes = get_track(spec["track"]).probes(spec)
    if opts.get("data_prompts"):
        probes.append(data_probe(spec, opts["data_prompts"]))
    return ForgettingTracker(
        ref_model=ref_model, tokenizer=tokenizer, probes=probes,
        csv_path=csv_path, every_steps=opts["every_steps"], max_new_tokens=opts["max_new_tokens"],
        temperature=opts.get("temperature", 1.0), seed=spec.get("seed", 0), batch_size=opts.get("batch_size", 16),
    )


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return is_deepspeed_zero3_enabled()


@contextlib.contextmanager
def _plain_loading():
    """Within the block transformers loads models whole, not under DeepSpeed's zero.Init: for loading on the main
    process alone (zero.Init partitions the weights over all processes, a collective the others would not
    join). transformers keeps the DeepSpeed config it loads under as a module-level weak reference, with public
    set and unset functions but no getter: the reference is read directly."""
    from transformers.integrations import deepspeed

    ref = deepspeed._hf_deepspeed_config_weak_ref
    config = ref() if ref is not None else None
    deepspeed.unset_hf_deepspeed_config()
    try:
        yield
    finally:
        if config is not None:
            deepspeed.set_hf_deepspeed_config(config)


def _saved_model(saved_dir: Path, model_dir, lora: bool, load_dtype, save_dtype):
    """The model to write, from what ``trainer.save_model`` wrote to ``saved_dir``: the trained weights, or for
    LoRA the adapter merged into the base loaded as training loaded it (``load_dtype``); in ``save_dtype``."""
    from transformers import AutoModelForCausalLM

    with _plain_loading():
        if not lora:
            return AutoModelForCausalLM.from_pretrained(saved_dir, dtype=save_dtype)
        from peft import PeftModel

        base, _ = load_causal_lm(model_dir, "cpu", dtype=load_dtype)
        return PeftModel.from_pretrained(base, str(saved_dir)).merge_and_unload().to(save_dtype)


def run_sft(spec: dict, model_dir: str | Path, out_dir: str | Path, ckpt_dir: str | Path) -> dict:
    """Fine-tune ``model_dir`` as ``spec`` says; resume from ``ckpt_dir``; write the merged model to ``out_dir``.
    Under several processes every process calls this; only the main one writes (see the module docstring)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ckpt_dir = Path(ckpt_dir)
    train = spec["train"]
    lora = train["method"] == "lora"
    settings = precision(spec, lora=lora)
    save_dtype = as_dtype(spec["save_dtype"], "save_dtype") if spec.get("save_dtype") else stored_dtype(model_dir)
    # The SFTConfig is built BEFORE the model is loaded: under DeepSpeed ZeRO-3 building it registers the
    # DeepSpeed config with transformers, whose from_pretrained asks is_deepspeed_zero3_enabled() at load time and
    # only then loads the weights under zero.Init, partitioned over the processes. Loaded first, every process
    # would hold the whole model.
    args = SFTConfig(
        **common_training_args(train, spec, ckpt_dir),
        num_train_epochs=train["epochs"],
        max_steps=train.get("max_steps", -1),
        per_device_train_batch_size=train["batch_size"],
        gradient_accumulation_steps=train.get("gradient_accumulation_steps", 1),
        max_length=train.get("max_length", 512),
    )
    main = args.process_index == 0  # the world's main process (sets up the process group if there is one)
    model, tokenizer = load_causal_lm(model_dir, spec.get("device", "cpu"), dtype=settings["load_dtype"])
    tokenizer.padding_side = "right"
    peft_config = lora_config(train["lora"]) if lora else None
    callbacks = [FiniteLossCallback("fine-tuning")]
    tracker = None
    resume = last_checkpoint(ckpt_dir)
    if spec.get("track_forgetting"):
        if _zero3():  # a partitioned model cannot be copied: load the reference partitioned too (every process)
            ref_model, _ = load_causal_lm(model_dir, spec.get("device", "cpu"), dtype=settings["load_dtype"])
            ref_model.eval().requires_grad_(False)
        else:  # the model as loaded, copied before SFTTrainer (and PEFT) wrap or train it
            ref_model = copy.deepcopy(model).eval().requires_grad_(False)
        tracker = _tracker(spec, ref_model, tokenizer, ckpt_dir / "tracking.csv")
        if main:  # the CSV is the main process's; the tracker reads it on every process when training begins
            tracker.truncate_after(-1 if resume is None else int(Path(resume).name.split("-")[-1]))
        args.distributed_state.wait_for_everyone()  # ... after this truncation
        callbacks.append(tracker)
    trainer = SFTTrainer(
        model=model, args=args, train_dataset=Dataset.from_list(sft_rows(spec["dataset"])),
        processing_class=tokenizer, peft_config=peft_config, callbacks=callbacks,
    )
    if tracker is not None and _zero3():
        from trl.models.utils import prepare_deepspeed

        # the partitioned reference runs its forward passes through a DeepSpeed engine of its own, as TRL's
        # reference models do
        tracker.ref_model = prepare_deepspeed(tracker.ref_model, trainer.accelerator)
    if resume and main:
        print(f"resuming from {resume}", flush=True)
    trainer.train(resume_from_checkpoint=resume)
    summary = {"steps": trainer.state.global_step, "resumed_from": resume,
               "final_loss": next((h["loss"] for h in reversed(trainer.state.log_history) if "loss" in h), None),
               "precision": precision_record(trainer.model, settings), "processes": args.world_size,
               "save_dtype": str(save_dtype).removeprefix("torch.")}
    if tracker is not None:  # the exact sampling of the tracked completions (frpo.generation.generation_record)
        summary["tracking_generation"] = tracker.generation
    # Every process saves: under ZeRO-3 and FSDP this gathers the sharded weights (a collective); the main process
    # alone writes them (the adapter, for LoRA).
    saved_dir = ckpt_dir / "final-model"
    if main:  # nothing left from a run killed while writing it
        shutil.rmtree(saved_dir, ignore_errors=True)
    trainer.save_model(str(saved_dir))
    if main:
        trained = _saved_model(saved_dir, model_dir, lora, settings["load_dtype"], save_dtype)
        with atomic_dir(out_dir) as tmp:
            trained.save_pretrained(tmp / "model", safe_serialization=True)
            tokenizer.save_pretrained(tmp / "model")
            if tracker is not None:
                shutil.copy(ckpt_dir / "tracking.csv", tmp / "tracking.csv")
            else:  # no tracker configured: a header-only table, so every fine-tuning run has the same outputs
                (tmp / "tracking.csv").write_text("step\n")
            with open(tmp / "train_log.jsonl", "w") as f:
                for h in trainer.state.log_history:
                    f.write(json.dumps(h) + "\n")
            (tmp / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        shutil.rmtree(saved_dir, ignore_errors=True)
    args.distributed_state.wait_for_everyone()  # out_dir is complete before any process returns
    return summary
