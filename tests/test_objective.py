"""Tests for the pure-torch FRPO objective (src/frpo/objective.py) against the paper's equations.

The reference (tests/reference.py) is an independent float64 transcription of paper Eqs. 4.1-4.3 / Alg. 1
with explicit loops over groups and an analytic gradient; nothing is copied from the implementation.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import reference as ref  # noqa: E402

from frpo.objective import (  # noqa: E402
    LAMBDA_SCALES,
    effective_sample_size,
    frpo_loss,
    grpo_loss,
    group_reward_std,
    k3_kl,
    lambda_scale_factor,
    lambda_star,
    optimal_lambda,
    robust_reward,
)

F64 = torch.float64
EPS = 0.2


# ---------------------------------------------------------------------------------------------------------------
# Batch construction
# ---------------------------------------------------------------------------------------------------------------


def make_batch(sizes, T=12, *, seed=0, off_policy=True, dtype=F64, ids=None, adv_scale=1.0, garbage_padding=True):
    """A batch of groups with the given sizes, rows shuffled so groups interleave.

    Rewards are U(0,1) and advantages are group-centred (unscaled), times ``adv_scale``. ``off_policy`` draws
    old_logps = logps + N(0, 0.25^2) so about a quarter of the ratios exceed 1+eps. Padding (random lengths
    1..T, right-padded) holds garbage log-probs that must be ignored.
    """
    g = torch.Generator().manual_seed(seed)
    B = sum(sizes)
    if ids is None:
        ids = list(range(len(sizes)))
    gid = torch.cat([torch.full((n,), int(k), dtype=torch.long) for k, n in zip(ids, sizes)])
    rewards = torch.rand(B, generator=g, dtype=F64)
    adv = torch.empty(B, dtype=F64)
    for k in ids:
        sel = gid == k
        adv[sel] = rewards[sel] - rewards[sel].mean()
    adv = adv * adv_scale
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    mask = (torch.arange(T)[None, :] < lengths[:, None]).to(F64)
    logps = -(torch.rand(B, T, generator=g, dtype=F64) * 2.0 + 0.05)
    if off_policy:
        old = logps + 0.25 * torch.randn(B, T, generator=g, dtype=F64)
        # keep every ratio away from the clip kink 1+eps, where the derivative is ambiguous
        ratio = torch.exp(logps - old)
        near = (ratio - (1 + EPS)).abs() < 1e-3
        old = torch.where(near, old + 0.01, old)
    else:
        old = logps.clone()
    if garbage_padding:
        pad = mask == 0
        logps = torch.where(pad, torch.empty_like(logps).uniform_(-5, 5, generator=g), logps)
        old = torch.where(pad, torch.empty_like(old).uniform_(-5, 5, generator=g), old)
    perm = torch.randperm(B, generator=g)
    batch = dict(logps=logps[perm], old_logps=old[perm], advantages=adv[perm], mask=mask[perm], group_ids=gid[perm],
                 rewards=rewards[perm])
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.items()}


def loss_and_grad(fn, batch, **kw):
    logps = batch["logps"].detach().clone().requires_grad_(True)
    loss = fn(logps, batch["old_logps"], batch["advantages"], batch["mask"], batch["group_ids"], **kw)
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.detach(), grad


def ref_args(batch):
    return batch["logps"], batch["old_logps"], batch["advantages"], batch["mask"], batch["group_ids"]


MIXED_SIZES = [1, 2, 3, 4, 5, 6, 7, 8, 9]  # a singleton group and sizes 2..9
MIXED_IDS = [1000, 7, -3, 42, 0, 999_999, -17, 5, 12]  # arbitrary, unsorted, negative


# ---------------------------------------------------------------------------------------------------------------
# 1. Value and gradient vs the float64 reference; invariances
# ---------------------------------------------------------------------------------------------------------------


def test_reference_gradient_matches_finite_differences():
    """Guard on the reference itself: its analytic gradient is the derivative of its value."""
    batch = make_batch([1, 3, 4], T=5, seed=1)
    for jackknife in (False, True):
        for baseline in (False, True):
            kw = dict(lam=0.2, epsilon=EPS, jackknife=jackknife, baseline=baseline)
            _, grad = ref.frpo_reference(*ref_args(batch), **kw)
            lp = batch["logps"].clone()
            h = 1e-6
            checked = 0
            for i in range(lp.shape[0]):
                for t in range(lp.shape[1]):
                    up, dn = lp.clone(), lp.clone()
                    up[i, t] += h
                    dn[i, t] -= h
                    fu, _ = ref.frpo_reference(up, *ref_args(batch)[1:], **kw)
                    fd, _ = ref.frpo_reference(dn, *ref_args(batch)[1:], **kw)
                    fd_grad = (fu - fd) / (2 * h)
                    assert fd_grad == pytest.approx(grad[i][t], rel=1e-6, abs=1e-9)
                    checked += grad[i][t] != 0.0
            assert checked > 10


@pytest.mark.parametrize("lam", [0.05, 0.2, 1.0, 5.0])
@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_frpo_value_and_grad_match_reference(lam, jackknife, baseline):
    batch = make_batch(MIXED_SIZES, seed=11, ids=MIXED_IDS)
    ratio = torch.exp(batch["logps"] - batch["old_logps"])[batch["mask"] > 0]
    assert (ratio > 1 + EPS).float().mean() > 0.1  # the upper clip is active on a good share of tokens
    assert (ratio < 1 - EPS).float().mean() > 0.1  # and ratios below 1-eps exist (they must NOT be clipped)

    kw = dict(lam=lam, epsilon=EPS, jackknife=jackknife, baseline=baseline)
    loss, grad = loss_and_grad(frpo_loss, batch, **kw)
    ref_loss, ref_grad = ref.frpo_reference(*ref_args(batch), **kw)
    ref_grad = torch.tensor(ref_grad, dtype=F64)

    assert loss.dtype == F64 and loss.dim() == 0
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-9, atol=1e-12)
    assert torch.all(grad[batch["mask"] == 0] == 0)  # padding gets no gradient
    assert (ref_grad != 0).sum() > 100  # the comparison is not vacuous


def test_frpo_jackknife_and_baseline_change_the_value():
    """Each switch matters (guards against an implementation ignoring a flag)."""
    batch = make_batch(MIXED_SIZES, seed=11, ids=MIXED_IDS)
    vals = {(j, b): loss_and_grad(frpo_loss, batch, lam=0.2, jackknife=j, baseline=b)[0].item()
            for j in (False, True) for b in (False, True)}
    assert len({round(v, 9) for v in vals.values()}) == 4


def test_grpo_value_and_grad_match_reference():
    batch = make_batch(MIXED_SIZES, seed=12, ids=MIXED_IDS)
    loss, grad = loss_and_grad(grpo_loss, batch, epsilon=EPS)
    ref_loss, ref_grad = ref.grpo_reference(*ref_args(batch), epsilon=EPS)
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=F64), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_frpo_invariant_to_row_order_and_group_labels(jackknife, baseline):
    batch = make_batch(MIXED_SIZES, seed=13, ids=MIXED_IDS)
    kw = dict(lam=0.2, jackknife=jackknife, baseline=baseline)
    loss, grad = loss_and_grad(frpo_loss, batch, **kw)

    perm = torch.randperm(batch["logps"].shape[0], generator=torch.Generator().manual_seed(5))
    permuted = {k: v[perm] for k, v in batch.items()}
    loss_p, grad_p = loss_and_grad(frpo_loss, permuted, **kw)
    torch.testing.assert_close(loss_p, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_p, grad[perm], rtol=1e-12, atol=1e-14)

    relabel = {old: new for old, new in zip(MIXED_IDS, [3, -8, 10**9, 1, 2, -1, 77, 0, 6])}
    relabelled = dict(batch, group_ids=torch.tensor([relabel[int(i)] for i in batch["group_ids"]]))
    loss_r, grad_r = loss_and_grad(frpo_loss, relabelled, **kw)
    torch.testing.assert_close(loss_r, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_r, grad, rtol=1e-12, atol=1e-14)

    # a bool mask means the same as a 0/1 float mask
    loss_b, grad_b = loss_and_grad(frpo_loss, dict(batch, mask=batch["mask"] > 0), **kw)
    torch.testing.assert_close(loss_b, loss, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad_b, grad, rtol=1e-12, atol=1e-14)


def test_frpo_groups_are_not_merged():
    """Two groups with different ids stay separate even if they are adjacent and equal in size."""
    batch = make_batch([4, 4], seed=14, ids=[0, 1])
    merged = dict(batch, group_ids=torch.zeros_like(batch["group_ids"]))
    a = loss_and_grad(frpo_loss, batch, lam=0.2)[0]
    b = loss_and_grad(frpo_loss, merged, lam=0.2)[0]
    assert abs(a.item() - b.item()) > 1e-3


# ---------------------------------------------------------------------------------------------------------------
# 2. lambda -> infinity: FRPO (with baseline) tends to GRPO
# ---------------------------------------------------------------------------------------------------------------


def _max_rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_large_lambda_recovers_grpo_gradient():
    """On-policy, no jackknife, baseline on: grad FRPO -> grad GRPO with error O(1/lam) (paper App. E)."""
    batch = make_batch([5, 3, 8, 2, 6], seed=21, off_policy=False)
    _, g_grpo = loss_and_grad(grpo_loss, batch, epsilon=EPS)
    # the GRPO gradient on-policy is -(1/N_groups)(1/n_g)(1/|y_i|) A_i on masked tokens
    expected = torch.zeros_like(g_grpo)
    n_groups = len(set(batch["group_ids"].tolist()))
    for i in range(expected.shape[0]):
        n_g = int((batch["group_ids"] == batch["group_ids"][i]).sum())
        expected[i] = -batch["advantages"][i] * batch["mask"][i] / batch["mask"][i].sum() / n_g / n_groups
    torch.testing.assert_close(g_grpo, expected, rtol=1e-12, atol=1e-15)

    errs = []
    for lam in (1e2, 1e3, 1e4):
        _, g = loss_and_grad(frpo_loss, batch, lam=lam, jackknife=False, baseline=True)
        errs.append(_max_rel_err(g, g_grpo))
    assert errs[0] < 1e-2
    for a, b in zip(errs, errs[1:]):
        assert 8.0 < a / b < 12.0, errs  # first-order convergence in 1/lam

    # without the baseline the gradient carries the O(lam) drift -lam/(n|y|) instead (paper App. E)
    _, g_nb = loss_and_grad(frpo_loss, batch, lam=1e4, jackknife=False, baseline=False)
    assert _max_rel_err(g_nb, g_grpo) > 100


def test_large_lambda_jackknife_limit_is_n_over_n_minus_1_times_grpo():
    """With the jackknife (equal group sizes n), lam -> inf gives n/(n-1) times the GRPO gradient.

    Derivation (on-policy, s_i = w_i = e^{-A_i/lam}, sum_i A_i = 0): dL_g/ds_i = lam[1/Z - (1/n) sum_{j!=i} 1/Z_{-j}]
    with Z = 1 + O(lam^-2), 1/Z_{-j} = 1 - A_j/((n-1)lam) + O(lam^-2), so
    lam w_i dL_g/ds_i - lam/n = lam/n - A_i/(n-1) - lam/n + O(1/lam) = -(n/(n-1)) A_i/n + O(1/lam).
    """
    n = 4
    batch = make_batch([n] * 5, seed=22, off_policy=False)
    _, g_grpo = loss_and_grad(grpo_loss, batch, epsilon=EPS)
    target = g_grpo * n / (n - 1)
    errs = []
    for lam in (1e2, 1e3, 1e4):
        _, g = loss_and_grad(frpo_loss, batch, lam=lam, jackknife=True, baseline=True)
        errs.append(_max_rel_err(g, target))
    assert errs[-1] < 1e-4
    for a, b in zip(errs, errs[1:]):
        assert 8.0 < a / b < 12.0, errs
    # and it is really not the plain GRPO gradient
    assert _max_rel_err(g, g_grpo) == pytest.approx(1 / (n - 1), rel=1e-3)


# ---------------------------------------------------------------------------------------------------------------
# 3. Closed-form gradient, paper Eq. E.1
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_gradient_matches_eq_E1(lam):
    G, n_groups, T, beta = 6, 4, 10, 0.3
    batch = make_batch([G] * n_groups, T=T, seed=31, off_policy=False)
    g = torch.Generator().manual_seed(32)
    ref_logps = batch["logps"] + 0.3 * torch.randn(batch["logps"].shape, generator=g, dtype=F64)
    mask = batch["mask"]

    logps = batch["logps"].clone().requires_grad_(True)
    frpo = frpo_loss(logps, batch["old_logps"], batch["advantages"], mask, batch["group_ids"], lam=lam,
                     jackknife=False, baseline=False)
    kl_rows = (k3_kl(logps, ref_logps) * mask).sum(1) / mask.sum(1)
    loss = frpo + beta * kl_rows.mean()
    (grad,) = torch.autograd.grad(loss, logps)

    adv, gid = batch["advantages"], batch["group_ids"]
    expected = torch.zeros_like(grad)
    for i in range(grad.shape[0]):
        members = gid == gid[i]
        u_g = torch.exp(-adv[members] / lam).mean()
        n_tok = mask[i].sum()
        for t in range(T):
            if mask[i, t] == 0:
                continue
            pi_ref_over_pi = math.exp(ref_logps[i, t] - batch["logps"][i, t])
            bracket = lam * math.exp(-adv[i] / lam) / u_g - beta * (pi_ref_over_pi - 1.0)
            expected[i, t] = bracket / n_groups / G / n_tok
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-13)
    assert torch.all(grad[mask == 0] == 0)


def test_k3_kl_definition():
    g = torch.Generator().manual_seed(33)
    logps = -torch.rand(3, 5, generator=g, dtype=F64) * 3
    ref_logps = -torch.rand(3, 5, generator=g, dtype=F64) * 3
    kl = k3_kl(logps, ref_logps)
    for i in range(3):
        for t in range(5):
            d = ref_logps[i, t].item() - logps[i, t].item()
            assert kl[i, t].item() == pytest.approx(math.exp(d) - d - 1.0, rel=1e-12, abs=1e-15)
    assert torch.all(kl >= 0)
    assert torch.all(k3_kl(logps, logps) == 0)


# ---------------------------------------------------------------------------------------------------------------
# 4. Monte Carlo bias of log Z-hat: O(1/G) plain, O(1/G^2) with the jackknife (paper App. F)
# ---------------------------------------------------------------------------------------------------------------


def _exact_bias_bernoulli(G, p, lam):
    """E[log mean w] - log E[w] and the same for the jackknife, w = e^{-r/lam}, r ~ Bernoulli(p), by summing over
    the number k of successes in the group (both estimators depend on the sample only through k)."""
    w0, w1 = 1.0, math.exp(-1.0 / lam)
    log_mu = math.log((1 - p) * w0 + p * w1)
    plain = jack = 0.0
    for k in range(G + 1):
        prob = math.comb(G, k) * p**k * (1 - p) ** (G - k)
        log_z = math.log(((G - k) * w0 + k * w1) / G)
        loo = 0.0
        if k > 0:
            loo += k * math.log(((G - k) * w0 + (k - 1) * w1) / (G - 1))
        if k < G:
            loo += (G - k) * math.log(((G - k - 1) * w0 + k * w1) / (G - 1))
        plain += prob * log_z
        jack += prob * (G * log_z - (G - 1) / G * loo)
    return plain - log_mu, jack - log_mu


@pytest.fixture
def one_thread():
    """Run a large vectorised test on one intra-op thread: with 2 threads on a 2-core machine shared with other jobs,
    OpenMP barriers made the Monte Carlo test 10-25x slower (measured ~1 s on one thread, 11-25 s on two)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_jackknife_reduces_log_partition_bias_to_order_G_minus_2(one_thread):
    """Rewards r ~ Bernoulli(1/2), lam = 1/2, w = e^{-r/lam}; log E[w] is known exactly.

    frpo_loss on-policy (ratios = 1), one token per row, baseline off, advantages = rewards, returns
    lam * mean over groups of the (plain or jackknifed) log Z-hat, so loss/lam - log E[w] estimates the bias, each
    of the R groups being one Monte Carlo replicate. The raw Monte Carlo noise (per-group sd 0.135 at G = 32, i.e.
    SE 3e-4 even for R = 200k) exceeds the jackknife bias (2.8e-4 at G = 32), so two control variates with exactly
    zero mean are subtracted from both estimators: delta = mean_i x_i and Q = (mean_i x_i^2 - G delta^2)/(2(G-1)),
    with x_i = w_i/E[w] - 1 (E[mean x^2] = E[G delta^2] = Var(w)/E[w]^2 for iid draws). They are the linear and
    quadratic parts of the jackknifed log and leave a per-group sd of 2.1e-3 at G = 32 (SE 1.5e-5 = 5% of the bias
    for R = 20k; 3-4% at the smaller G).
    Exact biases (enumerating the Binomial count of successes), G = 4, 8, 16, 32:
      plain      -9.34e-2, -4.09e-2, -1.92e-2, -9.32e-3   (log-log slope -1.11)
      jackknife   2.67e-2,  6.39e-3,  1.25e-3,  2.76e-4   (log-log slope -2.21)
    Over seeds 1-8 and 1234 the Monte Carlo estimates stay within 1% (plain) and 9% (jackknife) of these, with
    slopes -1.10..-1.11 and -2.20..-2.28.
    """
    p, lam, R = 0.5, 0.5, 20_000
    w1 = math.exp(-1.0 / lam)
    mu = (1 - p) + p * w1
    gen = torch.Generator().manual_seed(1234)
    Gs = [4, 8, 16, 32]
    plain_bias, jack_bias = [], []
    for G in Gs:
        rewards = (torch.rand(R, G, generator=gen, dtype=F64) < p).to(F64)
        x = torch.exp(-rewards / lam) / mu - 1.0
        delta = x.mean(1)
        q = ((x**2).mean(1) - G * delta**2) / (2 * (G - 1))
        control = (delta + q).mean().item()

        # equal chunks of groups (the mean over groups is the mean of the chunk means), to bound peak memory
        chunk = 5_000
        B = chunk * G
        zeros = torch.zeros(B, 1, dtype=F64)
        ones = torch.ones(B, 1, dtype=F64)
        gid = torch.arange(chunk).repeat_interleave(G)
        est = {}
        for jackknife in (False, True):
            losses = [frpo_loss(zeros, zeros, rewards[c:c + chunk].reshape(-1), ones, gid, lam=lam,
                                jackknife=jackknife, baseline=False).item() for c in range(0, R, chunk)]
            est[jackknife] = sum(losses) / len(losses) / lam - math.log(mu) - control
        plain_bias.append(est[False])
        jack_bias.append(est[True])

        exact_plain, exact_jack = _exact_bias_bernoulli(G, p, lam)
        # Monte Carlo agrees with the exact expectation (tolerances ~4 standard errors of the controlled estimate)
        assert est[False] == pytest.approx(exact_plain, rel=0.02)
        assert est[True] == pytest.approx(exact_jack, rel=0.25)
        assert abs(est[True]) < abs(est[False]) / 2  # jackknife bias is smaller at every G (exact ratio 0.29 at G=4)

    log_g = torch.log(torch.tensor(Gs, dtype=F64))

    def slope(bias):
        y = torch.log(torch.tensor(bias, dtype=F64).abs())
        xc = log_g - log_g.mean()
        return ((xc * (y - y.mean())).sum() / (xc**2).sum()).item()

    s_plain, s_jack = slope(plain_bias), slope(jack_bias)
    assert -1.2 <= s_plain <= -0.8, (s_plain, plain_bias)
    assert s_jack < -1.6, (s_jack, jack_bias)
    assert all(b < 0 for b in plain_bias)  # Jensen: log of a mean underestimates on average


