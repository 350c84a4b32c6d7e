"""Generation backends for the evaluations: vLLM on a GPU, transformers ``generate`` otherwise.

``get_backend(model_path, name="auto")`` picks vLLM when it is importable and CUDA is available, transformers
otherwise. Both expose ``generate(prompts, max_new_tokens, temperature=0.0, n=1, system_prompt=None, top_p=1.0,
stop=None)`` -> ``list[list[str]]`` (one list of ``n`` completions per prompt), render prompts with the model's chat
template (a prompt is a string, wrapped as one user turn, or a list of chat messages; messages ending with an
assistant message are continued from it, a prefill, and the completion returned excludes it), decode greedily when
``temperature == 0``, end each completion before its first ``stop`` string, and carry a ``.name`` that the result
JSON records.

Sampling is exactly what :func:`sampling_settings` writes down: the caller's temperature, top_p and length, and
nothing else (no repetition, presence or frequency penalty, no top-k or min-p truncation, nothing taken from the
model's shipped ``generation_config``: Qwen2.5-Instruct ships ``repetition_penalty=1.05``). ``settings()`` returns the
backend's own settings and those of its latest ``generate`` call, for the result JSON.
"""

from __future__ import annotations

import importlib.util

__all__ = ["NEUTRAL_SAMPLING", "TransformersBackend", "VLLMBackend", "backend_name", "cut_at_stop", "get_backend",
           "neutral_sampling_kwargs", "sampling_settings", "to_messages", "vllm_available", "vllm_engine_kwargs",
           "vllm_sampling_kwargs"]

#: every sampling knob a model's shipped ``generation_config`` could set, at its neutral value (no truncation, no
#: penalty); ``top_k`` None means no top-k (``neutral_sampling_kwargs`` spells it per library)
NEUTRAL_SAMPLING = {"top_p": 1.0, "top_k": None, "min_p": 0.0, "repetition_penalty": 1.0, "presence_penalty": 0.0,
                    "frequency_penalty": 0.0}


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


