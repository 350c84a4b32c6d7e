"""The forgetting floor (beyond the paper): a lower bound on the reward of every model within KL ρ of an RL model,
estimated from rewards sampled from the RL model alone, before anyone fine-tunes it.

For a model π, prompts x and a reward r(x, y) in a bounded range, the Donsker–Varadhan variational formula
``KL(π′‖π) ≥ E_{π′}[g] − log E_π[e^g]`` with ``g = −r/λ`` gives, for every λ > 0 and every π′,
``E_{π′}[r | x] ≥ −λ log E_{y∼π}[e^{−r/λ}] − λ·KL(π′(·|x) ‖ π(·|x))``. One λ for all prompts and the mean over x:

    E_x E_{π′}[r]  ≥  F(ρ) = sup_{λ>0} { E_x[−λ log E_{y∼π} e^{−r/λ}] − λρ }    whenever  E_x KL(π′‖π) ≤ ρ,

the value of the dual of Eq. 3.4, whose maximiser is :func:`frpo.objective.optimal_lambda` (λ* of Remark 3.3 in
the large-λ limit, where F(ρ) ≈ E[r] − std(r)·√(2ρ)). The bound is tight: the tilted model π′ ∝ π·e^{−r/λ} at the
maximising λ reaches it. FRPO maximises exactly the bracket at a fixed λ, so it raises this floor; a fine-tuning
run whose (sequence-level KL, reward) point falls below F breaks the bound, i.e. the measurement is wrong.

Estimation from n samples per prompt: the plug-in log of a sample mean is biased low (Jensen), so the plug-in
floor is biased *high* by O(1/n), the unsafe direction. The jackknife of Eq. 4.3 (the same estimator as the
training loss, :func:`frpo.objective._log_mean_and_jackknife`) removes the O(1/n) term of each log-mean-exp; the
supremum over λ of a noisy estimate keeps an upward bias of its own (tests/test_floor.py: 8 samples a prompt,
+0.027 plug-in, +0.012 jackknifed). The band is a bootstrap over prompts (optionally, within each, over its samples).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from .objective import _log_mean_and_jackknife, golden_section_min, group_index

__all__ = ["floor", "floor_band", "floor_curve"]


def _rewards(rewards_by_prompt) -> tuple[torch.Tensor, torch.Tensor]:
    """(rewards [N], prompt ids [N]) in float64 from one sequence of sampled rewards per prompt."""
    groups = [torch.as_tensor(r, dtype=torch.float64).flatten() for r in rewards_by_prompt]
    if not groups or any(g.numel() == 0 for g in groups):
        raise ValueError("rewards_by_prompt must hold at least one prompt, each with at least one sampled reward")
    if any(not bool(torch.isfinite(g).all()) for g in groups):
        raise ValueError("rewards_by_prompt contains non-finite rewards")
    ids = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor([g.numel() for g in groups]))
    return torch.cat(groups), ids


def _dual(rewards: torch.Tensor, idx, lam: float, rho: float, jackknife: bool) -> float:
    """E_x[−λ log E_y e^{−r/λ}] − λρ, with the log-mean-exp of each prompt (``idx``: their GroupIndex) jackknifed
    or not."""
    log_z = _log_mean_and_jackknife(-rewards / lam, idx, jackknife)
    return float(-lam * log_z.mean() - lam * rho)


def floor(rewards_by_prompt: Sequence[Sequence[float]], rho: float, *, jackknife: bool = True,
          lam_min: float = 1e-3, lam_max: float = 1e3, grid: int = 61) -> dict:
    """The forgetting floor F(ρ) from sampled rewards: ``{"rho", "floor", "lambda", "mean_reward"}``.

    The supremum over λ is taken on a log grid of ``grid`` points over [``lam_min``, ``lam_max``] (the jackknifed
    objective need not be concave in λ), refined by golden-section search around the best grid point. ``floor``
    lies between the mean over prompts of their lowest sampled reward (its limit as λ → 0, the whole ball's worst
    case once ρ is large) and the mean reward (its limit as ρ → 0). The jackknife costs O(n²) per prompt for n
    samples: for thousands of samples per prompt the plug-in (``jackknife=False``) has a negligible bias."""
    return floor_curve(rewards_by_prompt, [rho], jackknife=jackknife, lam_min=lam_min, lam_max=lam_max,
                       grid=grid)[0]


def floor_curve(rewards_by_prompt: Sequence[Sequence[float]], rhos: Sequence[float], *, jackknife: bool = True,
                lam_min: float = 1e-3, lam_max: float = 1e3, grid: int = 61, tol: float = 1e-4) -> list[dict]:
    """:func:`floor` at each ρ of ``rhos``. The part of the dual that does not depend on ρ,
    E_x[−λ log E e^{−r/λ}], is computed once on the λ grid and shared by every ρ; the golden-section refinement
    around each ρ's best grid point stops at ``tol`` in log λ (the dual is flat at its maximum: an error ε in log λ
    costs about ε² of the floor's scale)."""
    for rho in rhos:
        if not (math.isfinite(rho) and rho > 0):
            raise ValueError(f"rho (KL budget ρ) must be > 0, got {rho}")
    rewards, ids = _rewards(rewards_by_prompt)
    idx = group_index(ids)  # once: every λ below reuses the prompts' layout
    logs = torch.linspace(math.log(lam_min), math.log(lam_max), grid).tolist()
    lams = [math.exp(t) for t in logs]
    g = [_dual(rewards, idx, lam, 0.0, jackknife) for lam in lams]  # E_x[−λ log E e^{−r/λ}], no ρ term
    n_prompts = int(ids.max()) + 1
    mean = float(rewards.new_zeros(n_prompts).index_add(0, ids, rewards).div(
        torch.bincount(ids).to(torch.float64)).mean())
    # λ → 0 gives each prompt's lowest sampled reward: the floor never lies below their mean (nor above the mean)
    worst = float(torch.full((n_prompts,), math.inf, dtype=torch.float64).scatter_reduce(
        0, ids, rewards, reduce="amin").mean())
    out = []
    for rho in rhos:
        values = [gi - lam * rho for gi, lam in zip(g, lams)]
        best = max(range(grid), key=values.__getitem__)
        lam, value = lams[best], values[best]
        lo, hi = logs[max(best - 1, 0)], logs[min(best + 1, grid - 1)]
        t = golden_section_min(lambda u: -_dual(rewards, idx, math.exp(u), rho, jackknife), lo, hi, tol)
        refined = _dual(rewards, idx, math.exp(t), rho, jackknife)
        if refined >= value:
            lam, value = math.exp(t), refined
        out.append({"rho": rho, "floor": min(max(value, worst), mean), "lambda": lam, "mean_reward": mean})
    return out


