"""The FRPO objective and its GRPO counterpart, as pure torch functions.

Nothing here knows about TRL, Snakemake or files: every function maps tensors to tensors, so it can be
tested against the paper's equations on its own. References are to arXiv 2602.08813v2 (FRPO).

Shapes used throughout
----------------------
``B``  number of sampled completions (rows) in the batch,
``T``  padded completion length,
``logps``, ``old_logps``  ``[B, T]`` per-token log-probabilities of the sampled tokens under π_θ and π_old,
``mask``  ``[B, T]`` 1 for completion tokens, 0 for padding (bool or float),
``advantages``  ``[B]`` group-centred rewards A_i = r_i - mean_{j in group} r_j (never divided by a std),
``group_ids``  ``[B]`` integer id of the prompt group of each row. Rows of a group may come in any order and
groups may have different sizes.

Numerics
--------
FRPO's estimator contains ``log mean_i exp(-A_i/λ) ...``. At λ = 0.01 and |A| = 1 the weights reach e^{100},
which overflows float32, and the leave-one-out sums of the jackknife cancel catastrophically when computed by
subtraction. Everything is therefore computed in log space: the token means with ``logsumexp`` over clipped
log-ratios, the group means with ``logsumexp`` over rows, and each leave-one-out term with its own masked
``logsumexp`` (no subtraction anywhere). The per-group maximum is factored out exactly once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

__all__ = [
    "GroupIndex",
    "LAMBDA_SCALES",
    "OBJECTIVES",
    "check_lambda",
    "effective_sample_size",
    "frpo_loss",
    "grpo_loss",
    "group_index",
    "group_reward_std",
    "k3_kl",
    "lambda_scale_factor",
    "lambda_star",
    "optimal_lambda",
    "robust_reward",
]


# --------------------------------------------------------------------------------------------------------------
# Segment bookkeeping: groups as a dense [n_groups, max_group_size] layout, built without Python loops.
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class GroupIndex:
    """Where each row sits in a dense ``[n_groups, max_size]`` layout of its group.

    ``group[i]`` is the dense group number of row ``i`` (0..n_groups-1, in sorted order of the ids),
    ``slot[i]`` its position inside the group, ``sizes[g]`` the number of rows of group ``g``.
    """

    group: torch.Tensor
    slot: torch.Tensor
    sizes: torch.Tensor
    max_size: int

    @property
    def n_groups(self) -> int:
        return int(self.sizes.numel())

    def dense(self, values: torch.Tensor, fill: float) -> torch.Tensor:
        """Scatter per-row ``values`` ``[B]`` into ``[n_groups, max_size]``, padding with ``fill``."""
        out = values.new_full((self.n_groups, self.max_size), fill)
        return out.index_put((self.group, self.slot), values)

    def valid(self) -> torch.Tensor:
        """``[n_groups, max_size]`` bool mask of the slots that hold a row."""
        return torch.arange(self.max_size, device=self.sizes.device) < self.sizes[:, None]


def group_index(group_ids: torch.Tensor) -> GroupIndex:
    """Build the dense group layout from arbitrary (unsorted, non-contiguous) integer group ids."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D [B], got shape {tuple(group_ids.shape)}")
    if group_ids.dtype.is_floating_point or group_ids.dtype == torch.bool:
        raise ValueError(f"group_ids must be an integer tensor, got {group_ids.dtype}")
    _, group = torch.unique(group_ids, return_inverse=True)
    sizes = torch.bincount(group)
    order = torch.sort(group, stable=True).indices
    starts = torch.cumsum(sizes, 0) - sizes
    slot = torch.empty_like(group)
    slot[order] = torch.arange(group.numel(), device=group.device) - starts[group[order]]
    return GroupIndex(group=group, slot=slot, sizes=sizes, max_size=int(sizes.max()))


def _check_inputs(logps, old_logps, advantages, mask, group_ids) -> torch.Tensor:
    if logps.dim() != 2:
        raise ValueError(f"logps must be [B, T], got shape {tuple(logps.shape)}")
    B = logps.shape[0]
    if old_logps.shape != logps.shape:
        raise ValueError(f"old_logps shape {tuple(old_logps.shape)} != logps shape {tuple(logps.shape)}")
    if mask.shape != logps.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} != logps shape {tuple(logps.shape)}")
    if advantages.shape != (B,):
        raise ValueError(f"advantages must be [B]=[{B}], got shape {tuple(advantages.shape)}")
    if group_ids.shape != (B,):
        raise ValueError(f"group_ids must be [B]=[{B}], got shape {tuple(group_ids.shape)}")
    mask = mask.bool()
    empty = ~mask.any(dim=1)
    if bool(empty.any()):
        rows = torch.nonzero(empty).flatten().tolist()[:8]
        raise ValueError(
            f"rows {rows} have no completion tokens (all-zero mask); the per-sequence token mean of Eq. 4.1 is "
            "undefined for them (set mask_truncated_completions=False, or drop the rows)"
        )
    return mask


