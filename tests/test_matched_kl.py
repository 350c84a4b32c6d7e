"""The study's analysis (frpo.matched_kl) against hand-computed cases: the value at a KL level by interpolation
(first crossing, carried forward when never reached), pairing by seed, the exact sign-flip test, the bootstrap
interval, a case with no effect (the interval covers 0, p = 1) and one with a known effect; and the endpoint
table (frpo.figures.study) on a synthetic study whose differences are known by construction."""

from __future__ import annotations

import math
import random

import pandas as pd
import pytest

from frpo.matched_kl import levels_table, paired, sign_flip_test, summarise, value_at_level


def test_value_at_level_interpolates_at_the_first_crossing():
    assert value_at_level([0, 0.1, 0.3], [1.0, 0.9, 0.5], 0.2) == pytest.approx((0.7, True))
    # the level exactly at a tracked point: that point's value
    assert value_at_level([0, 0.1, 0.3], [1.0, 0.9, 0.5], 0.1) == pytest.approx((0.9, True))
    # at or below the first point's KL: the first value
    assert value_at_level([0.05, 0.1], [0.8, 0.7], 0.01) == (0.8, True)
    # KL is noisy, not monotone: the first crossing counts (0 -> 0.3), not the later ones
    v, reached = value_at_level([0, 0.3, 0.1, 0.4], [1.0, 0.6, 0.8, 0.4], 0.2)
    assert reached and v == pytest.approx(1.0 - 0.4 * 0.2 / 0.3)


def test_a_level_never_reached_carries_the_last_value_and_says_so():
    assert value_at_level([0, 0.1, 0.15], [1.0, 0.9, 0.85], 0.2) == (0.85, False)
    # NaN points are skipped; nothing at all is NaN, unreached
    assert value_at_level([0, math.nan, 0.4], [1.0, 0.5, 0.6], 0.2) == pytest.approx((0.8, True))
    v, reached = value_at_level([], [], 0.1)
    assert math.isnan(v) and not reached


def test_sign_flip_test_is_exact_on_small_cases():
    # [1, 1, 1]: 8 sign assignments, |sum| >= 3 for all-plus and all-minus
    assert sign_flip_test([1, 1, 1]) == pytest.approx(2 / 8)
    # [1, -1]: every assignment is as extreme as the observed sum 0
    assert sign_flip_test([1, -1]) == 1.0
    # [3, 1]: sums 4, 2, -2, -4: two of four reach |4|
    assert sign_flip_test([3, 1]) == pytest.approx(0.5)
    assert sign_flip_test([0.0, 0.0]) == 1.0
    assert sign_flip_test([0.2] * 10) == pytest.approx(2 / 1024)
    assert math.isnan(sign_flip_test([]))


def test_sign_flip_test_monte_carlo_beyond_sixteen_pairs():
    p = sign_flip_test([0.2] * 20)
    assert 0 < p < 1e-4  # the exact value is 2 / 2^20; the estimate is (hits + 1) / (draws + 1)
    rng = random.Random(0)
    null = [rng.gauss(0, 1) * rng.choice((-1, 1)) for _ in range(30)]
    assert sign_flip_test(null) > 0.05


def test_summarise_no_effect_and_a_known_effect():
    none = summarise([-0.2, -0.1, 0.1, 0.2, -0.05, 0.05, 0.0, 0.3, -0.3, 0.0])
    assert none["mean_diff"] == pytest.approx(0.0, abs=1e-12)
    assert none["ci_low"] < 0 < none["ci_high"]
    assert none["p_value"] == 1.0  # perfectly symmetric differences
    rng = random.Random(1)
    effect = [0.1 + rng.gauss(0, 0.02) for _ in range(10)]
    s = summarise(effect)
    assert s["n"] == 10 and s["mean_diff"] == pytest.approx(sum(effect) / 10)
    assert 0 < s["ci_low"] < s["mean_diff"] < s["ci_high"]
    assert s["p_value"] == pytest.approx(2 / 1024)  # every difference positive


def _run(run, rl_seed, setting, kls, values, track="study"):
    algorithm, lam = ("grpo", math.nan) if run == "grpo" else ("frpo", float(run.removeprefix("frpo_lam")))
    return [{"track": track, "run": run, "algorithm": algorithm, "lambda": lam, "rl_seed": rl_seed,
             "setting": setting, "ft_seed": 0, "step": 3 * i, "kl_per_token_sampled": k, "safety_reward_greedy": v}
            for i, (k, v) in enumerate(zip(kls, values))]


