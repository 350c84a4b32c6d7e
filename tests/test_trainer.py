"""FRPOTrainer on a tiny local Llama: real optimisation steps, exact groups, configuration errors."""

from __future__ import annotations

import math

import pytest
import torch
import trl
from transformers import TrainerCallback

from frpo.objective import OBJECTIVES
from frpo.toy import toy_dataset, toy_reward
from frpo.trainer import FRPOTrainer, shuffle_whole_groups

from conftest import G, make_config, make_trainer


def test_trl_version_is_the_one_the_trainer_overrides():
    # FRPOTrainer overrides private GRPOTrainer methods; a different TRL may change them silently.
    assert trl.__version__ == "1.16.0"


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["frpo", "grpo"])
def test_two_real_steps_change_parameters_and_log_metrics(tiny_model_dir, tmp_path, objective):
    trainer = make_trainer(tiny_model_dir, make_config(tmp_path, objective=objective))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = [n for n, p in trainer.model.named_parameters() if not torch.equal(p.detach(), before[n])]
    assert len(changed) == len(before), "every parameter should move after two steps"

    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logs) == 2
    for h in logs:
        assert math.isfinite(h["loss"]) and math.isfinite(h["grad_norm"])
        assert h["grad_norm"] > 0
        assert 0.0 <= h["frpo/reward_std_within_group"] <= 0.5  # rewards are in {0, 1}
        assert "kl" in h and "entropy" in h
    if objective == "frpo":
        for h in logs:
            assert h["frpo/lambda"] == pytest.approx(0.2)
            assert 1.0 <= h["frpo/ess"] <= G
            assert 1.0 / G <= h["frpo/ess_fraction"] <= 1.0
            # the entropic risk is at most the mean reward (Jensen) and at least the worst reward
            assert 0.0 <= h["frpo/robust_reward"] <= h["reward"] + 1e-9
    else:
        assert not any(k.startswith("frpo/robust") for k in logs[0])


class _GradCapture(TrainerCallback):
    def __init__(self):
        self.grads = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters()})