def sampling_settings(*, max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0, n: int = 1,
                      stop=None) -> dict:
    """The complete sampling settings of one ``generate`` call, as both backends apply them and results record them.

    Greedy when ``temperature == 0`` (then top_p is moot and recorded as 1.0). Everything a model's
    ``generation_config`` could otherwise add is pinned to its neutral value: no top-k (``top_k`` None), no min-p,
    repetition penalty 1.0, presence and frequency penalties 0.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    do_sample = temperature > 0
    if not do_sample and n > 1:
        raise ValueError("n > 1 needs temperature > 0 (greedy decoding gives n identical samples)")
    return {"do_sample": do_sample, "temperature": float(temperature) if do_sample else 0.0, **NEUTRAL_SAMPLING,
            "top_p": float(top_p) if do_sample else 1.0, "max_new_tokens": int(max_new_tokens), "n": int(n),
            "stop": [str(s) for s in (stop or [])]}


def neutral_sampling_kwargs(library: str) -> dict:
    """:data:`NEUTRAL_SAMPLING` as keyword arguments of ``library``'s generation call: ``"vllm"``
    (``SamplingParams``; ``top_k=-1`` disables top-k in every vLLM version, newer ones also accept 0) or
    ``"hf"`` (transformers ``generate``; ``top_k=0`` disables it; no presence/frequency penalties there)."""
    if library == "vllm":
        return {**NEUTRAL_SAMPLING, "top_k": -1}
    if library in ("hf", "transformers"):
        return {k: v for k, v in {**NEUTRAL_SAMPLING, "top_k": 0}.items()
                if k not in ("presence_penalty", "frequency_penalty")}
    raise ValueError(f"unknown generation library {library!r} (vllm or hf)")


def vllm_sampling_kwargs(settings: dict) -> dict:
    """``vllm.SamplingParams`` keyword arguments for :func:`sampling_settings` ``settings``, every one explicit."""
    return {**neutral_sampling_kwargs("vllm"), "n": settings["n"], "temperature": settings["temperature"],
            "top_p": settings["top_p"], "max_tokens": settings["max_new_tokens"],
            "stop": list(settings["stop"]) or None}


def vllm_engine_kwargs(model_path, *, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.9,
                       max_model_len: int | None = None, seed: int = 0) -> dict:
    """``vllm.LLM`` keyword arguments. ``generation_config="vllm"`` keeps vLLM from taking the model's shipped
    ``generation_config`` as its sampling defaults."""
    kwargs = {"model": str(model_path), "dtype": dtype, "gpu_memory_utilization": gpu_memory_utilization,
              "seed": seed, "generation_config": "vllm"}
    if max_model_len:
        kwargs["max_model_len"] = max_model_len
    return kwargs


def cut_at_stop(text: str, stop) -> str:
    """``text`` up to (not including) the earliest of the ``stop`` strings, as vLLM and EvalPlus end a completion."""
    cut = min((i for i in (text.find(s) for s in stop or [] if s) if i != -1), default=len(text))
    return text[:cut]


class _Backend:
    """What both backends do around their own generation: the complete sampling settings of the call (kept in
    ``sampling`` for the result JSON) and the prompts as chat messages; ``_generate`` does the rest."""

    name = "backend"
    sampling: dict | None = None  # the settings of the latest generate call

    def generate(self, prompts, max_new_tokens: int, temperature: float = 0.0, n: int = 1,
                 system_prompt: str | None = None, top_p: float = 1.0, stop=None) -> list[list[str]]:
        """``n`` completions per prompt (see the module docstring), each ended before its first ``stop`` string."""
        settings = sampling_settings(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, n=n,
                                     stop=stop)
        self.sampling = settings
        messages = [to_messages(p, system_prompt) for p in prompts]
        if not messages:
            return []
        return self._generate(messages, settings)

    def _generate(self, messages: list[list[dict]], settings: dict) -> list[list[str]]:
        raise NotImplementedError


class TransformersBackend(_Backend):
    """Batched ``model.generate`` (frpo.generation) on the CPU or one GPU."""

    name = "transformers"

    def __init__(self, model_path, device: str = "cpu", batch_size: int = 16):
        from ..models import load_causal_lm

        self.model_path = str(model_path)
        self.device = device
        self.batch_size = batch_size
        self.model, self.tokenizer = load_causal_lm(model_path, device)

    def settings(self) -> dict:
        return {"backend": self.name, "device": self.device, "batch_size": self.batch_size, "sampling": self.sampling}

    def _generate(self, messages: list[list[dict]], settings: dict) -> list[list[str]]:
        from ..generation import generate

        n = settings["n"]
        flat = [m for m in messages for _ in range(n)]  # n samples per prompt: each prompt n times, consecutively
        gen = generate(self.model, self.tokenizer, flat, max_new_tokens=settings["max_new_tokens"],
                       do_sample=settings["do_sample"], temperature=settings["temperature"] or 1.0,
                       top_p=settings["top_p"], batch_size=self.batch_size)
        self.sampling = {**settings, "sampler": gen.config}  # what generate() sampled with
        texts = [cut_at_stop(t, settings["stop"]).strip() for t in gen.texts]
        return [texts[i * n:(i + 1) * n] for i in range(len(messages))]


class VLLMBackend(_Backend):
    """vLLM offline inference (bf16, one GPU); prompts go through ``LLM.chat`` and so the chat template."""

    name = "vllm"

    def __init__(self, model_path, dtype: str = "bfloat16", gpu_memory_utilization: float = 0.9,
                 max_model_len: int | None = None, seed: int = 0):
        from vllm import LLM

        self.model_path = str(model_path)
        self.engine = vllm_engine_kwargs(model_path, dtype=dtype, gpu_memory_utilization=gpu_memory_utilization,
                                         max_model_len=max_model_len, seed=seed)
        self.llm = LLM(**self.engine)

    def settings(self) -> dict:
        import vllm

        return {"backend": self.name, "vllm_version": getattr(vllm, "__version__", None),
                "engine": {k: v for k, v in self.engine.items() if k != "model"}, "sampling": self.sampling,
                "sampling_params": vllm_sampling_kwargs(self.sampling) if self.sampling else None}

    def _generate(self, messages: list[list[dict]], settings: dict) -> list[list[str]]:
        from vllm import SamplingParams

        prefill = messages[0][-1].get("role") == "assistant"  # continue an assistant prefill (all or none)
        if any((m[-1].get("role") == "assistant") != prefill for m in messages):
            raise ValueError("either every prompt ends with an assistant prefill or none does")
        outputs = self.llm.chat(messages, SamplingParams(**vllm_sampling_kwargs(settings)), use_tqdm=False,
                                add_generation_prompt=not prefill, continue_final_message=prefill)
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
