"""Numerical guards for training: a NaN or inf loss stops the job at once, with a clear message, before an
optimizer step or a checkpoint can record it, so the newest checkpoint on disk is the last good one."""

from __future__ import annotations

import math

from transformers import TrainerCallback

__all__ = ["FiniteLossCallback", "NonFiniteLossError", "check_finite_loss"]


class NonFiniteLossError(FloatingPointError):
    """Training produced a NaN or infinite loss."""


def check_finite_loss(value: float, step: int, where: str, ckpt_dir: str) -> None:
    if not math.isfinite(value):
        raise NonFiniteLossError(
            f"{where}: non-finite loss ({value}) at step {step}; stopping. The newest checkpoint in {ckpt_dir} is the "
            "last good state (training resumes from it when the job is rerun): lower the learning rate, check the "
            "rewards and the data, or raise λ if it is very small"
        )


class FiniteLossCallback(TrainerCallback):
    """Stops training on a non-finite logged loss (for trainers whose loss we do not compute ourselves).
    Log every step (logging_steps=1) so that no checkpoint is saved after a bad step: the Trainer logs before it
    saves."""

    def __init__(self, where: str):
        self.where = where

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            check_finite_loss(float(logs["loss"]), state.global_step, self.where, args.output_dir)
