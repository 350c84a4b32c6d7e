"""Generation and scoring of completions with transformers, batched, on any device.

Used by forgetting tracking and by the evaluations. Prompts are chat messages (or plain strings, wrapped as one
user turn) rendered with the model's chat template. Left padding is handled with explicit ``position_ids``
(the public code's KL omitted them, so left-padded rows were scored at shifted positions: spec §5.8).

Sampling is exactly what the caller asks for. transformers 5 fills every field of a ``GenerationConfig`` passed to
``generate`` that is left unset (None) from the model's own ``generation_config`` (``_prepare_generation_config``:
``update(**model.generation_config.to_dict(), defaults_only=True)``), so a shipped ``repetition_penalty=1.05``,
``min_p`` or ``no_repeat_ngram_size`` would leak into tracking and evaluation samples. :func:`generation_config`
builds a complete config and :func:`explicit_generation_config` puts it in the model's place while generating, so
the merge has nothing else to read. TRL's GRPOTrainer passes its own ``GenerationConfig`` the same way and leaves
``min_p`` and every other processor unset; RL generates inside :func:`explicit_generation_config` too (with
vLLM, TRL passes complete ``SamplingParams``, and vLLM takes only the stop tokens from the model's config).

A completion ends at its first stop token, any of :func:`stop_token_ids`: the model's ``generation_config``
``eos_token_id`` (an id or a list) and the tokenizer's EOS, as TRL masks them. Qwen2.5's ``<|endoftext|>`` is
both a stop token and the pad token, so padding after it is never counted as completion.
"""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

__all__ = [
    "Generation", "completion_logps", "completion_mask", "explicit_generation_config", "generate",
    "generation_config", "generation_record", "stop_token_ids", "trainer_generation_config",
    "trainer_generation_record",
]

#: the GenerationConfig fields a result records: what the sampler did, and where completions end
RECORDED_FIELDS = ("do_sample", "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty",
                   "no_repeat_ngram_size", "max_new_tokens", "eos_token_id", "pad_token_id")


def stop_token_ids(model, tokenizer) -> list[int]:
    """Every token id that ends a completion: the tokenizer's EOS first, then the model's ``generation_config``
    ``eos_token_id`` (an id or a list), as TRL's GRPOTrainer collects them."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = [] if ids is None else [ids] if isinstance(ids, int) else list(ids)
    eos = tokenizer.eos_token_id
    return ([eos] if eos is not None and eos not in ids else []) + ids


def generation_config(model, tokenizer, *, do_sample: bool, max_new_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0, top_k: int = 0):
    """A complete ``GenerationConfig``: the given values (``top_k=0``: no top-k), every other logits processor off
    (repetition penalty 1, no min_p, typical_p 1, no n-gram blocking, no suppressed or forced tokens), stopping
    at :func:`stop_token_ids` and padding with the tokenizer's pad token. Nothing comes from the model's config
    but its stop tokens. Greedy decoding leaves temperature, top_p and top_k unset (None): they are not used, and
    transformers warns about a greedy top_k."""
    from transformers import GenerationConfig

    sampling = ({"temperature": float(temperature), "top_p": float(top_p), "top_k": int(top_k)} if do_sample
                else {"temperature": None, "top_p": None, "top_k": None})
    return GenerationConfig(
        do_sample=do_sample, max_new_tokens=int(max_new_tokens), **sampling, min_p=None, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0,
        repetition_penalty=1.0, encoder_repetition_penalty=1.0, no_repeat_ngram_size=0,
        encoder_no_repeat_ngram_size=0, length_penalty=1.0, num_beams=1, num_return_sequences=1, min_length=0,
        min_new_tokens=None, bad_words_ids=None, suppress_tokens=None, begin_suppress_tokens=None,
        forced_bos_token_id=None, forced_eos_token_id=None, sequence_bias=None, guidance_scale=None,
        renormalize_logits=False, remove_invalid_values=False, exponential_decay_length_penalty=None,
        eos_token_id=stop_token_ids(model, tokenizer), pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
    )


def generation_record(config) -> dict:
    """What a result records about its sampling: :data:`RECORDED_FIELDS` of a ``GenerationConfig``."""
    return {k: getattr(config, k, None) for k in RECORDED_FIELDS}


def _generating_model(model):
    """The transformers model whose ``generation_config`` ``generate`` reads (the base model under PEFT)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@contextlib.contextmanager
def explicit_generation_config(model, config):
    """Within the block ``model.generation_config`` is a copy of ``config``: transformers fills the unset fields of
    the config passed to ``generate`` from it, so nothing of the model's shipped settings can leak in. The model's
    own config is restored on exit (and so saved with the model). A None ``config`` changes nothing."""
    if config is None:
        yield None
        return
    target = _generating_model(model)
    saved = target.generation_config
    target.generation_config = copy.deepcopy(config)
    try:
        yield config
    finally:
        target.generation_config = saved


def trainer_generation_config(trainer):
    """The ``GenerationConfig`` a TRL GRPOTrainer samples with on the transformers path, or None with vLLM (TRL
    then builds complete ``SamplingParams``). Use it as ``with explicit_generation_config(trainer.model,
    trainer_generation_config(trainer)): trainer.train()``; a None config leaves the model as it is."""
    return None if trainer.args.use_vllm else trainer.generation_config