def _accumulated_grads(trainer, model, chunks):
    model.zero_grad()
    trainer.current_gradient_accumulation_steps = len(chunks)
    for chunk in chunks:
        trainer._compute_loss(model, chunk).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _cat(chunks):
    return {k: torch.cat([c[k] for c in chunks]) if c0.dim() > 0 else c0 for k, c0 in chunks[0].items()}


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["frpo", "grpo"])
def test_micro_batched_gradient_equals_whole_batch_gradient(tiny_model_dir, tmp_path, objective):
    # Two micro-batches of one group each per generation (steps_per_generation = 2).
    capture = _GradCapture()
    config = make_config(
        tmp_path, objective=objective, per_device_train_batch_size=G, gradient_accumulation_steps=2,
        max_steps=1, max_grad_norm=0.0,
    )
    assert config.steps_per_generation == 2
    trainer = make_trainer(tiny_model_dir, config, callbacks=[capture])
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    chunks = trainer._buffered_inputs
    assert len(chunks) == 2 and len(capture.grads) == 1

    # Each micro-batch holds one whole group; together they hold the whole generation batch.
    for chunk in chunks:
        assert chunk["group_ids"].unique().numel() == 1 and chunk["group_ids"].numel() == G
    assert torch.cat([c["group_ids"] for c in chunks]).unique().numel() == 2

    model = trainer.model
    model.load_state_dict(initial)
    model.train()
    whole = _accumulated_grads(trainer, model, [_cat(chunks)])
    for name, grad in capture.grads[0].items():
        torch.testing.assert_close(grad, whole[name], rtol=1e-5, atol=1e-7, msg=f"gradient of {name}")

    if objective == "frpo":
        # Control: splitting the same rows so that each micro-batch holds half of each group (what TRL's row
        # shuffle does) changes the FRPO gradient, so the equality above is not a tautology.
        batch = _cat(chunks)
        rows = torch.arange(2 * G)
        halves = [rows[(rows % G) < G // 2], rows[(rows % G) >= G // 2]]
        broken = [{k: (v[h] if v.dim() > 0 else v) for k, v in batch.items()} for h in halves]
        split = _accumulated_grads(trainer, model, broken)
        diff = max((split[n] - whole[n]).abs().max().item() for n in whole)
        scale = max(whole[n].abs().max().item() for n in whole)
        assert diff > 1e-3 * scale


def test_shuffle_whole_groups_keeps_groups_together_and_permutes_them():
    group_ids = torch.arange(24) // G  # 6 groups of 4, sampler order
    batch = {"group_ids": group_ids, "x": torch.arange(24.0), "n": torch.tensor(24)}
    seen_orders = set()
    for seed in range(5):
        chunks = shuffle_whole_groups(batch, 3, torch.Generator().manual_seed(seed))
        assert [c["group_ids"].numel() for c in chunks] == [8, 8, 8]
        for c in chunks:
            assert torch.equal((c["x"] // G).long(), c["group_ids"])  # rows moved together with their ids
            assert all(int(n) == G for n in torch.unique(c["group_ids"], return_counts=True)[1])
            assert int(c["n"]) == 24  # 0-d tensors pass through
        seen_orders.add(tuple(torch.cat([c["group_ids"] for c in chunks]).tolist()))
    assert len(seen_orders) > 1


def test_shuffle_whole_groups_refuses_to_cut_a_group():
    batch = {"group_ids": torch.arange(12) // 3}  # groups of 3 cannot fill chunks of 4 rows
    with pytest.raises(RuntimeError, match="split across micro-batches"):
        shuffle_whole_groups(batch, 3, torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"per_device_train_batch_size": 6}, "per_device_train_batch_size"),
        ({"num_generations": 1, "per_device_train_batch_size": 4}, "num_generations"),
        ({"frpo_lambda": 0.0}, "frpo_lambda"),
        ({"frpo_lambda": float("nan")}, "frpo_lambda"),
        ({"lambda_scale": "huge"}, "lambda_scale"),
        ({"objective": "ppo"}, "objective"),
        ({"scale_rewards": "group"}, "scale_rewards"),
        ({"top_entropy_quantile": 0.5}, "top_entropy_quantile"),
        ({"mask_truncated_completions": True}, "mask_truncated_completions"),
        ({"epsilon_high": 0.28}, "epsilon_high"),
        ({"eval_strategy": "steps", "eval_steps": 1, "per_device_eval_batch_size": 6}, "per_device_eval_batch_size"),
    ],
)
def test_impossible_settings_fail_with_the_setting_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_grpo_may_reproduce_the_public_codes_std_scaling(tmp_path):
    # The public GRPO baseline divided advantages by the group std; we allow it only for the GRPO objective.
    assert make_config(tmp_path, objective="grpo", scale_rewards="group").scale_rewards == "group"


def test_defaults_follow_the_paper(tmp_path):
    config = make_config(tmp_path)
    assert config.objective == "frpo" and config.frpo_lambda == 0.2
    assert config.jackknife and config.baseline and config.lambda_scale == "paper"
    assert config.scale_rewards == "none"
    assert not config.use_bias_correction_kl and not config.vllm_importance_sampling_correction
    assert set(OBJECTIVES) == {"frpo", "grpo"}


def test_trainer_requires_an_frpo_config(tiny_model_dir):
    with pytest.raises(TypeError, match="FRPOConfig"):
        FRPOTrainer(model=tiny_model_dir, reward_funcs=toy_reward, args=None, train_dataset=toy_dataset())


@pytest.mark.slow
def test_official_lambda_scale_rescales_only_the_policy_term(tiny_model_dir, tmp_path):
    # λ = 0.5 ≤ 1: the public code drops the λ factor, i.e. multiplies the FRPO term by 1/λ = 2.
    losses = {}
    for scale in ("paper", "official"):
        config = make_config(tmp_path, frpo_lambda=0.5, lambda_scale=scale, max_steps=1, beta=0.0)
        trainer = make_trainer(tiny_model_dir, config)
        trainer.train()
        losses[scale] = [h["policy_loss"] for h in trainer.state.log_history if "policy_loss" in h][0]
    assert losses["official"] == pytest.approx(2.0 * losses["paper"], rel=1e-5)
