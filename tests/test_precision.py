"""Precision of training and saved models (issue 9, item 1): float32 master weights under bf16 autocast for
full-parameter training, a bf16 frozen base for LoRA, models saved in model.save_dtype, the LoRA merge in bf16,
and the merge's memory sized from the model."""

from __future__ import annotations

import json
import re

import pytest
import torch
from safetensors.torch import load_file

from frpo.models import (
    MERGE_MEM_MB_UNKNOWN,
    merge_lora,
    merge_mem_mb,
    prepare_base_model,
    stored_dtype,
    weights_mb,
)
from frpo.sft import run_sft
from frpo.tiny import save_tiny_model
from frpo.training import common_training_args, precision

WORDS = "sure here is a plan sorry i cannot help with that how do bake bread make weapon".split()


def _weights(directory) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def _sft_spec(tmp_path, prec: str, method: str = "full") -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    data = tmp_path / "demos.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"how do i {w} bread", "response": f"sure here is a plan {w}"})
                            + "\n" for w in WORDS))
    train = {"method": method, "learning_rate": 1e-6, "epochs": 1, "max_steps": 3, "batch_size": 4,
             "max_length": 64, "save_steps": 1000}
    if method == "lora":
        train["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    # save_dtype float32: the test reads the trained master weights back exactly
    return {"device": "cpu", "precision": prec, "seed": 0, "save_dtype": "float32", "train": train,
            "dataset": {"path": str(data), "format": "chat"}}


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory):
    """A tiny model stored in bf16, as the paper's checkpoints are."""
    return save_tiny_model(tmp_path_factory.mktemp("bf16"), WORDS, dtype=torch.bfloat16, hidden_size=32,
                           num_heads=2, seed=0)


def test_precision_settings_by_device_and_method():
    assert precision({"device": "cpu"}) == {"precision": "fp32", "load_dtype": "float32", "autocast_dtype": None}
    gpu = precision({"device": "cuda"})
    assert gpu == {"precision": "bf16-mixed", "load_dtype": "float32", "autocast_dtype": "bfloat16"}
    assert precision({"device": "cuda"}, lora=True)["load_dtype"] == "bfloat16"  # frozen base only
    assert precision({"device": "cpu", "precision": "bf16-mixed"}) == gpu  # the GPU path, runnable on the CPU
    section = {"learning_rate": 1e-5, "save_steps": 10}
    assert common_training_args(section, {"device": "cuda"}, "ck")["bf16"] is True
    assert common_training_args(section, {"device": "cpu"}, "ck")["bf16"] is False
    with pytest.raises(ValueError, match="precision: unknown precision 'fp16'"):
        precision({"precision": "fp16"})


def _moved_fraction(before: dict, after: dict) -> float:
    n = sum(v.numel() for v in before.values())
    return sum(int((after[k].float() != v.float()).sum()) for k, v in before.items()) / n


def test_full_finetuning_with_the_gpu_precision_keeps_float32_master_weights(bf16_model, tmp_path):
    """At lr 1e-6 an AdamW step is far below a bf16 ulp of N(0, 0.02²) weights: float32 masters move nearly every
    weight; pure bf16 weights (the old GPU path, the control) move about 2% of them."""
    before = _weights(bf16_model)
    gpu = precision({"device": "cuda"})["precision"]
    summary = run_sft(_sft_spec(tmp_path / "a", gpu), bf16_model, tmp_path / "a/out", tmp_path / "a/ckpt")
    assert summary["steps"] == 3
    assert summary["precision"] == {"precision": "bf16-mixed", "trainable_dtype": ["float32"], "frozen_dtype": [],
                                    "autocast_dtype": "bfloat16"}
    moved = _moved_fraction(before, _weights(tmp_path / "a/out/model"))
    assert moved > 0.95

    control = run_sft(_sft_spec(tmp_path / "b", "bf16"), bf16_model, tmp_path / "b/out", tmp_path / "b/ckpt")
    assert control["precision"]["trainable_dtype"] == ["bfloat16"]
    assert _moved_fraction(before, _weights(tmp_path / "b/out/model")) < 0.1


