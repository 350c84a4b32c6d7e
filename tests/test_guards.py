"""A NaN or inf loss stops training with a clear message and leaves the last good checkpoint as the newest."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from frpo.guards import FiniteLossCallback, NonFiniteLossError
from frpo.training import last_checkpoint

from conftest import make_config, make_trainer


@pytest.mark.slow
def test_injected_nan_stops_rl_and_keeps_the_last_good_checkpoint(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "ckpt"
    config = make_config(tmp_path, output_dir=str(ckpt), max_steps=4, learning_rate=1e-3, beta=0.0,
                         save_strategy="steps", save_steps=1)
    trainer = make_trainer(tiny_model_dir, config)
    real_objective, calls = trainer._objective, []

    def poisoned(*args, **kwargs):  # the third loss computed is NaN, as a blown-up step would be
        calls.append(1)
        loss = real_objective(*args, **kwargs)
        return loss * float("nan") if len(calls) == 3 else loss

    trainer._objective = poisoned
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 2.*last good state"):
        trainer.train()
    assert last_checkpoint(ckpt).endswith("checkpoint-2")
    assert not (ckpt / "checkpoint-3").exists()
    state = torch.load(f"{last_checkpoint(ckpt)}/optimizer.pt", weights_only=False)
    assert state["state"], "the kept checkpoint is a complete one"
    for name, p in trainer.model.named_parameters():  # no NaN update was applied: the guard ran before backward
        assert torch.isfinite(p).all(), name


def test_finite_loss_callback_raises_only_on_non_finite_loss():
    callback = FiniteLossCallback("fine-tuning")
    args, state = SimpleNamespace(output_dir="ckpt"), SimpleNamespace(global_step=7)
    callback.on_log(args, state, None, logs={"loss": 1.5})
    callback.on_log(args, state, None, logs={"learning_rate": 1e-5})
    for bad in (math.nan, math.inf):
        with pytest.raises(NonFiniteLossError, match="fine-tuning: non-finite loss .* at step 7"):
            callback.on_log(args, state, None, logs={"loss": bad})
