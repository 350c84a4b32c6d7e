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

import reference as ref
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


# --------------------------------------------------------------------------------------------------------------
# _compute_loss against the independent reference (tests/reference.py) plus β·k3, on a batch built by hand


def _hand_batch(trainer, seed=0):
    """Inputs as TRL hands them to _compute_loss: two groups of G rows (interleaved, arbitrary ids), left-padded
    prompts, right-padded completions of different lengths, group-centred advantages, and old / reference
    log-probs a random distance from the model's own (so that some ratios exceed 1+ε)."""
    g = torch.Generator().manual_seed(seed)
    vocab = trainer.model.config.vocab_size
    B, P, T = 2 * G, 5, 6
    prompt_ids = torch.randint(3, vocab, (B, P), generator=g)
    prompt_mask = (torch.arange(P)[None, :] >= torch.randint(0, 3, (B, 1), generator=g)).long()
    completion_ids = torch.randint(3, vocab, (B, T), generator=g)
    lengths = torch.tensor([6, 1, 4, 6, 2, 5, 3, 6])
    completion_mask = (torch.arange(T)[None, :] < lengths[:, None]).long()
    group_ids = torch.tensor([7, 2, 7, 2, 2, 7, 7, 2])
    rewards = torch.rand(B, generator=g)
    advantages = rewards.clone()
    for k in group_ids.unique():
        advantages[group_ids == k] -= rewards[group_ids == k].mean()
    with torch.no_grad():
        input_ids = torch.cat([prompt_ids, completion_ids], 1)
        attention_mask = torch.cat([prompt_mask, completion_mask], 1)
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, input_ids, attention_mask, T)
    return {
        "prompt_ids": prompt_ids, "prompt_mask": prompt_mask,
        "completion_ids": completion_ids, "completion_mask": completion_mask,
        "advantages": advantages, "group_ids": group_ids,
        "old_per_token_logps": logps + 0.3 * torch.randn(B, T, generator=g),
        "ref_per_token_logps": logps + 0.5 * torch.randn(B, T, generator=g),
        "num_items_in_batch": completion_mask.sum(),
    }


def _loss_and_logp_grad(trainer, inputs):
    """_compute_loss's value and its gradient with respect to the per-token log-probs the model returned."""
    captured, forward = [], trainer._get_per_token_logps_and_entropies

    def capture(*args, **kwargs):
        logps, entropies, aux = forward(*args, **kwargs)
        logps.retain_grad()
        captured.append(logps)
        return logps, entropies, aux

    trainer._get_per_token_logps_and_entropies = capture
    try:
        loss = trainer._compute_loss(trainer.model, inputs)
    finally:
        del trainer._get_per_token_logps_and_entropies
    loss.backward()
    (logps,) = captured
    return loss.item(), logps.detach().double(), logps.grad.double()


LOSS_CASES = {
    "frpo_jk_base_eq41": dict(frpo_lambda=0.5, jackknife=True, baseline=True, lambda_scale="equation_4_1"),
    "frpo_jk_base_max1": dict(frpo_lambda=0.5, jackknife=True, baseline=True, lambda_scale="max_lambda_1"),
    "frpo_jk_eq41": dict(frpo_lambda=0.5, jackknife=True, baseline=False, lambda_scale="equation_4_1"),
    "frpo_base_max1": dict(frpo_lambda=0.5, jackknife=False, baseline=True, lambda_scale="max_lambda_1"),
    "frpo_plain_eq41": dict(frpo_lambda=0.2, jackknife=False, baseline=False, lambda_scale="equation_4_1"),
    "frpo_lam3_max1_eps01": dict(frpo_lambda=3.0, jackknife=True, baseline=True, lambda_scale="max_lambda_1",
                                 epsilon=0.1),
    "frpo_small_lam_max1": dict(frpo_lambda=0.05, jackknife=True, baseline=True, lambda_scale="max_lambda_1"),
    "grpo": dict(objective="grpo"),
    "grpo_eps01": dict(objective="grpo", epsilon=0.1),
}