def _log_token_mean(log_values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log( (1/|y_i|) Σ_t exp(log_values_it) ) over the masked tokens of each row, ``[B]``."""
    masked = log_values.masked_fill(~mask, -math.inf)
    return torch.logsumexp(masked, dim=1) - torch.log(mask.sum(dim=1).to(log_values.dtype))


def _token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.to(values.dtype)
    return (values * m).sum(dim=1) / m.sum(dim=1)


def _group_mean(values: torch.Tensor, idx: GroupIndex) -> torch.Tensor:
    """Mean of per-row ``values`` ``[B]`` within each group, ``[n_groups]``."""
    sums = values.new_zeros(idx.n_groups).index_add(0, idx.group, values)
    return sums / idx.sizes.to(values.dtype)


def _log_mean_and_jackknife(x: torch.Tensor, idx: GroupIndex, jackknife: bool) -> torch.Tensor:
    """Per group: log Ẑ_g = log mean_i e^{x_i}, or its jackknife n·log Ẑ_g − (n−1)/n·Σ_j log Ẑ_{g,−j}.

    ``x`` is ``[B]`` (log s_i). Returns ``[n_groups]``. Groups of size 1 fall back to the plain term.
    All sums are logsumexps; the leave-one-out ones mask row j out instead of subtracting it.
    """
    dtype = x.dtype
    X = idx.dense(x, -math.inf)  # [G_n, M]
    valid = idx.valid()
    n = idx.sizes.to(dtype)
    # Factor the group maximum out once; it cancels exactly (n − (n−1)/n·n = 1), so it carries no gradient.
    shift = X.max(dim=1).values.detach()
    Xs = X - shift[:, None]
    log_z = torch.logsumexp(Xs, dim=1) - torch.log(n)  # log Ẑ_g − shift
    if not jackknife:
        return shift + log_z
    M = idx.max_size
    eye = torch.eye(M, dtype=torch.bool, device=x.device)
    loo_in = Xs[:, None, :].expand(-1, M, -1).masked_fill(eye, -math.inf)  # [G_n, j, k], row j drops k == j
    # A leave-one-out set is non-empty only for real rows j of groups with n ≥ 2. Empty sets would give
    # logsumexp(-inf…) = -inf and a NaN gradient, so feed zeros there and drop them below.
    has_loo = valid & (idx.sizes[:, None] >= 2)
    loo_in = torch.where(has_loo[:, :, None], loo_in, torch.zeros_like(loo_in))
    log_z_loo = torch.logsumexp(loo_in, dim=2) - torch.log((n - 1).clamp(min=1))[:, None]  # [G_n, M]
    loo_sum = torch.where(has_loo, log_z_loo, torch.zeros_like(log_z_loo)).sum(dim=1)
    jk = n * log_z - (n - 1) / n * loo_sum
    return shift + torch.where(idx.sizes >= 2, jk, log_z)


# --------------------------------------------------------------------------------------------------------------
# Objectives
# --------------------------------------------------------------------------------------------------------------
def check_lambda(value, name: str) -> None:
    """Raise ValueError (naming the setting ``name``) unless ``value`` is a finite int or float > 0."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def frpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    lam: float,
    epsilon: float = 0.2,
    jackknife: bool = True,
    baseline: bool = True,
) -> torch.Tensor:
    """FRPO loss to minimise: minus the robust objective of Eqs. 4.1–4.3 (no KL term), on the paper's scale.

    Per row i with r_it = exp(logps_it − old_logps_it):

    * s_i = (1/|y_i|) Σ_t e^{−A_i/λ} · min(r_it, 1+ε)                       (Eq. 4.1; upper clip only)
    * Ẑ_g = mean_{i∈g} s_i,   Ẑ_{g,−j} = mean_{i∈g, i≠j} s_i
    * loss_g = λ·[n_g log Ẑ_g − (n_g−1)/n_g Σ_j log Ẑ_{g,−j}]   with ``jackknife`` (Eq. 4.3, Alg. 1 line 9)
      loss_g = λ·log Ẑ_g                                           without it
    * ``baseline``: loss_g −= λ·mean_{i∈g} (1/|y_i|) Σ_t min(r_it, 1+ε)      (Eq. 4.2)

    Returns mean_g loss_g. A group with a single row uses the plain term (its jackknife is undefined).
    ``lam`` is λ > 0; ``epsilon`` the PPO clip ε (only the upper bound 1+ε acts, since e^{−A/λ} > 0).
    """
    check_lambda(lam, "lam (λ)")
    mask = _check_inputs(logps, old_logps, advantages, mask, group_ids)
    idx = group_index(group_ids)
    log_clip = math.log1p(epsilon)
    log_ratio = torch.clamp(logps - old_logps, max=log_clip)  # log min(r, 1+ε)
    log_s = -advantages.to(logps.dtype) / lam + _log_token_mean(log_ratio, mask)
    per_group = lam * _log_mean_and_jackknife(log_s, idx, jackknife)
    if baseline:
        per_group = per_group - lam * _group_mean(_token_mean(torch.exp(log_ratio), mask), idx)
    return per_group.mean()