def test_lora_with_the_gpu_precision_keeps_a_bf16_base_and_float32_adapters(bf16_model, tmp_path):
    summary = run_sft(_sft_spec(tmp_path, "bf16-mixed", "lora"), bf16_model, tmp_path / "out", tmp_path / "ckpt")
    assert summary["precision"] == {"precision": "bf16-mixed", "trainable_dtype": ["float32"],
                                    "frozen_dtype": ["bfloat16"], "autocast_dtype": "bfloat16"}


def test_sft_saves_in_the_dtype_its_input_was_stored_in(bf16_model, tmp_path):
    spec = _sft_spec(tmp_path, "fp32")
    del spec["save_dtype"]
    spec["train"]["max_steps"] = 1
    summary = run_sft(spec, bf16_model, tmp_path / "out", tmp_path / "ckpt")
    assert summary["save_dtype"] == "bfloat16" and stored_dtype(tmp_path / "out/model") == torch.bfloat16


def test_prepare_base_model_saves_in_model_save_dtype(tmp_path):
    spec = {"source": "tiny", "tiny": {"hidden_size": 16, "num_heads": 2}}
    prepare_base_model(spec, tmp_path / "fp32", WORDS)
    prepare_base_model({**spec, "save_dtype": "bfloat16"}, tmp_path / "bf16", WORDS)
    assert stored_dtype(tmp_path / "fp32") == torch.float32
    assert stored_dtype(tmp_path / "bf16") == torch.bfloat16
    assert {v.dtype for v in _weights(tmp_path / "bf16").values()} == {torch.bfloat16}
    assert weights_mb(tmp_path / "bf16") < 0.6 * weights_mb(tmp_path / "fp32")
    with pytest.raises(ValueError, match="model.save_dtype: unknown dtype 'float16'"):
        prepare_base_model({**spec, "save_dtype": "float16"}, tmp_path / "bad", WORDS)


