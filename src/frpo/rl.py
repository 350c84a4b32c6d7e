"""RL training from a plain config dict: the code behind ``frpo train`` and ``frpo demo``.

A run config has three parts::

    model:   {path: DIR}  or  {tiny: {seed: 0, hidden_size: 64, ...}}   (tiny: built locally over the toy vocabulary)
    data:    {name: toy, repeats: 8}
    trainer: {objective: frpo, frpo_lambda: 0.2, ...}                   (any FRPOConfig field)

The run writes ``metrics.jsonl`` (one JSON object per logged step) and ``summary.json`` to ``out_dir``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .trainer import FRPOConfig, FRPOTrainer

__all__ = ["CPU_DEFAULTS", "run_rl"]

#: Trainer settings that make a run work on a CPU-only machine.
CPU_DEFAULTS: dict[str, Any] = {"use_cpu": True, "bf16": False, "report_to": [], "save_strategy": "no"}


def _build_model_dir(model_cfg: dict, out_dir: Path) -> str:
    if "path" in model_cfg:
        return str(model_cfg["path"])
    if "tiny" in model_cfg:
        from .tiny import save_tiny_model
        from .toy import VOCAB

        return str(save_tiny_model(out_dir / "init_model", VOCAB, **(model_cfg["tiny"] or {})))
    raise ValueError(f"model: expected a 'path' or a 'tiny' entry, got keys {sorted(model_cfg)}")


def _build_data(data_cfg: dict):
    from .toy import toy_dataset, toy_reward

    name = data_cfg.get("name")
    if name == "toy":
        return toy_dataset(int(data_cfg.get("repeats", 8))), [toy_reward]
    raise ValueError(f"data.name: unknown data set {name!r} (known: 'toy')")


def run_rl(config: dict, out_dir: str | Path) -> dict:
    """Train with FRPOTrainer as ``config`` says; return the summary (last logged values and final reward)."""
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = _build_model_dir(config.get("model", {}), out_dir)
    dataset, reward_funcs = _build_data(config.get("data", {}))
    trainer_kwargs = {**CPU_DEFAULTS, "output_dir": str(out_dir / "trainer"), **config.get("trainer", {})}
    args = FRPOConfig(**trainer_kwargs)
    trainer = FRPOTrainer(
        model=model_dir,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(model_dir),
    )
    trainer.train()
    steps = [h for h in trainer.state.log_history if "loss" in h]
    with open(out_dir / "metrics.jsonl", "w") as f:
        for h in steps:
            f.write(json.dumps(h) + "\n")
    summary = {
        "objective": args.objective,
        "frpo_lambda": args.frpo_lambda if args.objective == "frpo" else None,
        "steps": len(steps),
        "first_reward": steps[0]["reward"] if steps else None,
        "last_reward": steps[-1]["reward"] if steps else None,
        "last_kl": steps[-1].get("kl") if steps else None,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    trainer.save_model(str(out_dir / "final_model"))
    return summary