def grpo_loss(
    logps: torch.Tensor,
    old_logps: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    group_ids: torch.Tensor,
    *,
    epsilon: float = 0.2,
) -> torch.Tensor:
    """Clipped GRPO surrogate to minimise (paper Eq. 2.1 without KL), averaged like :func:`frpo_loss`.

    Per token −min(r·A, clip(r, 1−ε, 1+ε)·A) on centred, unscaled advantages; token mean per sequence, mean
    over the rows of a group, mean over groups.
    """
    mask = _check_inputs(logps, old_logps, advantages, mask, group_ids)
    idx = group_index(group_ids)
    ratio = torch.exp(logps - old_logps)
    adv = advantages.to(logps.dtype)[:, None]
    per_token = -torch.minimum(ratio * adv, torch.clamp(ratio, 1 - epsilon, 1 + epsilon) * adv)
    return _group_mean(_token_mean(per_token, mask), idx).mean()


#: Objectives by name, as selected by ``FRPOConfig.objective``.
OBJECTIVES: dict[str, Callable[..., torch.Tensor]] = {"frpo": frpo_loss, "grpo": grpo_loss}


#: Names of the two scalings of the FRPO term (``FRPOConfig.lambda_scale``), each with what it means.
LAMBDA_SCALES: dict[str, str] = {
    "equation_4_1": "the loss is λ·log Ẑ as Eq. 4.1 prints it (factor 1)",
    "max_lambda_1": "the FRPO term is multiplied by max(λ,1)/λ, the public code's scaling, which produced every "
    "figure of the paper (App. C.1 says the λ factor was omitted; the code omits it only for λ ≤ 1)",
}
# Former names, refused with a pointer to the new ones ("paper" misled: the paper's figures used the other one).
_OLD_LAMBDA_SCALES = {"paper": "equation_4_1", "official": "max_lambda_1"}


def lambda_scale_factor(lam: float, mode: str) -> float:
    """Factor applied to the FRPO term for ``lambda_scale=mode``. ``"equation_4_1"``: 1 (keep λ·log Ẑ as in
    Eq. 4.1). ``"max_lambda_1"``: max(λ,1)/λ, the public reference code's rule, which drops the λ factor for
    λ ≤ 1 (paper App. C.1, "we omitted the λ factor"); it is the scaling behind the paper's figures, and β must
    be tuned with it, as the paper did. The β·KL term is never rescaled."""
    if mode == "equation_4_1":
        return 1.0
    if mode == "max_lambda_1":
        return max(lam, 1.0) / lam
    choices = "; ".join(f"{name!r}: {meaning}" for name, meaning in LAMBDA_SCALES.items())
    if mode in _OLD_LAMBDA_SCALES:
        raise ValueError(
            f"lambda_scale {mode!r} was renamed to {_OLD_LAMBDA_SCALES[mode]!r}; use one of {choices}"
        )
    raise ValueError(f"lambda_scale must be one of {choices}; got {mode!r}")


def k3_kl(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ‖π_ref) on tokens sampled from π_θ (paper Eq. 2.2), ``[B, T]``:
    e^{d} − d − 1 with d = log π_ref − log π_θ. Per-token KL of a batch is Σ k3·mask / Σ mask."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


# --------------------------------------------------------------------------------------------------------------
# Group statistics logged during training (rewards are the raw, un-centred rewards).
# --------------------------------------------------------------------------------------------------------------
def robust_reward(rewards: torch.Tensor, group_ids: torch.Tensor, lam: float) -> torch.Tensor:
    """Plug-in entropic risk −λ log mean_{i∈g} e^{−r_i/λ} per group (Remark 3.3), ``[n_groups]``."""
    idx = group_index(group_ids)
    X = idx.dense(-rewards.to(torch.float64) / lam, -math.inf)
    return -lam * (torch.logsumexp(X, dim=1) - torch.log(idx.sizes.to(torch.float64)))