@pytest.mark.parametrize("case", list(LOSS_CASES.values()), ids=list(LOSS_CASES))
def test_compute_loss_matches_the_reference_plus_beta_k3(tiny_model_dir, tmp_path, case):
    beta = 0.07
    config = make_config(tmp_path, beta=beta, **case)
    trainer = make_trainer(tiny_model_dir, config)
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 2  # the loss is divided by it (TRL's accumulation convention)
    inputs = _hand_batch(trainer)
    loss, logps, grad = _loss_and_logp_grad(trainer, inputs)

    old, refl = inputs["old_per_token_logps"].double(), inputs["ref_per_token_logps"].double()
    mask, adv, gid = inputs["completion_mask"].double(), inputs["advantages"].double(), inputs["group_ids"]
    on = mask.bool()
    ratio = torch.exp(logps - old)[on]
    eps = config.epsilon
    assert bool((ratio > 1 + eps).any()) and bool((ratio < 1 + eps).any()), "the clip acts on some tokens only"
    if config.objective == "frpo":
        lam = config.frpo_lambda
        policy, policy_grad = ref.frpo_reference(logps, old, adv, mask, gid, lam=lam, epsilon=eps,
                                                 jackknife=config.jackknife, baseline=config.baseline)
        # max_lambda_1: the public code's (λ if λ > 1 else 1) in place of Eq. 4.1's λ, written out independently
        scale = (lam if lam > 1 else 1.0) / lam if config.lambda_scale == "max_lambda_1" else 1.0
    else:
        policy, policy_grad = ref.grpo_reference(logps, old, adv, mask, gid, epsilon=eps)
        scale = 1.0
    kl, kl_grad = ref.k3_reference(logps, refl, mask)
    expected = (scale * policy + beta * kl) / 2
    expected_grad = (scale * torch.tensor(policy_grad, dtype=torch.float64)
                     + beta * torch.tensor(kl_grad, dtype=torch.float64)) / 2
    assert loss == pytest.approx(expected, rel=1e-5, abs=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)
    # the logged policy loss is the (scaled) policy term alone, the logged kl the per-token k3 mean
    assert trainer._metrics["train"]["policy_loss"][-1] == pytest.approx(scale * policy, rel=1e-5, abs=1e-6)
    k3 = torch.exp(refl - logps) - (refl - logps) - 1
    assert trainer._metrics["train"]["kl"][-1] == pytest.approx(((k3 * mask).sum() / mask.sum()).item(), rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Group ids on a real generation batch, on process 0 and (simulated) process 1


def _gather_two(tensor):
    """accelerate's gather as process 1 of 2 sees it, process 0 having drawn the same rows."""
    return torch.cat([tensor.reshape(-1, *tensor.shape[1:])] * 2)


class _SecondProcess:
    """The trainer's accelerator as process 1 of 2 sees it; everything else is the real accelerator's."""

    process_index, num_processes, is_main_process = 1, 2, False

    def __init__(self, real):
        self._real = real

    def gather(self, tensor):
        return _gather_two(tensor)

    def __getattr__(self, name):
        return getattr(self._real, name)


def _check_groups_follow_prompts(batch, out, first_group):
    ids = out["group_ids"]
    n = len(batch)
    assert ids.tolist() == [first_group + i // G for i in range(n)]  # global row k is in group k // G
    prompt_tokens = [tuple(out["prompt_ids"][i][out["prompt_mask"][i].bool()].tolist()) for i in range(n)]
    for k in ids.unique().tolist():
        rows = (ids == k).nonzero().flatten().tolist()
        assert len(rows) == G
        assert len({batch[i]["prompt"] for i in rows}) == 1, f"group {k} mixes prompts"
        assert len({prompt_tokens[i] for i in rows}) == 1, f"group {k} mixes prompt token ids"
        # TRL centred the rewards over the same rows (its rewards.view(-1, G)): advantages sum to 0 per group
        assert abs(out["advantages"][rows].sum().item()) < 1e-5


@pytest.mark.slow
def test_group_ids_follow_the_prompts_on_each_process(tiny_model_dir, tmp_path, monkeypatch):
    trainer = make_trainer(tiny_model_dir, make_config(tmp_path, steps_per_generation=2))
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))  # the sampler's generation batch: 2 steps × 2 prompts × G
    assert len(batch) == 4 * G
    out = trainer._generate_and_score_completions(batch)
    _check_groups_follow_prompts(batch, out, first_group=0)

    # frpo/reward_std_within_group: the mean over groups of the sample std (n−1), computed here the way TRL 0.21
    # logged reward_std (torch.std is unbiased by default)
    rewards = trainer._last_rewards_per_func.sum(dim=1)
    std = rewards.view(-1, G).std(dim=1).mean().item()
    assert std > 0  # some group has spread, so n−1 and n give different values
    assert trainer._metrics["train"]["frpo/reward_std_within_group"][-1] == pytest.approx(std, rel=1e-6)

    real = trainer.accelerator
    trainer.accelerator = _SecondProcess(real)
    monkeypatch.setattr(trl.trainer.grpo_trainer, "gather", _gather_two)  # TRL gathers the rewards with it
    try:
        out1 = trainer._generate_and_score_completions(batch)
    finally:
        trainer.accelerator = real
    # process 1 holds global rows 4G..8G−1: its groups come after process 0's 4 groups
    _check_groups_follow_prompts(batch, out1, first_group=len(batch) // G)
    assert out1["advantages"].numel() == len(batch)  # its own slice of the gathered advantages


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


def _random_layout(g: torch.Generator):
    """A generation batch with random group size, group count, chunk count and arbitrary (unsorted, negative,
    non-contiguous) group ids, rows in sampler order; each row carries a unique tag in a tensor and in a list."""
    size = int(torch.randint(2, 7, (1,), generator=g))
    groups_per_chunk = int(torch.randint(1, 4, (1,), generator=g))
    n_chunks = int(torch.randint(1, 5, (1,), generator=g))
    n_groups = groups_per_chunk * n_chunks
    ids = torch.randperm(1000, generator=g)[:n_groups] - 500
    group_ids = ids.repeat_interleave(size)
    n = group_ids.numel()
    batch = {
        "group_ids": group_ids,
        "tag": torch.arange(n),
        "wide": torch.arange(n)[:, None] * torch.ones(1, 3, dtype=torch.long),  # a [B, T] entry
        "texts": [f"row{i}" for i in range(n)],
        "num_items_in_batch": torch.tensor(n),
        "absent": None,
    }
    return batch, size, n_chunks


def test_shuffle_whole_groups_keeps_every_row_exactly_once_over_random_layouts():
    g = torch.Generator().manual_seed(1234)
    for _ in range(300):
        batch, size, n_chunks = _random_layout(g)
        n = batch["tag"].numel()
        seed = int(torch.randint(1 << 30, (1,), generator=g))
        chunks = shuffle_whole_groups(batch, n_chunks, torch.Generator().manual_seed(seed))
        assert len(chunks) == n_chunks and all(c["tag"].numel() == n // n_chunks for c in chunks)
        tags = torch.cat([c["tag"] for c in chunks])
        assert sorted(tags.tolist()) == list(range(n))  # every row exactly once
        for c in chunks:
            rows = c["tag"]
            assert torch.equal(c["group_ids"], batch["group_ids"][rows])  # ids moved with their rows
            assert torch.equal(c["wide"], batch["wide"][rows])
            assert c["texts"] == [f"row{i}" for i in rows.tolist()]  # lists move with their rows too
            assert c["num_items_in_batch"] is batch["num_items_in_batch"] and c["absent"] is None
            counts = torch.unique(c["group_ids"], return_counts=True)[1]
            assert bool((counts == size).all())  # whole groups only
            # a group's rows are contiguous and keep their sampler order
            starts = torch.nonzero(torch.diff(c["group_ids"])).flatten() + 1
            assert starts.numel() == counts.numel() - 1 and bool((starts % size == 0).all())
            assert bool((torch.diff(rows.view(-1, size), dim=1) == 1).all())


def test_shuffle_whole_groups_moves_list_entries_with_their_rows():
    group_ids = torch.arange(16) // G
    batch = {"group_ids": group_ids, "prompts": [f"p{int(k)}" for k in group_ids]}
    orders = set()
    for seed in range(6):
        chunks = shuffle_whole_groups(batch, 2, torch.Generator().manual_seed(seed))
        for c in chunks:
            assert c["prompts"] == [f"p{int(k)}" for k in c["group_ids"]]
        orders.add(tuple(p for c in chunks for p in c["prompts"]))
    assert len(orders) > 1  # the lists were permuted, not just split


@pytest.mark.parametrize("entry", [torch.arange(5), [0, 1, 2]], ids=["tensor", "list"])
def test_shuffle_whole_groups_refuses_an_entry_that_is_not_per_row(entry):
    batch = {"group_ids": torch.arange(8) // G, "odd": entry}
    with pytest.raises(ValueError, match=r"entry 'odd' has (5|3) rows, not one per completion \(8\)"):
        shuffle_whole_groups(batch, 2, torch.Generator().manual_seed(0))


def test_shuffle_whole_groups_refuses_to_cut_a_group():
    batch = {"group_ids": torch.arange(12) // 3}  # groups of 3 cannot fill chunks of 4 rows
    with pytest.raises(RuntimeError, match="split across micro-batches"):
        shuffle_whole_groups(batch, 3, torch.Generator().manual_seed(0))


# Every setting that FRPOConfig rejects (validate_frpo and _validate_groups), each with the message that names it.
_UNSUPPORTED = "is not supported by FRPOTrainer"
REJECTED_SETTINGS = {
    "batch_not_whole_groups": (
        {"per_device_train_batch_size": 6},
        r"per_device_train_batch_size \(6\) must be a multiple of num_generations \(4\)"),
    "one_generation": (
        {"num_generations": 1, "per_device_train_batch_size": 4}, r"num_generations \(1\) must be >= 2"),
    "eval_batch_not_whole_groups": (
        {"eval_strategy": "steps", "eval_steps": 1, "per_device_eval_batch_size": 6},
        r"per_device_eval_batch_size \(6\) must be a multiple of num_generations_eval"),
    "do_eval_batch_not_whole_groups": (
        {"do_eval": True, "num_generations_eval": 3, "per_device_eval_batch_size": 8},
        r"per_device_eval_batch_size \(8\) must be a multiple of num_generations_eval \(3\)"),
    "objective": ({"objective": "ppo"}, r"objective must be one of \['frpo', 'grpo'\], got 'ppo'"),
    "lambda_zero": ({"frpo_lambda": 0.0}, "frpo_lambda must be a finite number > 0, got 0.0"),
    "lambda_negative": ({"frpo_lambda": -1.0}, "frpo_lambda must be a finite number > 0"),
    "lambda_nan": ({"frpo_lambda": float("nan")}, "frpo_lambda must be a finite number > 0, got nan"),
    "lambda_inf": ({"frpo_lambda": float("inf")}, "frpo_lambda must be a finite number > 0, got inf"),
    "lambda_string": ({"frpo_lambda": "0.2"}, "frpo_lambda must be a finite number > 0, got '0.2'"),
    "lambda_scale": ({"lambda_scale": "huge"}, "lambda_scale must be one of 'equation_4_1'.*got 'huge'"),
    "lambda_scale_old_paper": ({"lambda_scale": "paper"}, "lambda_scale 'paper' was renamed to 'equation_4_1'"),
    "lambda_scale_old_official": (
        {"lambda_scale": "official"}, "lambda_scale 'official' was renamed to 'max_lambda_1'"),
    "scale_rewards_group": ({"scale_rewards": "group"}, "scale_rewards='group': FRPO needs centred, unscaled"),
    "scale_rewards_batch": ({"scale_rewards": "batch"}, "scale_rewards='batch': FRPO needs centred, unscaled"),
    "epsilon_high": ({"epsilon_high": 0.28}, "epsilon_high=0.28 != epsilon=0.2: FRPOTrainer uses one clip range"),
    "multi_objective_aggregation": (
        {"multi_objective_aggregation": "normalize_then_sum"},
        f"multi_objective_aggregation='normalize_then_sum' {_UNSUPPORTED}"),
    "importance_sampling_level": (
        {"importance_sampling_level": "sequence"}, f"importance_sampling_level='sequence' {_UNSUPPORTED}"),
    "top_entropy_quantile": ({"top_entropy_quantile": 0.5}, f"top_entropy_quantile=0.5 {_UNSUPPORTED}"),
    "off_policy_mask_threshold": (
        {"off_policy_mask_threshold": 0.5}, f"off_policy_mask_threshold=0.5 {_UNSUPPORTED}"),
    "delta": ({"delta": 2.0}, f"delta=2.0 {_UNSUPPORTED}"),
    "entropy_coef": ({"entropy_coef": 0.01}, f"entropy_coef=0.01 {_UNSUPPORTED}"),
    "use_adaptive_entropy": ({"use_adaptive_entropy": True}, f"use_adaptive_entropy=True {_UNSUPPORTED}"),
    "use_liger_kernel": ({"use_liger_kernel": True}, f"use_liger_kernel=True {_UNSUPPORTED}"),
    "mask_truncated_completions": (
        {"mask_truncated_completions": True}, f"mask_truncated_completions=True {_UNSUPPORTED}"),
    "loss_type_dapo": ({"loss_type": "dapo"}, f"loss_type='dapo' {_UNSUPPORTED}; use loss_type='grpo'"),
    "loss_type_bnpo": ({"loss_type": "bnpo"}, f"loss_type='bnpo' {_UNSUPPORTED}"),
    "loss_type_dr_grpo_for_grpo": (
        {"objective": "grpo", "loss_type": "dr_grpo"}, f"loss_type='dr_grpo' {_UNSUPPORTED}"),
    "vllm_importance_sampling_correction": (
        {"use_vllm": True, "vllm_importance_sampling_correction": True},
        f"vllm_importance_sampling_correction=True {_UNSUPPORTED}"),
}


@pytest.mark.parametrize(("overrides", "message"), list(REJECTED_SETTINGS.values()), ids=list(REJECTED_SETTINGS))
def test_impossible_settings_fail_with_the_setting_named(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_config(tmp_path, **overrides)


def test_grpo_may_reproduce_the_public_codes_std_scaling(tmp_path):
    # The public GRPO baseline divided advantages by the group std; we allow it only for the GRPO objective.
    assert make_config(tmp_path, objective="grpo", scale_rewards="group").scale_rewards == "group"


@pytest.mark.slow
def test_grpo_with_group_scaling_trains_on_the_group_std_scaled_advantages(tiny_model_dir, tmp_path):
    """scale_rewards='group' (the public GRPO launcher's scale_rewards=True): a real generation batch's advantages
    are each group's centred rewards divided by its reward std (n−1) + 1e-4, as TRL's own GRPO computes them; and
    the step's loss is the GRPO loss on those advantages (test_compute_loss_matches_the_reference_plus_beta_k3
    checks the loss for any advantages)."""
    trainer = make_trainer(tiny_model_dir, make_config(tmp_path, objective="grpo", scale_rewards="group"))
    trainer.model.train()
    batch = next(iter(trainer.get_train_dataloader()))
    out = trainer._generate_and_score_completions(batch)
    rewards = trainer._last_rewards_per_func.sum(dim=1).view(-1, G).double()
    assert bool((rewards.std(dim=1) > 0).any())  # some group has spread: the scaling is not a no-op
    expected = (rewards - rewards.mean(dim=1, keepdim=True)) / (rewards.std(dim=1, keepdim=True) + 1e-4)
    torch.testing.assert_close(out["advantages"].double(), expected.flatten(), rtol=1e-5, atol=1e-6)
    unscaled = make_trainer(tiny_model_dir, make_config(tmp_path / "none", objective="grpo"))
    assert unscaled.scale_rewards == "none" and trainer.scale_rewards == "group"


def test_defaults_follow_the_paper(tmp_path):
    config = make_config(tmp_path)
    assert config.objective == "frpo" and config.frpo_lambda == 0.2
    assert config.jackknife and config.baseline
    assert config.lambda_scale == "equation_4_1"  # the equation as printed; paper configs set max_lambda_1
    assert config.loss_type == "grpo"  # the aggregation both objectives implement (any other value is refused)
    assert config.scale_rewards == "none"
    assert not config.use_bias_correction_kl and not config.vllm_importance_sampling_correction
    assert set(OBJECTIVES) == {"frpo", "grpo"}


def test_trainer_requires_an_frpo_config(tiny_model_dir):
    with pytest.raises(TypeError, match="FRPOConfig"):
        FRPOTrainer(model=tiny_model_dir, reward_funcs=toy_reward, args=None, train_dataset=toy_dataset())


@pytest.mark.slow
def test_max_lambda_1_scale_rescales_only_the_policy_term(tiny_model_dir, tmp_path):
    # λ = 0.5 ≤ 1: the public code drops the λ factor, i.e. multiplies the FRPO term by 1/λ = 2.
    losses = {}
    for scale in ("equation_4_1", "max_lambda_1"):
        config = make_config(tmp_path, frpo_lambda=0.5, lambda_scale=scale, max_steps=1, beta=0.0)
        trainer = make_trainer(tiny_model_dir, config)
        trainer.train()
        losses[scale] = [h["policy_loss"] for h in trainer.state.log_history if "policy_loss" in h][0]
    assert losses["max_lambda_1"] == pytest.approx(2.0 * losses["equation_4_1"], rel=1e-5)


# --------------------------------------------------------------------------------------------------------------
# Kill and resume with steps_per_generation > 1: bit-identical to an uninterrupted run


class _KillAt(TrainerCallback):
    """Stops training after step ``step`` (its checkpoint is written first), as a kill right after it would."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


_VOLATILE = ("time", "runtime", "per_second", "total_flos", "train_loss")


def _step_logs(trainer):
    return [{k: v for k, v in h.items() if not any(x in k for x in _VOLATILE)}
            for h in trainer.state.log_history if "loss" in h]


def _run(model_dir, output_dir, kill_at=None, resume=None):
    config = make_config(output_dir, objective="frpo", steps_per_generation=2, max_steps=4,
                         save_strategy="steps", save_steps=1)
    trainer = make_trainer(model_dir, config, callbacks=[_KillAt(kill_at)] if kill_at else None)
    trainer.train(resume_from_checkpoint=resume)
    return trainer


@pytest.mark.slow
def test_frpo_resumed_after_a_kill_is_bit_identical_with_steps_per_generation_2(tiny_model_dir, tmp_path):
    straight = _run(tiny_model_dir, tmp_path / "straight")
    params = {n: p.detach().clone() for n, p in straight.model.named_parameters()}
    logs = _step_logs(straight)
    assert [h["step"] for h in logs] == [1, 2, 3, 4]

    killed = _run(tiny_model_dir, tmp_path / "killed", kill_at=2)
    assert killed.state.global_step == 2
    ckpt = tmp_path / "killed" / "out"
    for step in (1, 2):  # the group-shuffle state is saved per process in every checkpoint
        assert (ckpt / f"checkpoint-{step}" / "frpo_group_shuffle_0.pth").is_file()

    # Resume at a generation boundary (checkpoint-2: the next step draws a new generation batch and shuffle) and
    # inside a generation batch (checkpoint-1: step 2 trains on the second half of step 1's completions).
    for start in (2, 1):
        resumed = _run(tiny_model_dir, tmp_path / "killed", resume=str(ckpt / f"checkpoint-{start}"))
        assert resumed.state.global_step == 4
        assert _step_logs(resumed) == logs, f"logged metrics after resuming from checkpoint-{start}"
        for n, p in resumed.model.named_parameters():
            assert torch.equal(p.detach(), params[n]), f"{n} after resuming from checkpoint-{start}"

    # Control: restarting the group shuffle from its seed (a checkpoint without its state) changes the run, so the
    # equality above depends on the saved state.
    (ckpt / "checkpoint-2" / "frpo_group_shuffle_0.pth").unlink()
    unrestored = _run(tiny_model_dir, tmp_path / "killed", resume=str(ckpt / "checkpoint-2"))
    assert any(not torch.equal(p.detach(), params[n]) for n, p in unrestored.model.named_parameters())
