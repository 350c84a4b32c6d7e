"""Tiny Llama-architecture models and word-level tokenizers built locally, with no hub access.

Used by the tests, the smoke config and the toy demo. The model is randomly initialised from a seed, so it is
a real ``LlamaForCausalLM`` that trains, generates and saves like any other, only small.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

__all__ = ["CHAT_TEMPLATE", "build_tiny_llama", "build_word_tokenizer", "save_tiny_model"]

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>"]

#: A minimal chat template: one turn after another, "<role>: <content> ", an assistant turn closed by the EOS token
#: (so that a model fine-tuned on conversations learns to stop), then "assistant: " to prompt a reply.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }} "
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)


def build_word_tokenizer(words: Iterable[str]) -> PreTrainedTokenizerFast:
    """A whitespace/punctuation word-level tokenizer over ``words`` (plus special tokens and role names)."""
    vocab: dict[str, int] = {}
    for token in [*SPECIAL_TOKENS, "user", "assistant", "system", ":"]:
        vocab.setdefault(token, len(vocab))
    for word in words:
        for piece in pre_tokenizers.WhitespaceSplit().pre_tokenize_str(word):
            vocab.setdefault(piece[0].lower(), len(vocab))
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()])
    backend.decoder = decoders.WordPiece(prefix="##")  # joins word-level tokens with single spaces
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        padding_side="left",
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(
    vocab_size: int,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
    pad_token_id: int = 0,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
) -> LlamaForCausalLM:
    """A randomly initialised ``LlamaForCausalLM`` with the given size, deterministic in ``seed``."""
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=pad_token_id,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        tie_word_embeddings=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = pad_token_id
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.bos_token_id = bos_token_id
    return model


def save_tiny_model(path: str | Path, words: Iterable[str], dtype: torch.dtype = torch.float32,
                    **model_kwargs) -> Path:
    """Build a word tokenizer over ``words`` and a matching tiny Llama, and save both to ``path`` (weights in
    ``dtype``)."""
    tokenizer = build_word_tokenizer(words)
    model = build_tiny_llama(
        len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        **model_kwargs,
    )
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.to(dtype).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