def _adapter(base_dir, out_dir):
    """A LoRA adapter with non-zero A and B (a trained one), saved in float32 as PEFT keeps adapters."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from frpo.training import lora_config

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    config = lora_config({"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]})
    config.init_lora_weights = False  # random A and B, so the merge changes the weights
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        get_peft_model(model, config).save_pretrained(out_dir)
    return out_dir


def test_merge_lora_in_bf16_equals_the_float32_merge_up_to_bf16_rounding(bf16_model, tmp_path):
    from frpo.models import load_causal_lm

    # the same weights stored in float32 (bf16 values, exactly representable)
    fp32_base = tmp_path / "fp32"
    for part in load_causal_lm(bf16_model, dtype=torch.float32):
        part.save_pretrained(fp32_base)
    assert stored_dtype(fp32_base) == torch.float32
    adapter = _adapter(fp32_base, tmp_path / "adapter")

    merge_lora(bf16_model, adapter, tmp_path / "m_bf16")
    merge_lora(fp32_base, adapter, tmp_path / "m_fp32")
    merged, reference = _weights(tmp_path / "m_bf16"), _weights(tmp_path / "m_fp32")
    assert stored_dtype(tmp_path / "m_bf16") == torch.bfloat16
    assert stored_dtype(tmp_path / "m_fp32") == torch.float32
    assert {v.dtype for v in merged.values()} == {torch.bfloat16}
    changed = [k for k in reference if not torch.equal(reference[k], _weights(fp32_base)[k])]
    assert changed and all("q_proj" in k or "v_proj" in k for k in changed)
    for key, ref in reference.items():  # the float32 merge rounded to bf16, bit for bit
        assert torch.equal(merged[key], ref.to(torch.bfloat16)), key


def test_merge_mem_mb_is_sized_from_the_base_weights(tmp_path, bf16_model):
    base = tmp_path / "base"
    base.mkdir()
    for name, mb in (("model-00001-of-00002.safetensors", 1024), ("model-00002-of-00002.safetensors", 512)):
        with open(base / name, "wb") as f:
            f.truncate(mb * 2**20)  # sparse: the size without the bytes
    (base / "tokenizer.json").write_text("{}" * 1000)  # not weights
    assert weights_mb(base) == 1536
    assert merge_mem_mb(base) == 2 * 1536 + 2048
    # a 7B model in bf16 (15.2 GB of weights) needs 32.5 GB, more than the 16 GB the rule used to ask for
    assert merge_mem_mb(bf16_model) < merge_mem_mb(base)
    assert merge_mem_mb(tmp_path / "missing") == MERGE_MEM_MB_UNKNOWN


@pytest.mark.parametrize(("lora", "trainable", "frozen"),
                         [(False, ["float32"], []), (True, ["float32"], ["bfloat16"])], ids=["full", "lora"])
def test_rl_loads_its_model_in_the_precision_and_trains(tiny_model_dir, tmp_path, lora, trainable, frozen):
    """TRL loads a model given by path in ``model_init_kwargs["dtype"]`` (float32 if unset): made explicit, full RL
    trains float32 masters and LoRA a bf16 frozen base under bf16 autocast, the GPU setting, here on the CPU."""
    from conftest import G

    from frpo.rl import build_rl_config
    from frpo.toy import toy_dataset, toy_reward
    from frpo.trainer import FRPOTrainer
    from frpo.training import lora_config, precision_record

    rl = {"steps": 1, "prompts_per_step": 2, "num_generations": G, "max_completion_length": 4,
          "learning_rate": 1e-3, "beta": 0.05, "save_steps": 1000}
    if lora:
        rl["lora"] = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    spec = {"run": "grpo", "objective": "grpo", "seed": 0, "device": "cpu", "precision": "bf16-mixed", "rl": rl}
    args = build_rl_config(spec, tmp_path / "ckpt", processes=1)
    assert args.model_init_kwargs == {"dtype": "bfloat16" if lora else "float32"} and args.bf16 is True
    args.save_strategy, args.disable_tqdm = "no", True
    trainer = FRPOTrainer(model=tiny_model_dir, reward_funcs=toy_reward, args=args, train_dataset=toy_dataset(),
                          peft_config=lora_config(rl["lora"]) if lora else None)
    trainer.train()
    assert trainer.state.global_step == 1
    assert precision_record(trainer.model, precision(spec, lora=lora)) == {
        "precision": "bf16-mixed", "trainable_dtype": trainable, "frozen_dtype": frozen,
        "autocast_dtype": "bfloat16"}


def test_the_merge_rule_asks_for_the_memory_its_base_model_needs(tmp_path):
    """A dry run of the smoke workflow where π_ref (the warm-up model) already holds 1 GiB of weights: merge_lora
    asks merge_mem_mb of it, 2 × 1024 + 2048 MB."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    from configs import load_config

    root = Path(__file__).resolve().parents[1]
    config = load_config("smoke.yaml", tracks=["safety"])
    config["tracks"]["safety"]["rl"]["lambda_star"]["enabled"] = False  # a checkpoint would defer the merge jobs
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    base = tmp_path / "results" / config["name"] / "safety" / "warmup" / "model"
    base.mkdir(parents=True)
    with open(base / "model.safetensors", "wb") as f:
        f.truncate(2**30)
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(root / "Snakefile"), "-n", "--cores", "1",
                          "-d", str(tmp_path), "--configfile", str(tmp_path / "config.yaml")],
                         capture_output=True, text=True, check=True).stdout
    merges = re.findall(r"^rule merge_lora:\n(?:    .*\n)*?    resources: ([^\n]*)", out, flags=re.M)
    assert merges and all("mem_mb=4096," in r for r in merges), merges
