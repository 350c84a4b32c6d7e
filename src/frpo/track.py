"""Stage 3, forgetting tracking: how far fine-tuning moves the model, and what it does to safety.

At step 0 and every ``every_steps`` optimizer steps of a downstream fine-tuning run, :class:`ForgettingTracker`
samples one completion per held-out prompt from the current model and records

* the per-token KL to the pre-fine-tuning model, Σ k3 / Σ tokens over the sampled completion tokens
  (k3 = e^d − d − 1, d = log π_ref − log π_θ, an unbiased estimate of KL(π_θ‖π_ref) on samples from π_θ).
  The public code logged the *sum* over tokens per sequence, on greedy completions (spec §2.4, §5.8);
* the safety reward (the safety judge) on held-out harmful prompts;
* the helpfulness reward (the helpfulness judge) on held-out benign prompts.

Rows go to a tidy CSV, one row per measurement. The sampling RNG is forked and seeded per step, so tracking
neither perturbs training nor depends on it.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

from .generation import completion_logps, generate
from .io import atomic_file
from .objective import k3_kl

__all__ = ["FIELDS", "ForgettingTracker", "read_rows"]

FIELDS = [
    "step", "kl_per_token", "kl_safety", "kl_normal", "safety_reward", "helpfulness_reward",
    "n_safety", "n_normal", "train_loss", "seconds",
]


def read_rows(path: str | Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ForgettingTracker(TrainerCallback):
    def __init__(self, *, ref_model, tokenizer, safety_prompts, normal_prompts, safety_judge, helpfulness_judge,
                 csv_path, every_steps: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                 batch_size: int = 16):
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self.safety_prompts, self.normal_prompts = list(safety_prompts), list(normal_prompts)
        self.safety_judge, self.helpfulness_judge = safety_judge, helpfulness_judge
        self.csv_path = Path(csv_path)
        self.every_steps, self.max_new_tokens, self.temperature = every_steps, max_new_tokens, temperature
        self.seed, self.batch_size = seed, batch_size
        self.last_loss: float | None = None

    # -- bookkeeping, resumable --------------------------------------------------------------------------------
    def _measured_steps(self) -> set[int]:
        if not self.csv_path.is_file():
            return set()
        return {int(r["step"]) for r in read_rows(self.csv_path)}

    def truncate_after(self, step: int) -> None:
        """Drop rows measured after ``step`` (on resume from checkpoint-``step`` they are measured again)."""
        if not self.csv_path.is_file():
            return
        rows = [r for r in read_rows(self.csv_path) if int(r["step"]) <= step]
        self._write(rows, mode="w")

    def _write(self, rows: list[dict], mode: str = "a") -> None:
        """Append (or replace with) ``rows``; the file is rewritten whole and renamed, so a kill mid-write
        never leaves a truncated row behind."""
        if mode == "a" and self.csv_path.is_file():
            rows = read_rows(self.csv_path) + rows
        with atomic_file(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)

    # -- the measurement ---------------------------------------------------------------------------------------
    def measure(self, model, step: int) -> dict:
        start = time.perf_counter()
        prompts = self.safety_prompts + self.normal_prompts
        n_safety = len(self.safety_prompts)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed * 1_000_003 + step)
            gen = generate(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, do_sample=True,
                           temperature=self.temperature, batch_size=self.batch_size)
        cur = completion_logps(model, gen, self.batch_size)
        ref = completion_logps(self.ref_model, gen, self.batch_size)
        k3 = k3_kl(cur.double(), ref.double()) * gen.completion_mask.cpu()
        tokens = gen.completion_mask.cpu().double()

        def per_token(rows: slice) -> float:
            return float(k3[rows].sum() / tokens[rows].sum().clamp(min=1))

        safety = self.safety_judge.score(self.safety_prompts, gen.texts[:n_safety])
        helpful = self.helpfulness_judge.score(self.normal_prompts, gen.texts[n_safety:])
        row = {
            "step": step,
            "kl_per_token": per_token(slice(None)),
            "kl_safety": per_token(slice(0, n_safety)),
            "kl_normal": per_token(slice(n_safety, None)),
            "safety_reward": sum(safety) / max(len(safety), 1),
            "helpfulness_reward": sum(helpful) / max(len(helpful), 1),
            "n_safety": n_safety,
            "n_normal": len(self.normal_prompts),
            "train_loss": "" if self.last_loss is None else self.last_loss,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self._write([row])
        print(f"[track] step {step}: kl/token {row['kl_per_token']:.4f}  safety {row['safety_reward']:.3f}  "
              f"helpfulness {row['helpfulness_reward']:.3f}", flush=True)
        return row

    # -- TrainerCallback hooks ---------------------------------------------------------------------------------
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self._measured_steps():
            self.measure(model, state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0 and state.global_step not in self._measured_steps():
            self.measure(model, state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.global_step not in self._measured_steps():
            self.measure(model, state.global_step)