def effective_sample_size(advantages: torch.Tensor, group_ids: torch.Tensor, lam: float) -> torch.Tensor:
    """Kish effective sample size (Σw)²/Σw² of the weights w_i = e^{−A_i/λ} in each group, ``[n_groups]``.
    It is n_g for equal weights (λ→∞) and tends to 1 when one sample dominates (small λ)."""
    idx = group_index(group_ids)
    X = idx.dense(-advantages.to(torch.float64) / lam, -math.inf)
    return torch.exp(2 * torch.logsumexp(X, dim=1) - torch.logsumexp(2 * X, dim=1))


def group_reward_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Sample standard deviation (n−1 in the denominator) of the rewards within each group, ``[n_groups]``;
    NaN for a group of one row, whose spread is undefined.

    Its mean over groups is ``frpo/reward_std_within_group``, the std that enters λ* (Remark 3.3): the paper's
    "std ≈ 0.07" is this quantity, as TRL 0.21 logged it (``rewards.view(-1, G).std(dim=1).mean()``). TRL 1.16's
    own ``reward_std`` metric is a whole-batch std, which is not this."""
    idx = group_index(group_ids)
    r = rewards.to(torch.float64)
    mean = _group_mean(r, idx)
    sq = r.new_zeros(idx.n_groups).index_add(0, idx.group, (r - mean[idx.group]) ** 2)
    n = idx.sizes.to(torch.float64)
    return torch.where(idx.sizes >= 2, torch.sqrt(sq / (n - 1).clamp(min=1)), torch.full_like(sq, math.nan))


# --------------------------------------------------------------------------------------------------------------
# Choosing λ (Section 5.1.1, Remark 3.3)
# --------------------------------------------------------------------------------------------------------------
def lambda_star(reward_std: float, rho: float) -> float:
    """Large-λ optimum of the dual (Remark 3.3): λ* = std(r) / sqrt(2ρ)."""
    if rho <= 0:
        raise ValueError(f"rho (KL budget ρ) must be > 0, got {rho}")
    if reward_std < 0:
        raise ValueError(f"reward_std must be >= 0, got {reward_std}")
    return reward_std / math.sqrt(2 * rho)


def _dual_objective(lam: float, neg_rewards: torch.Tensor, log_counts: torch.Tensor, rho: float) -> float:
    """E_x[λ log E_y e^{−r/λ}] + λρ, the negative of the dual of Eq. 3.4. ``neg_rewards`` is a dense
    ``[n_prompts, max_samples]`` matrix of −r padded with −inf; ``log_counts`` the log sample count per prompt."""
    per_prompt = torch.logsumexp(neg_rewards / lam, dim=1) - log_counts
    return lam * per_prompt.mean().item() + lam * rho


def optimal_lambda(
    rewards_by_prompt: Sequence[Sequence[float]] | torch.Tensor,
    rho: float,
    *,
    lam_min: float = 1e-4,
    lam_max: float = 1e4,
    tol: float = 1e-10,
) -> float:
    """λ maximising the dual of Eq. 3.4, −E_x[λ log E_y e^{−r/λ}] − λρ, from sampled rewards per prompt.

    ``rewards_by_prompt`` holds one sequence of sampled rewards per prompt (lengths may differ), or a
    ``[n_prompts, n_samples]`` tensor. The dual is concave in λ, so a golden-section search on log λ over
    [``lam_min``, ``lam_max``] finds its maximum; a result at a bound means the optimum lies beyond it
    (λ → 0 for rewards with no spread, λ → ∞ as ρ → 0, Remark 3.2).
    """
    if rho <= 0:
        raise ValueError(f"rho (KL budget ρ) must be > 0, got {rho}")
    groups = [torch.as_tensor(r, dtype=torch.float64).flatten() for r in rewards_by_prompt]
    if not groups or any(g.numel() == 0 for g in groups):
        raise ValueError("rewards_by_prompt must hold at least one prompt, each with at least one reward")
    if any(not bool(torch.isfinite(g).all()) for g in groups):
        raise ValueError("rewards_by_prompt contains non-finite rewards")
    counts = torch.tensor([g.numel() for g in groups])
    idx = group_index(torch.repeat_interleave(torch.arange(len(groups)), counts))
    neg_rewards = idx.dense(-torch.cat(groups), -math.inf)  # [n_prompts, max_samples], padded with -inf
    log_counts = torch.log(idx.sizes.to(torch.float64))

    def f(log_lam: float) -> float:
        return _dual_objective(math.exp(log_lam), neg_rewards, log_counts, rho)

    return math.exp(golden_section_min(f, math.log(lam_min), math.log(lam_max), tol))


def golden_section_min(f, a: float, b: float, tol: float) -> float:
    """The minimiser of a unimodal ``f`` on [a, b], to within ``tol``, by golden-section search."""
    golden = (math.sqrt(5) - 1) / 2
    c, d = b - golden * (b - a), a + golden * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - golden * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + golden * (b - a)
            fd = f(d)
    return (a + b) / 2