def trainer_generation_record(trainer) -> dict:
    """What an RL run records about its sampling: the backend, the sampling values, TRL's extra
    ``generation_kwargs`` and the stop tokens its completions are masked on."""
    args = trainer.args
    record = {"backend": "vllm" if args.use_vllm else "transformers", "do_sample": True,
              "temperature": args.temperature, "top_p": args.top_p, "top_k": args.top_k, "min_p": args.min_p,
              "repetition_penalty": args.repetition_penalty, "max_new_tokens": args.max_completion_length,
              "generation_kwargs": args.generation_kwargs, "eos_token_id": list(trainer.eos_token_ids)}
    if not args.use_vllm:
        record.update({k: v for k, v in generation_record(trainer.generation_config).items() if k not in record})
    return record


def completion_mask(completion_ids: torch.Tensor, stop_ids) -> torch.Tensor:
    """``[B, C]`` mask of the completion tokens up to and including the first stop token of each row (all of a row
    with none). Padding after a stop token is masked even when the pad token is itself a stop token."""
    is_stop = torch.isin(completion_ids, torch.as_tensor(list(stop_ids), device=completion_ids.device))
    C = completion_ids.shape[1]
    none = torch.full_like(is_stop[:, 0], C, dtype=torch.long)
    first = torch.where(is_stop.any(1), is_stop.int().argmax(1), none)
    return (torch.arange(C, device=completion_ids.device)[None, :] <= first[:, None]).long()


@dataclass
class Generation:
    input_ids: torch.Tensor  # [B, P+C] prompt (left padded) + completion (right padded)
    attention_mask: torch.Tensor  # [B, P+C]
    completion_mask: torch.Tensor  # [B, C]: tokens up to and including the first stop token
    texts: list[str]  # decoded completions, without special tokens
    config: dict = field(default_factory=dict)  # generation_record of the config the completions were sampled with

    @property
    def prompt_length(self) -> int:
        return self.input_ids.shape[1] - self.completion_mask.shape[1]


def _render(tokenizer, prompts) -> list[str]:
    """Chat-template each prompt (a string is one user turn). A conversation ending in an assistant message is
    continued from that message (an assistant prefill) instead of opening a new assistant turn."""
    rendered = []
    for p in prompts:
        messages = [{"role": "user", "content": p}] if isinstance(p, str) else p
        if messages[-1].get("role") == "assistant":
            rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, continue_final_message=True))
        else:
            rendered.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return rendered


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts,
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    batch_size: int = 16,
) -> Generation:
    """Complete every prompt once, with exactly these settings (:func:`generation_config`; ``top_k=0``: no top-k).
    Sampling uses the global torch RNG (seed it, or fork it, around the call)."""
    config = generation_config(model, tokenizer, do_sample=do_sample, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, top_k=top_k)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    chunks = []
    try:
        with explicit_generation_config(model, config):
            for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", leave=False):
                enc = tokenizer(
                    _render(tokenizer, prompts[start : start + batch_size]),
                    return_tensors="pt", padding=True, add_special_tokens=False,
                ).to(device)
                out = model.generate(**enc, generation_config=config)
                chunks.append((enc["input_ids"], enc["attention_mask"], out[:, enc["input_ids"].shape[1] :]))
    finally:
        model.train(was_training)
    P = max(c[0].shape[1] for c in chunks)
    C = max(c[2].shape[1] for c in chunks)
    pad = tokenizer.pad_token_id
    ids, attn, comp_mask = [], [], []
    for prompt_ids, prompt_mask, completion in chunks:
        b = prompt_ids.shape[0]
        left = P - prompt_ids.shape[1]
        prompt_ids = torch.cat([prompt_ids.new_full((b, left), pad), prompt_ids], dim=1)
        prompt_mask = torch.cat([prompt_mask.new_zeros((b, left)), prompt_mask], dim=1)
        completion = torch.cat([completion, completion.new_full((b, C - completion.shape[1]), pad)], dim=1)
        cmask = completion_mask(completion, config.eos_token_id)
        ids.append(torch.cat([prompt_ids, completion], dim=1))
        attn.append(torch.cat([prompt_mask, cmask], dim=1))
        comp_mask.append(cmask)
    input_ids, attention_mask, cmask = torch.cat(ids), torch.cat(attn), torch.cat(comp_mask)
    kept = [row[m.bool()].tolist() for row, m in zip(input_ids[:, P:], cmask, strict=True)]
    texts = tokenizer.batch_decode(kept, skip_special_tokens=True)
    return Generation(input_ids, attention_mask, cmask, [t.strip() for t in texts],
                      generation_record(config))


@torch.no_grad()
def completion_logps(model, gen: Generation, batch_size: int = 16) -> torch.Tensor:
    """Per-token log-probabilities ``[B, C]`` of the generated completion tokens under ``model``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    P = gen.prompt_length
    try:
        for start in range(0, gen.input_ids.shape[0], batch_size):
            ids = gen.input_ids[start : start + batch_size].to(device)
            attn = gen.attention_mask[start : start + batch_size].to(device)
            position_ids = (attn.cumsum(1) - 1).clamp(min=0)
            logits = model(input_ids=ids, attention_mask=attn, position_ids=position_ids).logits.float()
            logps = torch.log_softmax(logits[:, P - 1 : -1], dim=-1)
            out.append(logps.gather(-1, ids[:, P:, None]).squeeze(-1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