# ---------------------------------------------------------------------------------------------------------------
# 5. float32 with small lambda
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_float32_small_lambda_is_stable(jackknife, baseline):
    lam, G = 0.01, 8
    batch64 = make_batch([G] * 4, T=16, seed=51, adv_scale=2.0)
    adv = batch64["advantages"]
    assert adv.abs().max() > 0.6  # A/lam reaches ~ +-100: e^{100} overflows float32
    batch32 = {k: (v.float() if v.is_floating_point() else v) for k, v in batch64.items()}
    kw = dict(lam=lam, jackknife=jackknife, baseline=baseline)

    loss32, grad32 = loss_and_grad(frpo_loss, batch32, **kw)
    loss64, grad64 = loss_and_grad(frpo_loss, batch64, **kw)
    ref_loss, ref_grad = ref.frpo_reference(*ref_args(batch64), **kw)
    torch.testing.assert_close(loss64, torch.tensor(ref_loss, dtype=F64), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(grad64, torch.tensor(ref_grad, dtype=F64), rtol=1e-9, atol=1e-12)

    assert loss32.dtype == torch.float32 and grad32.dtype == torch.float32
    assert torch.isfinite(loss32) and torch.isfinite(grad32).all()
    # measured over seeds 51-55 and the four flag combinations: value rel. error <= 1.2e-7, gradient max error
    # relative to max |grad| <= 1.3e-6; the tolerances leave a ~10x margin
    assert abs(loss32.double().item() - loss64.item()) <= 1e-6 * abs(loss64.item())
    assert _max_rel_err(grad32.double(), grad64) <= 1e-5


def test_naive_linear_space_overflows_in_float32():
    """What the log-space implementation avoids: e^{-A/lam} with A/lam = -100 is inf in float32."""
    assert torch.isinf(torch.exp(torch.tensor(100.0, dtype=torch.float32)))


# ---------------------------------------------------------------------------------------------------------------
# 6. Edge cases and input validation
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("jackknife", [False, True])
@pytest.mark.parametrize("baseline", [False, True])
def test_singleton_group_is_plain_term_and_finite(jackknife, baseline):
    batch = make_batch([1], T=6, seed=61)
    loss, grad = loss_and_grad(frpo_loss, batch, lam=0.2, jackknife=jackknife, baseline=baseline)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    ref_loss, ref_grad = ref.frpo_reference(*ref_args(batch), lam=0.2, jackknife=False, baseline=baseline)
    torch.testing.assert_close(loss, torch.tensor(ref_loss, dtype=F64), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(grad, torch.tensor(ref_grad, dtype=F64), rtol=1e-12, atol=1e-14)

    # singleton next to a regular group
    batch = make_batch([1, 5], T=6, seed=62)
    loss, grad = loss_and_grad(frpo_loss, batch, lam=0.2, jackknife=jackknife, baseline=baseline)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()


def _valid_inputs():
    b = make_batch([3, 2], T=4, seed=63)
    return dict(logps=b["logps"], old_logps=b["old_logps"], advantages=b["advantages"], mask=b["mask"],
                group_ids=b["group_ids"])


def test_all_zero_mask_row_raises():
    x = _valid_inputs()
    mask = x["mask"].clone()
    mask[2] = 0
    with pytest.raises(ValueError):
        frpo_loss(**dict(x, mask=mask), lam=0.2)
    with pytest.raises(ValueError):
        grpo_loss(**dict(x, mask=mask))


@pytest.mark.parametrize("lam", [0.0, -0.5, float("nan")])
def test_bad_lambda_raises(lam):
    with pytest.raises(ValueError):
        frpo_loss(**_valid_inputs(), lam=lam)


@pytest.mark.parametrize("field,shape", [("old_logps", (5, 5)), ("mask", (5, 3)), ("advantages", (4,)),
                                         ("group_ids", (6,)), ("logps", (5,))])
def test_mismatched_shapes_raise(field, shape):
    x = _valid_inputs()
    bad = torch.zeros(shape, dtype=torch.long if field == "group_ids" else F64)
    if field == "mask":
        bad = torch.ones(shape, dtype=F64)
    with pytest.raises(ValueError):
        frpo_loss(**dict(x, **{field: bad}), lam=0.2)
    with pytest.raises(ValueError):
        grpo_loss(**dict(x, **{field: bad}))


# ---------------------------------------------------------------------------------------------------------------
# 7. lambda helpers
# ---------------------------------------------------------------------------------------------------------------


def test_lambda_star_paper_band():
    assert lambda_star(0.07, 0.02) == pytest.approx(0.35, rel=1e-12)
    assert lambda_star(0.07, 0.3) == pytest.approx(0.07 / math.sqrt(0.6), rel=1e-12)
    assert lambda_star(0.07, 0.3) == pytest.approx(0.0904, abs=5e-5)
    with pytest.raises(ValueError):
        lambda_star(0.07, 0.0)


def _gaussian_rewards(n_prompts, n_samples, std, seed):
    g = torch.Generator().manual_seed(seed)
    means = torch.rand(n_prompts, 1, generator=g, dtype=F64)  # different per prompt: the dual is shift-invariant
    return means + std * torch.randn(n_prompts, n_samples, generator=g, dtype=F64)


@pytest.mark.parametrize("rho", [0.02, 0.3])
def test_optimal_lambda_gaussian_matches_lambda_star(rho):
    """For Gaussian rewards -lam log E e^{-r/lam} = mu - sigma^2/(2 lam), so the dual peaks at sigma/sqrt(2 rho)."""
    rewards = _gaussian_rewards(8, 2000, 0.07, seed=71)
    lam = optimal_lambda(rewards, rho)
    assert isinstance(lam, float)
    assert lam == pytest.approx(lambda_star(0.07, rho), rel=0.02)


def test_optimal_lambda_maximises_dual_on_ragged_lists():
    g = torch.Generator().manual_seed(72)
    # ragged: prompts with few samples have a large spread, prompts with many a small one, so that weighting
    # prompts equally (E_x) and weighting samples equally give clearly different optima
    sizes, stds = [3, 5, 40, 60, 200], [0.3, 0.25, 0.05, 0.04, 0.03]
    rewards = [(torch.rand(1, generator=g).item() + s * torch.randn(n, generator=g, dtype=F64)).tolist()
               for n, s in zip(sizes, stds)]
    rho = 0.05
    lam = optimal_lambda(rewards, rho)
    lam_ref, logs, vals = ref.argmax_dual_reference(rewards, rho)
    assert lam == pytest.approx(lam_ref, rel=1e-5)
    assert ref.dual_reference(lam, rewards, rho) >= max(vals) - 1e-12

    pooled, _, _ = ref.argmax_dual_reference([sum(rewards, [])], rho)
    assert abs(pooled / lam_ref - 1) > 0.05  # the test discriminates the weighting

    with pytest.raises(ValueError):
        optimal_lambda(rewards, 0.0)
    with pytest.raises(ValueError):
        optimal_lambda(rewards, -0.1)


def test_lambda_scale_factor():
    for lam in (0.05, 0.2, 1.0, 5.0):
        assert lambda_scale_factor(lam, "equation_4_1") == 1.0
    assert lambda_scale_factor(0.2, "max_lambda_1") == pytest.approx(5.0)
    assert lambda_scale_factor(0.05, "max_lambda_1") == pytest.approx(20.0)
    assert lambda_scale_factor(1.0, "max_lambda_1") == 1.0
    assert lambda_scale_factor(5.0, "max_lambda_1") == 1.0
    assert set(LAMBDA_SCALES) == {"equation_4_1", "max_lambda_1"}
    with pytest.raises(ValueError, match="lambda_scale must be one of 'equation_4_1'.*'max_lambda_1'.*got 'nope'"):
        lambda_scale_factor(0.2, "nope")


@pytest.mark.parametrize(("old", "new"), [("paper", "equation_4_1"), ("official", "max_lambda_1")])
def test_former_lambda_scale_names_are_refused_naming_the_new_ones(old, new):
    # "paper" was misleading (the paper's figures came from the other scaling): no silent alias for either name.
    message = rf"lambda_scale '{old}' was renamed to '{new}'.*'equation_4_1'.*'max_lambda_1'"
    with pytest.raises(ValueError, match=message):
        lambda_scale_factor(0.2, old)


# ---------------------------------------------------------------------------------------------------------------
# 8. Per-group diagnostics
# ---------------------------------------------------------------------------------------------------------------


def _diag_batch():
    b = make_batch(MIXED_SIZES, T=2, seed=81, ids=MIXED_IDS)
    return b["rewards"], b["advantages"], b["group_ids"]


@pytest.mark.parametrize("lam", [1e-3, 0.05, 0.2, 1.0, 5.0])
def test_robust_reward_and_ess_match_reference(lam):
    rewards, adv, gid = _diag_batch()
    rr = robust_reward(rewards, gid, lam)
    assert rr.shape == (len(MIXED_SIZES),)
    torch.testing.assert_close(rr, torch.tensor(ref.robust_reward_reference(rewards, gid, lam), dtype=F64),
                               rtol=1e-10, atol=1e-12)
    ess = effective_sample_size(adv, gid, lam)
    torch.testing.assert_close(ess, torch.tensor(ref.ess_reference(adv, gid, lam), dtype=F64), rtol=1e-10,
                               atol=1e-12)


def test_group_reward_std_is_the_sample_std_with_n_minus_1():
    # By hand: {0, 1, 1, 0} has mean 1/2 and sample variance 4·(1/4)/3 = 1/3; {0.2, 0.2, 0.8} has mean 0.4 and
    # sample variance (0.04 + 0.04 + 0.16)/2 = 0.12; {1, 1} has none; a single row has no spread (NaN).
    rewards = torch.tensor([0.0, 0.2, 1.0, 1.0, 0.2, 0.0, 1.0, 1.0, 0.8, 0.5], dtype=F64)
    gid = torch.tensor([3, 5, 3, 3, 5, 3, 8, 8, 5, 9])
    std = group_reward_std(rewards, gid)
    assert std[:3].tolist() == pytest.approx([math.sqrt(1 / 3), math.sqrt(0.12), 0.0], rel=1e-12, abs=1e-15)
    assert math.isnan(std[3])
    # ... which is not the population std (n in the denominator) that the metric used before
    assert std[0].item() != pytest.approx(0.5)


def test_group_reward_std_matches_reference():
    rewards, _, gid = _diag_batch()
    std = group_reward_std(rewards, gid)
    torch.testing.assert_close(std, torch.tensor(ref.group_sample_std_reference(rewards, gid), dtype=F64),
                               rtol=1e-10, atol=1e-14, equal_nan=True)
    assert math.isnan(std[sorted(MIXED_IDS).index(1000)])  # the singleton group (id 1000's position after sorting)
    # n−1, not n: the population std differs by √(n/(n−1)) in every group of two or more rows
    population = torch.tensor(ref.group_std_reference(rewards, gid), dtype=F64)
    sizes = torch.tensor([len(rows) for rows in ref.groups_in_sorted_order(gid).values()], dtype=F64)
    many = sizes >= 2
    torch.testing.assert_close(std[many], population[many] * torch.sqrt(sizes[many] / (sizes[many] - 1)),
                               rtol=1e-10, atol=1e-14)


def test_ess_limits():
    gid = torch.tensor([0] * 6 + [1] * 3)
    equal = torch.zeros(9, dtype=F64)
    torch.testing.assert_close(effective_sample_size(equal, gid, 0.1), torch.tensor([6.0, 3.0], dtype=F64))
    # one much lower advantage dominates the weights e^{-A/lam} as lam -> 0
    adv = torch.tensor([-0.5, 0.1, 0.1, 0.1, 0.1, 0.1, -0.2, 0.1, 0.1], dtype=F64)
    ess = effective_sample_size(adv, gid, 0.005)
    torch.testing.assert_close(ess, torch.ones(2, dtype=F64), rtol=0, atol=1e-12)
    assert torch.all(effective_sample_size(adv, gid, 1e6) > torch.tensor([5.99, 2.99], dtype=F64))


def test_robust_reward_jensen_and_limits():
    rewards, _, gid = _diag_batch()
    groups = ref.groups_in_sorted_order(gid)
    means = torch.tensor([rewards[rows].mean().item() for rows in groups.values()], dtype=F64)
    mins = torch.tensor([rewards[rows].min().item() for rows in groups.values()], dtype=F64)
    for lam in (0.01, 0.1, 1.0, 10.0):
        assert torch.all(robust_reward(rewards, gid, lam) <= means + 1e-12)
    # lam -> inf: the mean (gap ~ var/(2 lam))
    torch.testing.assert_close(robust_reward(rewards, gid, 1e6), means, rtol=0, atol=1e-6)
    # lam -> 0: the worst reward, finite although e^{r/lam} = e^{1000} overflows float64
    rr = robust_reward(rewards, gid, 1e-3)
    assert torch.isfinite(rr).all()
    assert torch.all(rr >= mins - 1e-12) and torch.all(rr <= mins + 1e-3 * math.log(9) + 1e-12)
