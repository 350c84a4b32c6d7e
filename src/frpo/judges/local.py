"""What the local (Hugging Face) judges share: the device they default to, positions from a left-padded mask,
the exact commit they load (:func:`pin_model`, so that a judge's ``version``, the judge-cache key, names what it
loads), wrapping an already loaded model (tests, custom placement), and the one model-directory hash
(:func:`model_fingerprint`, also the evaluations').

Used by the StrongREJECT fine-tuned judge, the HarmBench classifier and RM-RB2. Importing this module imports
neither torch nor transformers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..io import update_hash
from .base import JudgeConfigError

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["default_device", "mask_positions", "model_fingerprint", "pin_adapter_base", "pin_model", "wrap_loaded"]


def model_fingerprint(model_path: str | Path) -> str:
    """SHA-256 over the model directory's weight and config files (names and bytes), first 16 hex digits."""
    digest = hashlib.sha256()
    for f in sorted(Path(model_path).rglob("*")):
        if f.is_file() and f.suffix in {".safetensors", ".json", ".bin", ".model", ".txt"}:
            digest.update(f.name.encode())
            update_hash(digest, f)
    return digest.hexdigest()[:16]


def default_device() -> str:
    """``cuda:<LOCAL_RANK>`` when a GPU is present, else ``cpu``."""
    import torch

    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return "cpu"


def mask_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids of a left-padded batch: counted from each row's first real token (padding gets 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def pin_model(model_id: str, revision: str | None = None) -> dict:
    """What exactly a local judge will load, resolved **before** loading, so that its ``version`` (and so its
    judge-cache key) is complete and the same before and after the load, and the load cannot drift from it:

    * a local directory: ``{"path": dir, "revision": None, "id": "<dir>@dir-sha256:<16 hex>"}``, the hash over its
      weight and config files (:func:`model_fingerprint`);
    * a Hub id: the commit that ``revision`` (default: the main branch) resolves to now, from the local Hugging Face
      cache when offline: ``{"path": id, "revision": <commit>, "id": "<id>@<commit>"}``; load with that revision.

    A PEFT adapter (an ``adapter_config.json``) also gets ``"base"``, the pin of the base model it names (at its
    main branch, or ``base_revision`` given to :func:`pin_adapter_base`). :class:`JudgeConfigError` when a Hub id
    cannot be resolved (offline and not cached, unknown repo)."""
    local = Path(model_id).expanduser()
    if local.is_dir():
        return {"path": str(local), "revision": None, "id": f"{local}@dir-sha256:{model_fingerprint(local)}",
                "config_dir": local}
    try:
        from huggingface_hub import resolve_revision, snapshot_download

        commit = resolve_revision(model_id, revision=revision).resolved
        snapshot = Path(snapshot_download(model_id, revision=commit, allow_patterns=["*.json"]))
    except Exception as e:  # offline and not cached, unknown or gated repo, ...
        raise JudgeConfigError(
            f"judge model {model_id!r} (revision {revision or 'main'!r}): cannot resolve it to a commit, which the "
            f"judge cache key needs ({type(e).__name__}: {str(e)[:300]}); download it first or give a local "
            "directory") from None
    return {"path": model_id, "revision": commit, "id": f"{model_id}@{commit}", "config_dir": snapshot}


def pin_adapter_base(pin: dict, base_revision: str | None = None) -> dict:
    """``pin`` with ``"base"`` (the pin of the base model an adapter names) when it is a PEFT adapter, else with
    ``"base": None``; the ``id`` then names both."""
    cfg = Path(pin["config_dir"]) / "adapter_config.json"
    if not cfg.is_file():
        return {**pin, "base": None}
    base_id = json.loads(cfg.read_text()).get("base_model_name_or_path")
    if not base_id:
        raise JudgeConfigError(f"{cfg}: an adapter config without base_model_name_or_path")
    base = pin_model(base_id, base_revision)
    return {**pin, "base": base, "id": f"{pin['id']}+base={base['id']}"}


class LocalModelJudge:
    """What the judges that load a model of their own share: the model is loaded on first use, and pinned to the
    commit it resolves to (:meth:`pinned`, which is part of the judge's version and cache key); a judge can also
    wrap a model its caller loaded (:meth:`from_loaded`). Subclasses set ``model_id`` and ``revision`` and
    define ``_prepare(model, tokenizer)``; ``_resolve_pin`` says what a pin is (default: :func:`pin_model`)."""

    model_id: str
    revision: str | None

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, **options: Any):
        """Wrap an already loaded model + tokenizer (tests, or a caller that manages devices itself)."""
        return wrap_loaded(cls, model, tokenizer, **options)

    def _resolve_pin(self) -> dict:
        return pin_model(self.model_id, self.revision)

    def pinned(self) -> dict:
        """The resolved commit (or local-directory hash) that the judge loads, resolved once."""
        if getattr(self, "_pin", None) is None:
            self._pin = self._resolve_pin()
        return self._pin


def wrap_loaded(cls: type, model: Any, tokenizer: Any, **options: Any) -> Any:
    """A judge of class ``cls`` around an already loaded model and tokenizer, passed through ``cls._prepare``. Its
    pin (version) names the loaded model's path and commit as the model reports them."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or "in-memory"
    judge = cls(model=name, **options)
    judge._model, judge._tok = judge._prepare(model, tokenizer)
    judge._pin = {"path": name, "revision": None, "base": None,
                  "id": f"{name}@{getattr(model.config, '_commit_hash', None) or 'as-loaded'}"}
    judge.loaded_info = {"device": str(next(model.parameters()).device)}
    return judge