def floor_band(rewards_by_prompt: Sequence[Sequence[float]], rhos: Sequence[float], *, n_boot: int = 200,
               level: float = 0.95, seed: int = 0, resample_samples: bool = False, **kwargs) -> list[dict]:
    """:func:`floor_curve` with a bootstrap band: each row gains ``lo`` and ``hi``, the ``level`` percentile
    interval of the floor over ``n_boot`` resamples of the prompts (each computed as the estimate is). With ``resample_samples`` each drawn prompt's samples are resampled too; off by default, since a
    resample often drops a prompt's lowest reward, which the floor tends to at large ρ, and so lifts the whole
    band above the estimate there."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    groups = [list(map(float, r)) for r in rewards_by_prompt]
    rows = floor_curve(groups, rhos, **kwargs)
    gen = torch.Generator().manual_seed(seed)
    draws = []
    for _ in range(n_boot):
        picked = torch.randint(len(groups), (len(groups),), generator=gen).tolist()
        if resample_samples:
            sample = [[groups[p][i] for i in torch.randint(len(groups[p]), (len(groups[p]),),
                                                           generator=gen).tolist()] for p in picked]
        else:
            sample = [groups[p] for p in picked]
        draws.append([r["floor"] for r in floor_curve(sample, rhos, **kwargs)])
    per_rho = torch.tensor(draws, dtype=torch.float64)  # [n_boot, n_rhos]
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    bounds = torch.quantile(per_rho, q, dim=0)
    return [{**row, "lo": float(bounds[0, i]), "hi": float(bounds[1, i]), "n_boot": n_boot, "level": level}
            for i, row in enumerate(rows)]
