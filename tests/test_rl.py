"""The RL stage's settings: prompts per optimiser step over processes and micro-batches, the paper's schedule,
β per run, and λ* from the within-group reward std."""

from __future__ import annotations

import json
import math

import pytest

from frpo.rl import build_rl_config, per_device_batch, select_lambda_star, world_size


@pytest.mark.parametrize(
    ("prompts", "G", "accum", "world", "expected"),
    [(16, 8, 1, 8, 16), (16, 8, 2, 1, 64), (16, 8, 1, 1, 128), (16, 8, 2, 4, 16), (2, 8, 1, 1, 16)],
)
def test_prompts_per_step_is_per_optimiser_step_whatever_the_layout(prompts, G, accum, world, expected):
    per_device = per_device_batch(prompts, G, accum, world)
    assert per_device == expected
    assert per_device % G == 0  # whole groups in every micro-batch
    assert per_device * accum * world // G == prompts  # what one optimiser step sees


def test_a_layout_that_cannot_hold_whole_groups_is_named():
    with pytest.raises(ValueError, match=r"rl\.prompts_per_step \(6\) must be a multiple of .* \(2\) × processes \(2\) = 4"):
        per_device_batch(6, 8, 2, 2)


def _spec(**rl):
    base = {"steps": 3, "prompts_per_step": 4, "num_generations": 4, "max_completion_length": 8,
            "learning_rate": 1e-5, "beta": 0.005, "save_steps": 1}
    return {"run": "frpo_lam0.2", "objective": "frpo", "frpo_lambda": 0.2, "seed": 0, "device": "cpu",
            "rl": {**base, **rl}}


def test_the_process_count_comes_from_the_launcher(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert world_size() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")  # accelerate launch / torchrun
    assert world_size() == 4


def test_the_rl_config_follows_the_spec_and_the_process_count(tmp_path):
    spec = _spec(lr_scheduler_type="cosine", warmup_ratio=0.1, weight_decay=0.1, lambda_scale="max_lambda_1",
                 gradient_accumulation_steps=2)
    args = build_rl_config(spec, tmp_path, processes=2)
    assert args.per_device_train_batch_size == 4  # 4 prompts = 1 prompt × 2 micro-batches × 2 processes
    assert args.lr_scheduler_type == "cosine" and args.warmup_steps == 0.1
    assert args.weight_decay == 0.1 and args.disable_dropout is True
    assert args.lambda_scale == "max_lambda_1" and args.beta == 0.005 and args.max_steps == 3
    assert build_rl_config(spec, tmp_path, processes=1).per_device_train_batch_size == 8


def test_rl_length_in_epochs(tmp_path):
    spec = _spec()
    del spec["rl"]["steps"]
    spec["rl"]["epochs"] = 2
    args = build_rl_config(spec, tmp_path)
    assert args.num_train_epochs == 2 and args.max_steps == -1


def test_lambda_star_uses_the_mean_within_group_std_not_trls_batch_std(tmp_path):
    # TRL 1.16 logs reward_std over the whole batch; the paper's "std ≈ 0.07" is the mean over groups of the
    # within-group sample std (n−1), which FRPOTrainer logs as frpo/reward_std_within_group.
    rows = [{"step": s, "reward_std": 0.5, "frpo/reward_std_within_group": 0.07} for s in range(1, 8)]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = select_lambda_star(path, rho=0.1, last_k=5)
    assert out["reward_std"] == pytest.approx(0.07)
    assert out["lambda_star"] == pytest.approx(0.07 / math.sqrt(0.2))
    assert out["lambda"] == "0.16"
