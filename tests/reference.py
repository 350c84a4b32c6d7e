"""Independent float64 reference for the FRPO objective, written from the paper's equations.

Everything here is plain Python ``float`` arithmetic (IEEE double) in explicit loops over groups, rows and
tokens, so that it shares no code and no vectorisation trick with ``src/frpo/objective.py``. Clarity over
speed: it is meant for batches of a few dozen rows.

Notation (paper Eqs. 4.1-4.3, Alg. 1):
    r_it  = exp(logps_it - old_logps_it)                 token ratio pi_theta / pi_old
    c_it  = min(r_it, 1 + eps)                           upper-clipped ratio (e^{-A/lam} > 0, Eq. 4.1 remark)
    s_i   = e^{-A_i/lam} * (1/|y_i|) sum_t m_it c_it      per-sequence term of Z-hat
    b_i   = (1/|y_i|) sum_t m_it c_it                     per-sequence baseline term (Eq. 4.2)
    Z_g   = mean_{i in g} s_i,  Z_{g,-j} = mean_{i in g, i != j} s_i
    L_g   = lam * [n log Z_g - (n-1)/n sum_j log Z_{g,-j}]   (jackknife, Eq. 4.3; n >= 2)
          = lam * log Z_g                                   (plain, or n == 1)
    L_g  -= lam * mean_{i in g} b_i                         (baseline)
    loss  = mean_g L_g
"""

from __future__ import annotations

import math
from collections import OrderedDict


def _rows(x):
    """Tensor / nested sequence -> list of lists of Python floats."""
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [[float(v) for v in row] for row in x]


def _vec(x):
    if hasattr(x, "tolist"):
        x = x.tolist()
    return [v for v in x]


def groups_in_sorted_order(group_ids) -> "OrderedDict[int, list[int]]":
    """{group id: [row indices]} with ids in ascending order (row order kept inside a group)."""
    ids = [int(g) for g in _vec(group_ids)]
    out: dict[int, list[int]] = {}
    for i, g in enumerate(ids):
        out.setdefault(g, []).append(i)
    return OrderedDict((g, out[g]) for g in sorted(out))


def log_mean_exp(xs: list[float]) -> float:
    """log( (1/n) sum_i e^{x_i} ), max-shifted so it is exact for huge |x|."""
    m = max(xs)
    return m + math.log(sum(math.exp(x - m) for x in xs)) - math.log(len(xs))


def frpo_reference(logps, old_logps, advantages, mask, group_ids, *, lam, epsilon=0.2, jackknife=True,
                   baseline=True):
    """Return (loss value, d loss / d logps as a [B][T] list) from the equations, with an analytic gradient.

    Everything is done in log space where it matters (log s_i = -A_i/lam + log b_i) so that lam = 0.01 with
    |A| ~ 1 (e^{100}) is still exact in double precision.
    """
    lp, old, m = _rows(logps), _rows(old_logps), _rows(mask)
    adv = [float(a) for a in _vec(advantages)]
    B, T = len(lp), len(lp[0])
    cap = 1.0 + epsilon

    # Per row: b_i, its token gradient db_i/dlogp_it, and log s_i.
    b, db, log_s = [], [], []
    for i in range(B):
        n_tok = sum(m[i])
        acc, d_row = 0.0, [0.0] * T
        for t in range(T):
            if m[i][t] == 0.0:
                continue
            r = math.exp(lp[i][t] - old[i][t])
            if r < cap:
                acc += m[i][t] * r
                d_row[t] = m[i][t] * r / n_tok  # d min(r, cap)/d logp = r below the cap
            else:
                acc += m[i][t] * cap  # clipped: constant, zero gradient
        b.append(acc / n_tok)
        db.append(d_row)
        log_s.append(-adv[i] / lam + math.log(acc / n_tok))

    groups = groups_in_sorted_order(group_ids)
    n_groups = len(groups)
    total = 0.0
    grad = [[0.0] * T for _ in range(B)]
    for rows in groups.values():
        n = len(rows)
        ls = [log_s[i] for i in rows]
        log_z = log_mean_exp(ls)
        # dL_g/ds_i is computed as (dL_g/ds_i) * s_i =: coef_i, to stay in log space: ds_i/dlogp = s_i * db_i/b_i.
        if jackknife and n >= 2:
            log_loo = [log_mean_exp([ls[k] for k in range(n) if k != j]) for j in range(n)]
            L = lam * (n * log_z - (n - 1) / n * sum(log_loo))
            # dL/ds_i = lam * [1/Z - (1/n) sum_{j != i} 1/Z_{-j}]
            coef = [lam * (math.exp(ls[k] - log_z)
                           - sum(math.exp(ls[k] - log_loo[j]) for j in range(n) if j != k) / n)
                    for k in range(n)]
        else:
            L = lam * log_z
            coef = [lam * math.exp(ls[k] - log_z) / n for k in range(n)]  # dL/ds_i * s_i = lam s_i/(n Z)
        if baseline:
            L -= lam * sum(b[i] for i in rows) / n
        total += L
        for k, i in enumerate(rows):
            for t in range(T):
                if db[i][t] == 0.0:
                    continue
                g = coef[k] * db[i][t] / b[i]  # d s_i / d logp_it = s_i * db_i / b_i
                if baseline:
                    g -= lam / n * db[i][t]
                grad[i][t] = g / n_groups
    return total / n_groups, grad