def test_levels_and_pairs_by_seed():
    rows = (_run("grpo", 0, "a", [0, 0.2, 0.4], [1.0, 0.8, 0.4]) + _run("frpo_lam0.2", 0, "a", [0, 0.1, 0.3],
                                                                        [1.0, 1.0, 0.9])
            + _run("grpo", 1, "a", [0, 0.5], [1.0, 0.5]) + _run("frpo_lam0.2", 1, "a", [0, 0.2], [1.0, 0.95]))
    points = levels_table(pd.DataFrame(rows), [0.2, 0.4], ["kl_per_token_sampled"], "safety_reward_greedy")
    at = points.set_index(["run", "rl_seed", "level"])
    assert at.loc[("grpo", 0, 0.2), "value"] == pytest.approx(0.8)
    assert at.loc[("grpo", 1, 0.2), "value"] == pytest.approx(0.8)          # 1.0 -> 0.5 over KL 0 -> 0.5
    assert at.loc[("frpo_lam0.2", 0, 0.2), "value"] == pytest.approx(0.95)  # between 0.1 and 0.3
    assert not at.loc[("frpo_lam0.2", 0, 0.4), "reached"]                   # carried: 0.9
    assert at.loc[("frpo_lam0.2", 0, 0.4), "value"] == pytest.approx(0.9)
    pairs = paired(points).set_index(["rl_seed", "level"])
    assert pairs.loc[(0, 0.2), "diff"] == pytest.approx(0.15)
    assert pairs.loc[(0, 0.4), "diff"] == pytest.approx(0.9 - 0.4)
    assert pairs.loc[(1, 0.4), "diff"] == pytest.approx(0.95 - 0.6)
    assert not pairs.loc[(0, 0.4), "reached"] and pairs.loc[(0, 0.4), "reached_ref"]
    with pytest.raises(ValueError, match="no run 'sft'"):
        paired(points, reference="sft")


# ------------------------------------------------------------------------------- the endpoint table, end to end
SEEDS = range(6)
SETTINGS = ("instructions-full-lr1e-3-ep1", "instructions-full-lr5e-4-ep2")
#: the reward falls linearly with KL: 1 - slope * KL; FRPO λ=0.2 falls half as fast, λ=2 as fast as GRPO
SLOPE = {"grpo": 0.6, "frpo_lam0.2": 0.3, "frpo_lam2": 0.6}
KL_STEP = {SETTINGS[0]: 0.1, SETTINGS[1]: 0.05}


def _study_tracking():
    rows = []
    for run, slope in SLOPE.items():
        for seed in SEEDS:
            for setting in SETTINGS:
                kls = [KL_STEP[setting] * i * (1 + 0.1 * seed) for i in range(9)]
                noise = 0.01 * ((seed % 3) - 1)  # shared by every run of the seed: pairing removes it
                rows += _run(run, seed, setting, kls, [1 - slope * k + noise for k in kls])
    frame = pd.DataFrame(rows)
    frame["kl_ft_data_sampled"] = 2 * frame["kl_per_token_sampled"]
    frame["kl_safety_per_sequence_sampled"] = 10 * frame["kl_per_token_sampled"]
    frame["safety_reward_sampled"] = frame["safety_reward_greedy"]
    return frame.sample(frac=1.0, random_state=0)


def _study_rl_metrics():
    return pd.DataFrame([{"track": "study", "run": run, "algorithm": "x", "lambda": math.nan, "rl_seed": seed,
                          "step": step, "rewards/safety/mean": 0.9 + 0.01 * seed, "rewards/normal/mean": 0.95,
                          "frpo/reward_std_within_group": 0.05, "kl": 0.1}
                         for run in SLOPE for seed in SEEDS for step in range(20)])


def _study_rewards():
    return pd.DataFrame([{"track": "study", "stage": "rl", "run": run, "algorithm": "x", "lambda": math.nan,
                          "rl_seed": seed, "setting": "", "ft_seed": math.nan, "probe": "safety",
                          "prompt_index": p, "sample": s, "reward": 1.0 if (p + s) % 4 else 0.5}
                         for run in SLOPE for seed in SEEDS for p in range(4) for s in range(4)])


