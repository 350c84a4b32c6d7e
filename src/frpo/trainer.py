"""FRPO on top of TRL's GRPOTrainer (written against trl==1.16.0, pinned in pyproject.toml).

The trainer changes five things in GRPOTrainer and nothing else:

1. ``_generate_and_score_completions``: attaches an explicit ``group_ids`` tensor to the batch. TRL's
   ``RepeatSampler`` emits each prompt ``num_generations`` times in a row and the gathered batch keeps sampler
   order, so the group of global row k is k // G; this is the same assumption as TRL's own
   ``rewards.view(-1, G)``. Prompt token ids are never hashed (the public code's bug, spec §1.4.5). It also logs
   FRPO's metrics from the gathered rewards.
2. ``_prepare_inputs``: TRL shuffles the generation batch row by row before splitting it into
   ``steps_per_generation`` micro-batches, which scatters a group over micro-batches. FRPO's loss couples the
   rows of a group through log Ẑ_g, so we shuffle whole groups instead: every loss call sees complete groups
   and computes the exact estimator.
3. ``_compute_loss``: the objective is selected by name (``frpo`` or ``grpo``) from
   :data:`frpo.objective.OBJECTIVES`; TRL's β·KL term (k3, token mean per sequence) is added on top.
4. ``_save_rng_state`` / ``_load_rng_state``: checkpoints also hold, per process, the state of the whole-group
   shuffle (and the rest of a generation batch when a checkpoint falls inside one), so a resumed run is
   bit-identical to an uninterrupted one, ``steps_per_generation > 1`` included.
5. Reward functions (judges, reward models) are guarded: with several processes each one scores its own rows and
   then all of them meet in one gather of the rewards, so an exception on one process would leave the others
   waiting in that gather forever. A guarded function that raises scores its rows ``-inf`` instead (a value no
   usable reward has: it would make every advantage of its group NaN); after the gather every process sees the
   same failures, counts them, logs ``frpo/reward_failures`` and, past ``max_reward_failure_fraction``, raises
   :class:`RewardFailureError` at the same step as all the others, with no further collective.

GRPO runs use this same class with ``objective="grpo"`` and centred, unscaled advantages
(``scale_rewards="none"``), as in the paper; the public code std-normalised its GRPO baseline (spec §1.5).
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import (
    is_async_callable,
    split_pixel_values_by_grid,
    split_tensor_dict,
    unsplit_pixel_values_by_grid,
)

from .guards import check_finite_loss
from .objective import (
    OBJECTIVES,
    check_lambda,
    effective_sample_size,
    group_index,
    group_reward_std,
    k3_kl,
    lambda_scale_factor,
    robust_reward,
)

__all__ = ["FRPOConfig", "FRPOTrainer", "RewardFailureError", "shuffle_whole_groups"]

logger = logging.get_logger(__name__)

# Forward kwargs that TRL passes through to the model for multimodal inputs (taken from the batch when present).
_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)


@dataclass
class FRPOConfig(GRPOConfig):
    """Configuration of :class:`FRPOTrainer`: every GRPOConfig field, plus FRPO's own.

    Defaults that differ from GRPOConfig: ``scale_rewards="none"`` (advantages are centred, never divided by the
    group std, paper §4 and App. C), ``use_bias_correction_kl=False`` and ``vllm_importance_sampling_correction=False``
    (the paper's TRL 0.21 had neither), and ``loss_type="grpo"`` (the aggregation both objectives implement; the
    loss itself is ``objective``).
    """

    objective: str = field(
        default="frpo",
        metadata={"help": "Policy objective, by name: 'frpo' (Eqs. 4.1-4.3) or 'grpo' (clipped surrogate, Eq. 2.1)."},
    )
    frpo_lambda: float = field(
        default=0.2,
        metadata={
            "help": "λ > 0, the temperature of the entropic risk −λ log E[e^{−r/λ}]. Smaller is more risk-averse; "
            "λ→∞ recovers GRPO. The paper's main safety setting is 0.2; see frpo.objective.lambda_star to pick "
            "it from the reward std and a KL budget ρ."
        },
    )
    jackknife: bool = field(
        default=True,
        metadata={"help": "Jackknife correction of log Ẑ (Eq. 4.3): reduces the O(1/G) bias to O(1/G²)."},
    )
    baseline: bool = field(
        default=True,
        metadata={"help": "Subtract the Eq. 4.2 baseline. Without it the policy collapses (paper Fig. 16)."},
    )
    lambda_scale: str = field(
        default="equation_4_1",
        metadata={
            "help": "'equation_4_1': the loss is λ·log Ẑ as Eq. 4.1 prints it. 'max_lambda_1': multiply the "
            "FRPO term by max(λ,1)/λ, the public reference code's scaling, which drops the λ factor for λ ≤ 1 "
            "(App. C.1 says it was omitted; the code omits it only for λ ≤ 1). 'max_lambda_1' is the one that "
            "produced every figure of the paper: use it, with the paper's β per run, to reproduce them. The β·KL "
            "term is not rescaled by either, so β must be tuned for the scaling (the paper tuned β for a "
            "per-token KL ≈ 0.1). The former names 'paper' and 'official' are refused."
        },
    )
    scale_rewards: str = field(
        default="none",
        metadata={"help": "Must stay 'none' for FRPO (centred, unscaled advantages). GRPO accepts other values."},
    )
    loss_type: str = field(
        default="grpo",
        metadata={
            "help": "Must stay 'grpo': the loss is chosen by `objective`, and both objectives aggregate as TRL's "
            "'grpo' does (token mean per sequence, then mean over sequences: over the rows of a group, then over "
            "groups). Any other value fails at construction."
        },
    )
    use_bias_correction_kl: bool = field(
        default=False,
        metadata={
            "help": "Multiply the k3 KL by the importance ratio (DeepSeek-V3.2). Off by default: the paper's KL "
            "gradient (Eq. E.1) is the plain k3 one, as in the TRL 0.21 its code ran on."
        },
    )
    vllm_importance_sampling_correction: bool = field(
        default=False,
        metadata={"help": "Must stay False: FRPO's estimator has no vLLM importance-sampling correction."},
    )
    max_reward_failure_fraction: float = field(
        default=0.0,
        metadata={
            "help": "Largest fraction of a generation batch's completions whose reward function raised (a judge's "
            "API call failed, a reward model crashed) that training goes on with; those completions get no "
            "advantage. Above it every process raises RewardFailureError at the same step. 0.0: any failure stops "
            "the run. A reward function returning None for a row (TRL's 'not mine to score') is no failure."
        },
    )

    def __post_init__(self):
        self._validate_groups()  # before GRPOConfig's own checks, whose messages do not mention whole groups
        super().__post_init__()
        self.validate_frpo()

    def _validate_groups(self) -> None:
        G = self.num_generations
        if G is not None and G < 2:
            raise ValueError(f"num_generations ({G}) must be >= 2: FRPO and GRPO compare completions within a group")
        if G is not None and self.per_device_train_batch_size % G != 0:
            raise ValueError(
                f"per_device_train_batch_size ({self.per_device_train_batch_size}) must be a multiple of "
                f"num_generations ({G}): each micro-batch must hold whole groups for the group estimator to be "
                "exact. Raise per_device_train_batch_size or use gradient_accumulation_steps / steps_per_generation"
            )
        if G is not None and (self.do_eval or self.eval_strategy != "no"):
            G_eval = self.num_generations_eval or G
            if self.per_device_eval_batch_size % G_eval != 0:
                raise ValueError(
                    f"per_device_eval_batch_size ({self.per_device_eval_batch_size}) must be a multiple of "
                    f"num_generations_eval ({G_eval}) so that every eval batch holds whole groups"
                )

    def validate_frpo(self) -> None:
        """Reject settings the FRPO trainer cannot honour, naming the setting."""
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {sorted(OBJECTIVES)}, got {self.objective!r}")
        lam = self.frpo_lambda
        check_lambda(lam, "frpo_lambda")
        lambda_scale_factor(lam, self.lambda_scale)  # validates lambda_scale
        if self.objective == "frpo" and self.scale_rewards != "none":
            raise ValueError(
                f"scale_rewards={self.scale_rewards!r}: FRPO needs centred, unscaled advantages (e^{{-A/λ}} with A "
                "on the reward's scale); set scale_rewards='none'"
            )
        if self.epsilon_high not in (None, self.epsilon):
            raise ValueError(
                f"epsilon_high={self.epsilon_high} != epsilon={self.epsilon}: FRPOTrainer uses one clip range ε"
            )
        unsupported = {
            "multi_objective_aggregation": (self.multi_objective_aggregation, "sum_then_normalize"),
            "importance_sampling_level": (self.importance_sampling_level, "token"),
            "top_entropy_quantile": (self.top_entropy_quantile, 1.0),
            "off_policy_mask_threshold": (self.off_policy_mask_threshold, None),
            "delta": (self.delta, None),
            "entropy_coef": (self.entropy_coef, 0.0),
            "use_adaptive_entropy": (self.use_adaptive_entropy, False),
            "use_liger_kernel": (self.use_liger_kernel, False),
            "mask_truncated_completions": (self.mask_truncated_completions, False),
            "loss_type": (self.loss_type, "grpo"),
        }
        if not 0.0 <= self.max_reward_failure_fraction <= 1.0:
            raise ValueError(
                f"max_reward_failure_fraction={self.max_reward_failure_fraction} must lie in [0, 1] (a fraction "
                "of the completions of a generation batch)"
            )
        for name, (value, required) in unsupported.items():
            if value != required:
                raise ValueError(f"{name}={value!r} is not supported by FRPOTrainer; use {name}={required!r}")
        if self.use_vllm and self.vllm_importance_sampling_correction:
            raise ValueError(
                "vllm_importance_sampling_correction=True is not supported by FRPOTrainer; set it to False "
                "(the paper's setting: TRL 0.21 had no such correction)"
            )


def shuffle_whole_groups(batch: dict, n_chunks: int, generator: torch.Generator | None = None) -> list[dict]:
    """Permute the groups of a generation batch (rows of a group stay together) and split it into ``n_chunks``
    micro-batches of whole groups. ``batch["group_ids"]`` names each row's group; every group must fit inside
    one chunk, which holds when the chunk size is a multiple of the group size.

    Every per-row entry moves with its row: tensors whose first dimension is the number of rows and lists of that
    length (TRL keeps e.g. per-row images as lists). 0-d tensors and ``None`` pass through unchanged; any other
    entry is refused, since splitting it into chunks would misalign it with the rows."""
    group_ids = batch["group_ids"]
    n_rows = group_ids.numel()
    if n_rows % n_chunks != 0:
        raise ValueError(f"a generation batch of {n_rows} rows cannot be split into {n_chunks} equal micro-batches")
    uniq, inverse = torch.unique(group_ids, return_inverse=True)
    rank = torch.randperm(uniq.numel(), generator=generator).to(group_ids.device)[inverse]
    order = torch.sort(rank * n_rows + torch.arange(n_rows, device=group_ids.device)).indices
    rows = order.tolist()

    def permute(key, v):
        if v is None or (isinstance(v, torch.Tensor) and v.dim() == 0):
            return v
        if isinstance(v, torch.Tensor) and v.shape[0] == n_rows:
            return v[order]
        if isinstance(v, list) and len(v) == n_rows:
            return [v[i] for i in rows]
        size = v.shape[0] if isinstance(v, torch.Tensor) else len(v) if isinstance(v, list) else type(v).__name__
        raise ValueError(
            f"generation batch entry {key!r} has {size} rows, not one per completion ({n_rows}): it cannot be "
            "shuffled and split into micro-batches with the rows"
        )

    permuted = {k: permute(k, v) for k, v in batch.items()}
    # A group cut in two by a chunk boundary would silently break the estimator: refuse instead.
    ranks = rank[order]
    starts = torch.ones(n_rows + 1, dtype=torch.bool, device=group_ids.device)
    starts[1:n_rows] = ranks[1:] != ranks[:-1]
    if not bool(starts[:: n_rows // n_chunks].all()):
        raise RuntimeError(
            "a prompt group would be split across micro-batches; per_device_train_batch_size must be a multiple "
            "of num_generations and every group must sit on one process"
        )
    return split_tensor_dict(permuted, n_chunks)


class RewardFailureError(RuntimeError):
    """Too many completions of a generation batch could not be scored because a reward function raised. Raised by
    every process at the same step (the decision is taken on the gathered rewards)."""


#: the reward a guarded reward function gives the rows it failed on (:meth:`FRPOTrainer._guard_reward_func`).
#: No usable reward is -inf (the advantages of its group would be NaN): a function that returns it counts as failed.
FAILED_REWARD = -math.inf


class _GuardedRewardModel(nn.Module):
    """A reward model (an ``nn.Module`` reward function, which TRL calls as ``model(**inputs).logits[:, 0]``) whose
    failure scores its rows :data:`FAILED_REWARD` instead of raising."""

    def __init__(self, model: nn.Module, on_failure):
        super().__init__()
        self.model = model
        self._on_failure = on_failure

    def forward(self, **inputs):
        try:
            return self.model(**inputs)
        except Exception as exc:
            self._on_failure(exc)
            n = inputs["input_ids"].shape[0]
            return SimpleNamespace(logits=torch.full((n, 1), FAILED_REWARD, device=inputs["input_ids"].device))


class FRPOTrainer(GRPOTrainer):
    """GRPOTrainer with exact prompt groups and the FRPO (or GRPO) objective of :mod:`frpo.objective`."""

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args")
        if not isinstance(config, FRPOConfig):
            raise TypeError(f"FRPOTrainer needs args=FRPOConfig(...), got {type(config).__name__}")
        super().__init__(*args, **kwargs)
        self._group_shuffle = torch.Generator().manual_seed(self.args.seed)
        self._objective = OBJECTIVES[self.args.objective]
        self._reward_errors: dict[str, Exception] = {}
        # after TRL has named (and, for reward models, prepared) them: the names stay those of the functions
        named = zip(self.reward_funcs, self.reward_func_names, strict=True)
        self.reward_funcs = [self._guard_reward_func(func, name) for func, name in named]

    # -- 5. reward functions that fail on one process -----------------------------------------------------------
    def _guard_reward_func(self, func, name: str):
        """``func`` such that an exception (or a wrong number of rewards) scores its rows :data:`FAILED_REWARD`:
        this process then still reaches TRL's gather of the rewards, where the other processes wait for it."""

        def failed(exc: Exception, n: int) -> list[float]:
            self._on_reward_failure(name, exc)
            return [FAILED_REWARD] * n

        def checked(out, n: int) -> list:
            out = list(out)
            if len(out) != n:
                raise ValueError(f"returned {len(out)} rewards for {n} completions")
            return out

        if isinstance(func, nn.Module):
            return _GuardedRewardModel(func, functools.partial(self._on_reward_failure, name))
        if is_async_callable(func):

            async def guarded_async(*, prompts, **kwargs):
                try:
                    return checked(await func(prompts=prompts, **kwargs), len(prompts))
                except Exception as exc:
                    return failed(exc, len(prompts))

            guarded_async.__name__ = guarded_async.__qualname__ = name
            return guarded_async

        def guarded(*, prompts, **kwargs):
            try:
                return checked(func(prompts=prompts, **kwargs), len(prompts))
            except Exception as exc:
                return failed(exc, len(prompts))

        guarded.__name__ = guarded.__qualname__ = name
        return guarded

    def _on_reward_failure(self, name: str, exc: Exception) -> None:
        self._reward_errors.setdefault(name, exc)
        logger.error(
            f"process {self.accelerator.process_index}: reward function {name!r} raised during step "
            f"{self.state.global_step + 1}; its completions on this process are scored as failed",
            exc_info=exc,
        )

    def _count_reward_failures(self, rewards_per_func: torch.Tensor, n_local: int) -> torch.Tensor:
        """Count the rows a reward function failed on (:data:`FAILED_REWARD`) in the gathered rewards, the same
        on every process; log ``frpo/reward_failures``; raise :class:`RewardFailureError` past the allowed
        fraction, else mark those rows unscorable (NaN for every function: TRL gives them no advantage)."""
        failed = torch.isneginf(rewards_per_func)
        failed_rows = failed.any(dim=1)
        n_failed, n_rows = int(failed_rows.sum()), failed_rows.numel()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["frpo/reward_failures"].append(float(n_failed))
        errors, self._reward_errors = self._reward_errors, {}
        if n_failed == 0:
            return rewards_per_func
        if n_failed > self.args.max_reward_failure_fraction * n_rows:
            raise RewardFailureError(self._reward_failure_message(failed, n_local, errors))
        if self.accelerator.is_main_process:
            logger.warning(f"{n_failed} of {n_rows} completions could not be scored (a reward function raised) and "
                           "get no advantage; max_reward_failure_fraction="
                           f"{self.args.max_reward_failure_fraction}")
        return rewards_per_func.masked_fill(failed_rows.unsqueeze(1), math.nan)

    def _reward_failure_message(self, failed: torch.Tensor, n_local: int, errors: dict) -> str:
        parts = []
        for i, name in enumerate(self.reward_func_names):
            rows = failed[:, i].nonzero().flatten()
            if rows.numel():
                procs = ", ".join(str(p) for p in sorted(set((rows // n_local).tolist())))
                parts.append(f"reward function {name!r} raised on {rows.numel()} of {failed.shape[0]} completions "
                             f"(process {procs})")
        n_failed = int(failed.any(dim=1).sum())
        here = "; ".join(f"{name!r}: {type(e).__name__}: {e}" for name, e in errors.items())
        return (
            f"{'; '.join(parts)} during step {self.state.global_step + 1}: {n_failed} of {failed.shape[0]} "
            "completions could not be scored, more than max_reward_failure_fraction="
            f"{self.args.max_reward_failure_fraction} allows. Every process stops at this step. "
            + (f"On this process (process {self.accelerator.process_index}): {here}. " if here else
               "The failing process logged its exception. ")
            + "Raise max_reward_failure_fraction to train on without those completions."
        )

    # -- 1. explicit groups -------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        self._reward_errors = {}
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        rewards_per_func = self._count_reward_failures(rewards_per_func, len(prompts))
        self._last_rewards_per_func = rewards_per_func  # gathered over processes, in sampler order
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        output = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        G = self.num_generations if mode == "train" else self.num_generations_eval
        n_local = len(inputs)
        start = self.accelerator.process_index * n_local
        device = output["advantages"].device
        output["group_ids"] = torch.arange(start, start + n_local, device=device) // G
        self._log_group_metrics(mode, G)
        return output

    def _log_group_metrics(self, mode: str, G: int) -> None:
        rpf = self._last_rewards_per_func
        rewards = (rpf * self.reward_weights.to(rpf.device).unsqueeze(0)).nansum(dim=1)
        scored = ~torch.isnan(rpf).all(dim=1)
        group_ids = torch.arange(rewards.numel(), device=rewards.device) // G
        if not bool(scored.all()):  # TRL gives unscorable rows zero advantage; leave them out of the stats
            rewards, group_ids = rewards[scored], group_ids[scored]
        if rewards.numel() == 0:
            return
        # Mean over groups of the sample std (n−1), as TRL 0.21 logged `reward_std` and the paper read λ* off it;
        # TRL 1.16's own `reward_std` is a whole-batch std. A group left with one scored row has no spread.
        std = group_reward_std(rewards, group_ids)
        if bool((~torch.isnan(std)).any()):
            self._metrics[mode]["frpo/reward_std_within_group"].append(std.nanmean().item())
        if self.args.objective == "frpo":
            lam = self.args.frpo_lambda
            # The weights e^{-A/λ} and e^{-r/λ} differ by a constant factor per group, so their ESS is the same.
            ess = effective_sample_size(rewards, group_ids, lam)
            sizes = group_index(group_ids).sizes.double()
            self._metrics[mode]["frpo/robust_reward"].append(robust_reward(rewards, group_ids, lam).mean().item())
            self._metrics[mode]["frpo/ess"].append(ess.mean().item())
            self._metrics[mode]["frpo/ess_fraction"].append((ess / sizes).mean().item())
            self._metrics[mode]["frpo/lambda"].append(lam)

    # -- 2. whole-group micro-batches ---------------------------------------------------------------------------
    def _prepare_inputs(self, generation_batch):
        if not self.model.training:
            return super()._prepare_inputs(generation_batch)  # eval: one batch, no shuffle or split
        generate_every = self.args.steps_per_generation * self.num_iterations
        if self._step % generate_every == 0 or self._buffered_inputs is None:
            batch = self._generate_and_score_completions(generation_batch)
            batch = split_pixel_values_by_grid(batch)
            chunks = shuffle_whole_groups(batch, self.args.steps_per_generation, self._group_shuffle)
            self._buffered_inputs = [unsplit_pixel_values_by_grid(chunk) for chunk in chunks]
        return self._buffered_inputs[self._step % self.args.steps_per_generation]

    # -- checkpoints: the group shuffle resumes where it stopped -------------------------------------------------
    def _shuffle_state_file(self, checkpoint: str) -> str:
        return os.path.join(checkpoint, f"frpo_group_shuffle_{self.args.process_index}.pth")

    def _save_rng_state(self, output_dir: str) -> None:
        """Save, next to the Trainer's RNG states and per process, the group-shuffle generator, the micro-step
        counter and, when the checkpoint falls inside a generation batch (``steps_per_generation > 1`` or
        ``num_iterations > 1``), the buffered micro-batches still to be trained on. A resumed run then draws
        the same group orders and trains on the same completions as an uninterrupted one."""
        super()._save_rng_state(output_dir)
        mid_generation = self._step % (self.args.steps_per_generation * self.num_iterations) != 0
        state = {
            "group_shuffle": self._group_shuffle.get_state(),
            "step": self._step,
            "buffered_inputs": self._buffered_inputs if mid_generation else None,
        }
        torch.save(state, self._shuffle_state_file(output_dir))

    def _load_rng_state(self, checkpoint: str | None) -> None:
        super()._load_rng_state(checkpoint)
        if checkpoint is None:
            return
        path = self._shuffle_state_file(checkpoint)
        if not os.path.isfile(path):
            logger.warning(
                f"{path} not found: the group shuffle restarts from its seed, so this resumed run will not be "
                "identical to an uninterrupted one"
            )
            return
        device = self.accelerator.device
        # under several CPU processes accelerate's device is "cpu:<rank>", which torch.load cannot map to
        state = torch.load(path, map_location="cpu" if device.type == "cpu" else device, weights_only=True)
        self._group_shuffle.set_state(state["group_shuffle"].cpu())
        self._step = state["step"]
        self._buffered_inputs = state["buffered_inputs"]

    # -- 3. the objective ---------------------------------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask if "tool_mask" not in inputs else completion_mask * inputs["tool_mask"]
        logps, entropies, aux_loss = self._get_per_token_logps_and_entropies(
            model,
            input_ids,
            attention_mask,
            completion_ids.size(1),
            compute_entropy=True,
            compute_aux_loss=self.aux_loss_enabled,
            **{k: inputs.get(k) for k in _FORWARD_KEYS},
        )
        old_logps = inputs.get("old_per_token_logps")
        old_logps = logps.detach() if old_logps is None else old_logps
        args = self.args
        kwargs = {"epsilon": args.epsilon}
        if args.objective == "frpo":
            kwargs.update(lam=args.frpo_lambda, jackknife=args.jackknife, baseline=args.baseline)
        policy_loss = self._objective(logps, old_logps, inputs["advantages"], mask, inputs["group_ids"], **kwargs)
        if args.objective == "frpo":
            policy_loss = policy_loss * lambda_scale_factor(args.frpo_lambda, args.lambda_scale)
        loss = policy_loss

        mode = "train" if self.model.training else "eval"
        m = mask.to(logps.dtype)
        if self.beta != 0.0:
            per_token_kl = k3_kl(logps, inputs["ref_per_token_logps"])
            if args.use_bias_correction_kl:
                per_token_kl = per_token_kl * torch.exp(logps - old_logps)
            loss = loss + self.beta * ((per_token_kl * m).sum(1) / m.sum(1).clamp(min=1.0)).mean()
            self._metrics[mode]["kl"].append(self._global_token_mean(per_token_kl, m))
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * aux_loss
        self._metrics[mode]["entropy"].append(self._global_token_mean(entropies, m))
        self._metrics[mode]["policy_loss"].append(
            self.accelerator.gather(policy_loss.detach()).nanmean().item()
        )
        clipped = (logps.detach() - old_logps > math.log1p(args.epsilon)).to(logps.dtype)
        self._metrics[mode]["clip_ratio/high_mean"].append(self._global_token_mean(clipped, m))
        if mode == "train":  # TRL turns off HF's loss scaling: average the accumulated micro-batches here
            check_finite_loss(loss.item(), self.state.global_step, f"{args.objective} training", args.output_dir)
            loss = loss / self.current_gradient_accumulation_steps
        return loss

    def _global_token_mean(self, x: torch.Tensor, m: torch.Tensor) -> float:
        totals = self.accelerator.reduce(torch.stack([(x.detach() * m).sum(), m.sum()]), reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()
