"""FRPO on top of TRL's GRPOTrainer (written against trl==1.16.0, pinned in pyproject.toml).

The trainer changes four things in GRPOTrainer and nothing else:

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

GRPO runs use this same class with ``objective="grpo"`` and centred, unscaled advantages
(``scale_rewards="none"``), as in the paper; the public code std-normalised its GRPO baseline (spec §1.5).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import torch
from transformers.utils import logging
from trl import GRPOConfig, GRPOTrainer
from trl.trainer.utils import split_pixel_values_by_grid, split_tensor_dict, unsplit_pixel_values_by_grid

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

__all__ = ["FRPOConfig", "FRPOTrainer", "shuffle_whole_groups"]

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


class FRPOTrainer(GRPOTrainer):
    """GRPOTrainer with exact prompt groups and the FRPO (or GRPO) objective of :mod:`frpo.objective`."""

    def __init__(self, *args, **kwargs):
        config = kwargs.get("args")
        if not isinstance(config, FRPOConfig):
            raise TypeError(f"FRPOTrainer needs args=FRPOConfig(...), got {type(config).__name__}")
        super().__init__(*args, **kwargs)
        self._group_shuffle = torch.Generator().manual_seed(self.args.seed)
        self._objective = OBJECTIVES[self.args.objective]

    # -- 1. explicit groups -------------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
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
        state = torch.load(path, map_location=self.accelerator.device, weights_only=True)
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
