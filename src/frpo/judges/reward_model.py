"""``rm_rb2``: the paper's helpfulness reward, ``allenai/Llama-3.1-8B-Instruct-RM-RB2`` revision ``"2"``, bf16,
chat template ``[user prompt, assistant completion]``, reward ``sigmoid(logit)``. As FRPO, a dedicated pad token
is added when the tokenizer has none (Llama-3.1), with right padding. GPU; the model loads on the first
``score()``, at the commit its revision resolves to (:func:`frpo.judges.local.pin_model`), which ``version``
names.
"""

from __future__ import annotations

from typing import Any

from .base import JudgeResponseError, check_pairs, check_scores, register
from .local import LocalModelJudge, default_device

__all__ = ["RM_MODEL", "RM_REVISION", "RMRB2Judge"]

RM_MODEL = "allenai/Llama-3.1-8B-Instruct-RM-RB2"
RM_REVISION = "2"


@register("rm_rb2")
class RMRB2Judge(LocalModelJudge):
    """Helpfulness reward sigmoid(logit) of allenai/Llama-3.1-8B-Instruct-RM-RB2 (revision "2", bf16)."""

    name = "rm_rb2"

    def __init__(
        self,
        model: str = RM_MODEL,
        *,
        revision: str = RM_REVISION,
        device: str | None = None,
        batch_size: int = 8,
        max_length: int | None = None,
        attn_implementation: str | None = None,
    ):
        self.model_id, self.revision, self.device = model, revision, device
        self.batch_size = int(batch_size)
        self.max_length = max_length
        self.attn_implementation = attn_implementation
        self._model = None
        self._tok = None
        self._pin: dict | None = None
        self.loaded_info: dict[str, Any] = {}

    @property
    def version(self) -> str:
        return f"{self.name}:{self.pinned()['id']}:bf16:chat[user,assistant]:sigmoid"

    @staticmethod
    def _prepare(model: Any, tok: Any) -> tuple[Any, Any]:
        # As FRPO: add a dedicated pad token if missing (Llama-3.1 has none; reusing EOS would make the
        # sequence-classification head pick the wrong "last" token), right padding.
        if tok.pad_token is None:
            tok.add_special_tokens({"pad_token": "<|pad|>"})
            model.resize_token_embeddings(len(tok))
        model.config.pad_token_id = tok.pad_token_id
        tok.padding_side = "right"
        return model.eval(), tok

    def _load(self) -> None:
        if self._model is not None:
            return
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        device = self.device or default_device()
        pin = self.pinned()
        kwargs: dict[str, Any] = {"revision": pin["revision"], "dtype": torch.bfloat16}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        model = AutoModelForSequenceClassification.from_pretrained(pin["path"], **kwargs).to(device)
        tok = AutoTokenizer.from_pretrained(pin["path"], revision=pin["revision"])
        self._model, self._tok = self._prepare(model, tok)
        self.loaded_info = {"device": device, "model": pin["id"]}

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        check_pairs(prompts, responses)
        if not prompts:
            return []
        self._load()
        dev = next(self._model.parameters()).device
        texts = [
            self._tok.apply_chat_template(
                [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                tokenize=False, add_generation_prompt=False,
            )
            for p, r in zip(prompts, responses)
        ]
        out: list[float] = []
        for s in range(0, len(texts), self.batch_size):
            enc = self._tok(
                texts[s : s + self.batch_size], padding=True, truncation=True, max_length=self.max_length,
                return_tensors="pt", add_special_tokens=False,
            )
            enc = {k: v.to(dev) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
            with torch.no_grad():
                logits = self._model(**enc).logits.float()
            if logits.dim() != 2 or logits.shape[1] != 1:
                raise JudgeResponseError(
                    f"{self.name}: expected one logit per row, got shape {tuple(logits.shape)}"
                )
            out.extend(torch.sigmoid(logits[:, 0]).tolist())
        return check_scores(out, len(prompts), self.name)
