"""frpo.stats: bootstrap intervals over prompts and mean ± std over seeds."""

import math
import random

from frpo.stats import bootstrap_ci, mean_and_ci, mean_std


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_n():
    rng = random.Random(1)
    small = [float(rng.random() < 0.5) for _ in range(16)]
    large = [float(rng.random() < 0.5) for _ in range(1024)]
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= sum(small) / 16 <= hi_s
    assert lo_l <= sum(large) / 1024 <= hi_l
    # a 16-prompt Bernoulli(1/2) rate is uncertain by about ±0.25; 1024 prompts by about ±0.03
    assert 0.3 < hi_s - lo_s < 0.7
    assert hi_l - lo_l < 0.1


def test_bootstrap_matches_the_normal_approximation():
    xs = [float(i % 4 == 0) for i in range(400)]  # p = 0.25, se = sqrt(p(1-p)/n) = 0.0217
    lo, hi = bootstrap_ci(xs, n_boot=4000)
    assert math.isclose(hi - lo, 2 * 1.96 * math.sqrt(0.25 * 0.75 / 400), rel_tol=0.1)


def test_degenerate_inputs():
    assert bootstrap_ci([0.5, 0.5, 0.5]) == (0.5, 0.5)  # exact in binary: the interval collapses
    lo, hi = bootstrap_ci([])
    assert math.isnan(lo) and math.isnan(hi)
    assert mean_and_ci([1.0, float("nan"), 0.0])["n"] == 2
    assert bootstrap_ci([0.0, 1.0], seed=3) == bootstrap_ci([0.0, 1.0], seed=3)


def test_mean_std_uses_n_minus_1():
    m, s = mean_std([1.0, 2.0, 3.0])
    assert m == 2.0 and s == 1.0
    assert math.isnan(mean_std([1.0])[1])