def test_endpoint_table_recovers_a_known_effect(tmp_path):
    from frpo.figures.study import endpoint_table, primary_row

    levels = [0.1, 0.2, 0.3]
    table = endpoint_table(_study_tracking(), _study_rl_metrics(), _study_rewards(), tmp_path / "t.csv",
                           tmp_path / "t.md", levels=levels, n_boot=500)
    # on the straight lines: the difference at KL k is (0.6 - 0.3) k, the same for every seed and setting
    row = primary_row(table, "frpo_lam0.2", "kl_per_token_sampled")
    assert row["mean_diff"] == pytest.approx(0.3 * sum(levels) / 3, abs=1e-9)
    assert row["n_pairs"] == len(SEEDS) and row["p_value"] == pytest.approx(2 / 2 ** len(SEEDS))
    assert row["ci_low"] == pytest.approx(row["mean_diff"]) == pytest.approx(row["ci_high"])
    per_level = table[(table["section"] == "matched_kl") & (table["run"] == "frpo_lam0.2")
                      & (table["kl"] == "kl_per_token_sampled") & (table["setting"] == "all")
                      & (table["level"] != "all")]
    assert sorted(per_level["mean_diff"]) == pytest.approx([0.3 * x for x in levels])
    # λ=2 falls as GRPO does: no effect, p = 1
    null = primary_row(table, "frpo_lam2", "kl_per_token_sampled")
    assert null["mean_diff"] == pytest.approx(0.0, abs=1e-12) and null["p_value"] == 1.0
    # the fine-tuning data's KL is twice as large: the same runs compared at half the probes' KL
    ft = primary_row(table, "frpo_lam0.2", "kl_ft_data_sampled")
    assert ft["mean_diff"] == pytest.approx(0.3 * sum(levels) / 3 / 2, abs=1e-9)
    assert set(table["section"]) == {"matched_kl", "matched_kl_reached", "step", "end", "rl_end", "floor"}
    rl = table[table["section"] == "rl_end"].set_index("run")
    assert rl.loc["grpo", "safety"] == pytest.approx(0.9 + 0.01 * sum(SEEDS) / len(SEEDS))
    text = (tmp_path / "t.md").read_text()
    assert "**Primary endpoint**" in text and "+0.060" in text


def test_unreached_levels_are_counted_not_dropped(tmp_path):
    from frpo.figures.study import endpoint_table

    # level 0.9: the lr5e-4 runs reach at most 0.05 * 8 * 1.5 = 0.6
    table = endpoint_table(_study_tracking(), _study_rl_metrics(), _study_rewards(), tmp_path / "t.csv",
                           tmp_path / "t.md", levels=[0.9], n_boot=200)
    row = table[(table["section"] == "matched_kl") & (table["run"] == "frpo_lam0.2")
                & (table["kl"] == "kl_per_token_sampled") & (table["setting"] == SETTINGS[1])].iloc[0]
    assert row["n_pairs"] == len(SEEDS) and row["unreached"] == len(SEEDS) == row["unreached_ref"]
    reached_only = table[(table["section"] == "matched_kl_reached") & (table["setting"] == SETTINGS[1])
                         & (table["kl"] == "kl_per_token_sampled")]
    assert reached_only.empty  # no pair reached it in that setting


def test_study_figures_draw(tmp_path):
    from frpo.figures.study import matched_kl_curves, paired_differences

    curves = matched_kl_curves(_study_tracking(), tmp_path / "c.png", levels=[0.1, 0.2], n_boot=100)
    assert (tmp_path / "c.png").is_file() and (tmp_path / "c.pdf").is_file()
    at = curves[(curves["run"] == "grpo") & (curves["kl"] == "kl_per_token_sampled")
                & (curves["setting"] == SETTINGS[0])]
    # the mean over seeds at x: 1 - 0.6 x + the mean seed noise (0 over seeds 0..5)
    assert at["mean"].to_numpy()[:5] == pytest.approx([1 - 0.6 * x for x in at["x"].to_numpy()[:5]], abs=1e-9)
    diffs = paired_differences(_study_tracking(), tmp_path / "p.png", levels=[0.1, 0.2], n_boot=100)
    assert (tmp_path / "p.png").is_file()
    best = diffs[(diffs["run"] == "frpo_lam0.2") & (diffs["kl"] == "kl_per_token_sampled")
                 & (diffs["level"] == 0.2)]
    assert best["mean_diff"].iloc[0] == pytest.approx(0.3 * 0.2)
