"""Generation backends for the evaluations: vLLM on a GPU, transformers ``generate`` otherwise.

``get_backend(model_path, name="auto")`` picks vLLM when it is importable and CUDA is available, transformers
otherwise. Both expose ``generate(prompts, max_new_tokens, temperature=0.0, n=1, system_prompt=None)`` ->
``list[list[str]]`` (one list of ``n`` completions per prompt), render prompts with the model's chat template
(a prompt is a string, wrapped as one user turn, or a list of chat messages; messages ending with an assistant
message are continued from it, a prefill, and the completion returned excludes it), decode greedily when
``temperature == 0``, and carry a ``.name`` that the result JSON records.
"""

from __future__ import annotations

import importlib.util

__all__ = ["TransformersBackend", "VLLMBackend", "backend_name", "get_backend", "to_messages", "vllm_available"]


def vllm_available() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def backend_name(name: str) -> str:
    """``name`` with ``auto`` resolved: ``vllm`` when vLLM is importable and CUDA is available, else
    ``transformers``."""
    if name == "auto":
        return "vllm" if vllm_available() else "transformers"
    return name


def to_messages(prompt, system_prompt: str | None = None) -> list[dict]:
    """A prompt (string or chat messages) as chat messages, with ``system_prompt`` prepended when given."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    if system_prompt is not None and not (messages and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system_prompt}, *messages]
    return messages


class TransformersBackend:
    """Batched ``model.generate`` (frpo.generation) on the CPU or one GPU."""

    name = "transformers"

    def __init__(self, model_path, device: str = "cpu", batch_size: int = 16):
        from ..models import load_causal_lm

        self.model_path = str(model_path)
        self.device = device
        self.batch_size = batch_size
        self.model, self.tokenizer = load_causal_lm(model_path, device)

    def settings(self) -> dict:
        return {"backend": self.name, "device": self.device, "batch_size": self.batch_size}

    def generate(self, prompts, max_new_tokens: int, temperature: float = 0.0, n: int = 1,
                 system_prompt: str | None = None) -> list[list[str]]:
        from ..generation import generate

        messages = [to_messages(p, system_prompt) for p in prompts]
        do_sample = temperature > 0
        if not do_sample and n > 1:
            raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives n identical samples)")
        # n samples per prompt: repeat each prompt n times, consecutively
        flat = [m for m in messages for _ in range(n)]
        if not flat:
            return []
        gen = generate(self.model, self.tokenizer, flat, max_new_tokens=max_new_tokens, do_sample=do_sample,
                       temperature=temperature if do_sample else 1.0, batch_size=self.batch_size)
        return [gen.texts[i * n:(i + 1) * n] for i in range(len(messages))]


class VLLMBackend:
    """vLLM offline inference (bf16, one GPU); prompts go through ``LLM.chat`` and so the chat template."""

    name = "vllm"

    def __init__(self, model_path, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, seed: int = 0):
        from vllm import LLM

        self.model_path = str(model_path)
        self.dtype = dtype
        kwargs = {"model": self.model_path, "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
                  "seed": seed}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        self.llm = LLM(**kwargs)

    def settings(self) -> dict:
        import vllm

        return {"backend": self.name, "vllm_version": vllm.__version__, "dtype": self.dtype}

    def generate(self, prompts, max_new_tokens: int, temperature: float = 0.0, n: int = 1,
                 system_prompt: str | None = None) -> list[list[str]]:
        from vllm import SamplingParams

        if temperature == 0 and n > 1:
            raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives n identical samples)")
        params = SamplingParams(n=n, temperature=temperature, top_p=1.0, max_tokens=max_new_tokens)
        messages = [to_messages(p, system_prompt) for p in prompts]
        if not messages:
            return []
        prefill = messages[0][-1].get("role") == "assistant"  # continue an assistant prefill (all or none)
        if any((m[-1].get("role") == "assistant") != prefill for m in messages):
            raise ValueError("either every prompt ends with an assistant prefill or none does")
        outputs = self.llm.chat(messages, params, use_tqdm=False, add_generation_prompt=not prefill,
                                continue_final_message=prefill)
        return [[o.text.strip() for o in out.outputs] for out in outputs]


def get_backend(model_path, name: str = "auto", device: str | None = None, **kwargs):
    """The generation backend ``name`` (``auto``, ``vllm`` or ``transformers``) loaded with ``model_path``."""
    name = backend_name(name)
    if name == "vllm":
        return VLLMBackend(model_path, **kwargs)
    if name == "transformers":
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        return TransformersBackend(model_path, device=device, **kwargs)
    raise ValueError(f"unknown generation backend {name!r} (auto, vllm or transformers)")
