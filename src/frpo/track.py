"""Stage 3, forgetting tracking: how far fine-tuning moves the model, and what it does to safety.

At step 0 and every ``every_steps`` optimizer steps of a downstream fine-tuning run, :class:`ForgettingTracker`
measures the current model on held-out prompts, in two passes:

* **sampled** completions (temperature ``temperature``, one per prompt), for the per-token KL to the
  pre-fine-tuning model, Σ k3 / Σ tokens over the sampled completion tokens (k3 = e^d − d − 1,
  d = log π_ref − log π_θ, an unbiased estimate of KL(π_θ‖π_ref) only on samples from π_θ). Columns
  ``kl_per_token_sampled`` (all prompts), ``kl_safety_sampled``, ``kl_normal_sampled``. The public code logged the
  *sum* over tokens per sequence, on greedy completions (spec §2.4, §5.8);
* **greedy** completions, for the rewards, as the public tracker scored them: the safety judge on held-out
  harmful prompts (``safety_reward_greedy``) and the helpfulness judge on held-out benign prompts
  (``helpfulness_reward_greedy``), each with a 95% bootstrap interval over the prompts (``*_ci_low``,
  ``*_ci_high``).

``train_loss`` is the training loss logged at that very step (the tracker forces a log at its steps and
measures from the log hook, which runs after the step's loss is known and before its checkpoint is saved).
Rows go to a tidy CSV, one row per measurement. The sampling RNG is forked (CPU and the current CUDA device) and
seeded per step, so tracking neither perturbs training nor depends on it. Under several processes only the main
process measures and writes.
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
from .stats import mean_and_ci

__all__ = ["FIELDS", "ForgettingTracker", "read_rows"]

FIELDS = [
    "step", "kl_per_token_sampled", "kl_safety_sampled", "kl_normal_sampled",
    "safety_reward_greedy", "safety_reward_greedy_ci_low", "safety_reward_greedy_ci_high",
    "helpfulness_reward_greedy", "helpfulness_reward_greedy_ci_low", "helpfulness_reward_greedy_ci_high",
    "n_safety", "n_normal", "train_loss", "seconds",
]


def rng_devices() -> list[int]:
    """The CUDA devices whose RNG a measurement forks: the current one when CUDA is in use, else none."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


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
        self._last_loss: tuple[int, float] | None = None  # (step, loss) of the newest training log
        self._pending: int | None = None  # a step whose measurement waits for that step's log
        self.generation: dict | None = None  # the generation configs of the latest measurement (for the summary)

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
    def measure(self, model, step: int, train_loss: float | None = None) -> dict:
        start = time.perf_counter()
        prompts = self.safety_prompts + self.normal_prompts
        n_safety = len(self.safety_prompts)
        with torch.random.fork_rng(devices=rng_devices()):
            torch.manual_seed(self.seed * 1_000_003 + step)
            sampled = generate(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, do_sample=True,
                               temperature=self.temperature, batch_size=self.batch_size)
        greedy = generate(model, self.tokenizer, prompts, max_new_tokens=self.max_new_tokens, do_sample=False,
                          batch_size=self.batch_size)
        self.generation = {"kl_sampled": sampled.config, "rewards_greedy": greedy.config}
        cur = completion_logps(model, sampled, self.batch_size)
        ref = completion_logps(self.ref_model, sampled, self.batch_size)
        k3 = k3_kl(cur.double(), ref.double()) * sampled.completion_mask.cpu()
        tokens = sampled.completion_mask.cpu().double()

        def per_token(rows: slice) -> float:
            return float(k3[rows].sum() / tokens[rows].sum().clamp(min=1))

        safety = mean_and_ci(self.safety_judge.score(self.safety_prompts, greedy.texts[:n_safety]), seed=step)
        helpful = mean_and_ci(self.helpfulness_judge.score(self.normal_prompts, greedy.texts[n_safety:]), seed=step)
        row = {
            "step": step,
            "kl_per_token_sampled": per_token(slice(None)),
            "kl_safety_sampled": per_token(slice(0, n_safety)),
            "kl_normal_sampled": per_token(slice(n_safety, None)),
            "safety_reward_greedy": safety["mean"],
            "safety_reward_greedy_ci_low": safety["ci_low"],
            "safety_reward_greedy_ci_high": safety["ci_high"],
            "helpfulness_reward_greedy": helpful["mean"],
            "helpfulness_reward_greedy_ci_low": helpful["ci_low"],
            "helpfulness_reward_greedy_ci_high": helpful["ci_high"],
            "n_safety": n_safety,
            "n_normal": len(self.normal_prompts),
            "train_loss": "" if train_loss is None else train_loss,
            "seconds": round(time.perf_counter() - start, 3),
        }
        self._write([row])
        print(f"[track] step {step}: kl/token (sampled) {row['kl_per_token_sampled']:.4f}  "
              f"safety (greedy) {row['safety_reward_greedy']:.3f}  "
              f"helpfulness (greedy) {row['helpfulness_reward_greedy']:.3f}", flush=True)
        return row

    # -- TrainerCallback hooks ---------------------------------------------------------------------------------
    # The Trainer calls on_step_end, then logs (on_log), then saves a checkpoint. A measurement due at step s is
    # therefore made from on_log, with the loss of step s, and before checkpoint s exists: a run resumed from
    # checkpoint s already has row s. Only the main process measures and writes.
    def _due(self, state) -> bool:
        return state.is_world_process_zero and state.global_step not in self._measured_steps()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._pending = None
        if self._due(state):
            self.measure(model, state.global_step)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            # on_log then fires at this step, with this step's loss. Every process logs (the Trainer gathers the
            # loss across processes when it logs), only the main one measures.
            control.should_log = True
            if self._due(state):
                self._pending = state.global_step

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs and "loss" in logs:
            self._last_loss = (state.global_step, float(logs["loss"]))
        if self._pending is not None and self._pending == state.global_step and self._due(state):
            self.measure(model, state.global_step, self._loss_at(state.global_step))
        self._pending = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._due(state):
            self.measure(model, state.global_step, self._loss_at(state.global_step))

    def _loss_at(self, step: int) -> float | None:
        return self._last_loss[1] if self._last_loss is not None and self._last_loss[0] == step else None
