"""Generation and scoring of completions with transformers, batched, on any device.

Used by forgetting tracking and by the evaluations. Prompts are chat messages (or plain strings, wrapped as one
user turn) rendered with the model's chat template. Left padding is handled with explicit ``position_ids``
(the public code's KL omitted them, so left-padded rows were scored at shifted positions: spec §5.8).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

__all__ = ["Generation", "completion_logps", "generate"]


@dataclass
class Generation:
    input_ids: torch.Tensor  # [B, P+C] prompt (left padded) + completion (right padded)
    attention_mask: torch.Tensor  # [B, P+C]
    completion_mask: torch.Tensor  # [B, C]: tokens up to and including the first EOS
    texts: list[str]  # decoded completions, without special tokens

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
    batch_size: int = 16,
) -> Generation:
    """Complete every prompt once. Sampling uses the global torch RNG (seed it, or fork it, around the call)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    tokenizer.padding_side = "left"
    chunks = []
    try:
        for start in tqdm(range(0, len(prompts), batch_size), desc="generating", unit="batch", leave=False):
            enc = tokenizer(
                _render(tokenizer, prompts[start : start + batch_size]),
                return_tensors="pt", padding=True, add_special_tokens=False,
            ).to(device)
            kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=top_p, top_k=0)
            out = model.generate(**enc, **kwargs)
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
        is_eos = completion == tokenizer.eos_token_id
        first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full((b,), C, device=device))
        cmask = (torch.arange(C, device=device)[None, :] <= first_eos[:, None]).long()
        ids.append(torch.cat([prompt_ids, completion], dim=1))
        attn.append(torch.cat([prompt_mask, cmask], dim=1))
        comp_mask.append(cmask)
    input_ids, attention_mask, completion_mask = torch.cat(ids), torch.cat(attn), torch.cat(comp_mask)
    texts = tokenizer.batch_decode(input_ids[:, P:] * completion_mask + pad * (1 - completion_mask),
                                   skip_special_tokens=True)
    return Generation(input_ids, attention_mask, completion_mask, [t.strip() for t in texts])


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