def grpo_reference(logps, old_logps, advantages, mask, group_ids, *, epsilon=0.2):
    """Clipped GRPO surrogate (paper Eq. 2.1 without KL) and its gradient: per token -min(r A, clip(r) A),
    token mean per row, mean within a group, mean over groups."""
    lp, old, m = _rows(logps), _rows(old_logps), _rows(mask)
    adv = [float(a) for a in _vec(advantages)]
    B, T = len(lp), len(lp[0])
    groups = groups_in_sorted_order(group_ids)
    n_groups = len(groups)
    total = 0.0
    grad = [[0.0] * T for _ in range(B)]
    for rows in groups.values():
        n = len(rows)
        for i in rows:
            n_tok = sum(m[i])
            row_val = 0.0
            for t in range(T):
                if m[i][t] == 0.0:
                    continue
                r = math.exp(lp[i][t] - old[i][t])
                clipped = min(max(r, 1.0 - epsilon), 1.0 + epsilon)
                unclipped_obj, clipped_obj = r * adv[i], clipped * adv[i]
                row_val += -min(unclipped_obj, clipped_obj)
                if unclipped_obj <= clipped_obj:
                    d = -adv[i] * r  # r*A is the minimum (ties only inside the clip range, or A = 0)
                else:
                    d = 0.0  # the clipped constant is the minimum
                grad[i][t] = m[i][t] * d / n_tok / n / n_groups
            total += row_val / n_tok / n
    return total / n_groups, grad


def robust_reward_reference(rewards, group_ids, lam):
    r = [float(v) for v in _vec(rewards)]
    return [-lam * log_mean_exp([-r[i] / lam for i in rows]) for rows in groups_in_sorted_order(group_ids).values()]


def ess_reference(advantages, group_ids, lam):
    a = [float(v) for v in _vec(advantages)]
    out = []
    for rows in groups_in_sorted_order(group_ids).values():
        top = max(-a[i] / lam for i in rows)
        w = [math.exp(-a[i] / lam - top) for i in rows]  # scale-free: (sum w)^2 / sum w^2
        out.append(sum(w) ** 2 / sum(x * x for x in w))
    return out


def group_std_reference(rewards, group_ids):
    r = [float(v) for v in _vec(rewards)]
    out = []
    for rows in groups_in_sorted_order(group_ids).values():
        mu = sum(r[i] for i in rows) / len(rows)
        out.append(math.sqrt(sum((r[i] - mu) ** 2 for i in rows) / len(rows)))
    return out


def group_sample_std_reference(rewards, group_ids):
    """Sample std (n-1 in the denominator) per group, NaN for a group of one; its mean over groups is the reward
    std that TRL 0.21 logged (``rewards.view(-1, G).std(dim=1).mean()``) and that the paper read lambda* off."""
    r = [float(v) for v in _vec(rewards)]
    out = []
    for rows in groups_in_sorted_order(group_ids).values():
        n = len(rows)
        mu = sum(r[i] for i in rows) / n
        out.append(math.sqrt(sum((r[i] - mu) ** 2 for i in rows) / (n - 1)) if n >= 2 else math.nan)
    return out


def k3_reference(logps, ref_logps, mask):
    """beta-free KL term of TRL's loss and its gradient: per token k3 = e^{d} - d - 1 with d = ref - logp, token
    mean per row, mean over rows. Returns (value, d value / d logps as a [B][T] list)."""
    lp, rf, m = _rows(logps), _rows(ref_logps), _rows(mask)
    B, T = len(lp), len(lp[0])
    total = 0.0
    grad = [[0.0] * T for _ in range(B)]
    for i in range(B):
        n_tok = sum(m[i])
        row = 0.0
        for t in range(T):
            if m[i][t] == 0.0:
                continue
            d = rf[i][t] - lp[i][t]
            row += math.exp(d) - d - 1.0
            grad[i][t] = (1.0 - math.exp(d)) / n_tok / B  # d/dlogp of e^{d} - d - 1, with dd/dlogp = -1
        total += row / n_tok
    return total / B, grad


def dual_reference(lam, rewards_by_prompt, rho):
    """Dual of Eq. 3.4 (to maximise over lam): -(1/P) sum_x lam log mean_y e^{-r/lam} - lam rho.
    Prompts weigh equally, whatever their number of samples."""
    terms = [lam * log_mean_exp([-float(r) / lam for r in rs]) for rs in rewards_by_prompt]
    return -sum(terms) / len(terms) - lam * rho


def argmax_dual_reference(rewards_by_prompt, rho, lo=1e-3, hi=1e2, n_grid=400):
    """Dense log-grid search, then ternary refinement on log lam inside the best bracket (the dual is concave)."""
    logs = [math.log(lo) + (math.log(hi) - math.log(lo)) * k / (n_grid - 1) for k in range(n_grid)]
    vals = [dual_reference(math.exp(x), rewards_by_prompt, rho) for x in logs]
    k = max(range(n_grid), key=vals.__getitem__)
    a, b = logs[max(k - 1, 0)], logs[min(k + 1, n_grid - 1)]
    for _ in range(200):
        m1, m2 = a + (b - a) / 3, b - (b - a) / 3
        if dual_reference(math.exp(m1), rewards_by_prompt, rho) < dual_reference(math.exp(m2), rewards_by_prompt, rho):
            a = m1
        else:
            b = m2
    return math.exp((a + b) / 2), logs, vals
