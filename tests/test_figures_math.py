"""The math track's Table 2, Fig. 14 and MATH500-vs-λ figure from synthetic tidy tables (2 RL seeds × 2
fine-tuning seeds, GRPO and two λ): hand-computed mean ± std over seeds, the paper's numbers beside ours, run
order, and the λ* band."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from frpo.figures import PAPER_TABLE2, fig14, grpo_reward_std, lambda_star_band, math500_vs_lambda, table2

SETTING = "code-lora-lr5e-5-ep1"
RUNS = {"frpo_lam2": ("frpo", 2.0), "grpo": ("grpo", math.nan), "frpo_lam10": ("frpo", 10.0)}  # not in order
#: fraction correct per (run, rl_seed) after RL, and per (run, rl_seed, ft_seed) after code fine-tuning
RL_MATH = {"grpo": (0.73, 0.74), "frpo_lam10": (0.72, 0.73), "frpo_lam2": (0.73, 0.75)}
FT_MATH = {"grpo": (0.40, 0.44, 0.43, 0.41), "frpo_lam10": (0.45, 0.44, 0.47, 0.42),
           "frpo_lam2": (0.66, 0.63, 0.65, 0.62)}
RL_MBPP = {"grpo": (0.57, 0.58), "frpo_lam10": (0.58, 0.57), "frpo_lam2": (0.56, 0.59)}
FT_MBPP = {"grpo": (0.62, 0.63, 0.61, 0.64), "frpo_lam2": (0.62, 0.62, 0.63, 0.61)}  # λ=10 FT MBPP+ missing
SEED_PAIRS = [(0, 0), (0, 1), (1, 0), (1, 1)]


def _row(run, stage, benchmark, metric, value, rl_seed=math.nan, ft_seed=math.nan, setting="", track="math"):
    algorithm, lam = RUNS[run] if run else ("base", math.nan)
    return {"track": track, "run": run, "algorithm": algorithm, "lambda": lam, "rl_seed": rl_seed, "stage": stage,
            "setting": setting, "ft_seed": ft_seed, "model": f"{stage}/{run}/{rl_seed}/{ft_seed}",
            "benchmark": benchmark, "metric": metric, "value": value, "ci_low": value - 0.02,
            "ci_high": value + 0.02, "n": 500, "limit": math.nan, "subset": "", "n_scored": 500,
            "n_malformed": 0, "n_excluded": 0}


def _evals(path, extra=()):
    rows = [_row("", "base", "math500", "math_verify,none", 0.566),
            _row("", "base", "mbpp_plus", "pass@1_plus", 0.574)]
    for run in RUNS:
        for rl_seed in (0, 1):
            rows.append(_row(run, "rl", "math500", "math_verify,none", RL_MATH[run][rl_seed], rl_seed))
            rows.append(_row(run, "rl", "mbpp_plus", "pass@1_plus", RL_MBPP[run][rl_seed], rl_seed))
            rows.append(_row(run, "rl", "mbpp_plus", "pass@1_base", 0.99, rl_seed))  # not Table 2's metric
        for (rl_seed, ft_seed), value in zip(SEED_PAIRS, FT_MATH[run]):
            rows.append(_row(run, "ft", "math500", "math_verify,none", value, rl_seed, ft_seed, SETTING))
        for (rl_seed, ft_seed), value in zip(SEED_PAIRS, FT_MBPP.get(run, ())):
            rows.append(_row(run, "ft", "mbpp_plus", "pass@1_plus", value, rl_seed, ft_seed, SETTING))
    rows.append(_row("grpo", "rl", "math500", "math_verify,none", 0.01, 0, track="safety"))  # another track
    rows += list(extra)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _pct(values):
    return 100 * statistics.mean(values), 100 * statistics.stdev(values)


def test_table2_cells_are_mean_and_std_over_seeds_beside_the_papers(tmp_path):
    table = table2(_evals(tmp_path / "evals.csv"), tmp_path / "t2.csv", tmp_path / "t2.md", track="math")
    assert list(table["model"]) == ["GRPO", "FRPO λ=10", "FRPO λ=2", "base model"]  # λ=4 etc. absent, not zero
    rows = table.set_index("run")
    for run in RUNS:
        mean, std = _pct(FT_MATH[run])
        assert rows.loc[run, "math500_ft"] == pytest.approx(mean)
        assert rows.loc[run, "math500_ft_std"] == pytest.approx(std)
        assert rows.loc[run, "math500_ft_n_seeds"] == 4
        mean, std = _pct(RL_MATH[run])
        assert rows.loc[run, "math500_base"] == pytest.approx(mean)
        assert rows.loc[run, "math500_base_std"] == pytest.approx(std)
        assert rows.loc[run, "math500_base_n_seeds"] == 2
        assert rows.loc[run, "mbpp_plus_base"] == pytest.approx(_pct(RL_MBPP[run])[0])  # pass@1_plus, not _base
    assert math.isnan(rows.loc["frpo_lam10", "mbpp_plus_ft"])
    assert rows.loc["frpo_lam10", "mbpp_plus_ft_n_seeds"] == 0
    # the paper's Table 2 beside ours
    assert rows.loc["grpo", "math500_ft_paper"] == 42.3 and rows.loc["grpo", "math500_ft_paper_std"] == 2
    assert rows.loc["frpo_lam2", "math500_ft_paper"] == 64.5
    assert rows.loc["frpo_lam10", "mbpp_plus_ft_paper"] == 62.2
    assert rows.loc["frpo_lam2", "mbpp_plus_base_paper"] == 57.9
    assert rows.loc["", "math500_base"] == pytest.approx(56.6) and rows.loc["", "math500_base_paper"] == 56.6
    assert rows.loc["", "mbpp_plus_base_paper"] == 57.4 and math.isnan(rows.loc["", "math500_ft_paper"])
    # one seed keeps its interval instead of a std
    assert rows.loc["", "math500_base_ci_low"] == pytest.approx(54.6)
    assert math.isnan(rows.loc["", "math500_base_std"])

    md = (tmp_path / "t2.md").read_text().splitlines()
    assert md[0] == ("| model | MATH500 Base | MATH500 Base (paper) | MATH500 FT | MATH500 FT (paper) | "
                     "MBPP+ Base | MBPP+ Base (paper) | MBPP+ FT | MBPP+ FT (paper) |")
    lam2 = next(line for line in md if line.startswith("| FRPO λ=2 |")).split(" | ")
    mean, std = _pct(FT_MATH["frpo_lam2"])
    assert lam2[3] == f"{mean:.1f} ± {std:.1f} (4)" and lam2[4] == "64.5 ± 2"
    lam10 = next(line for line in md if line.startswith("| FRPO λ=10 |")).split(" | ")
    assert lam10[7] == "–" and lam10[8].rstrip(" |") == "62.2"
    base = next(line for line in md if line.startswith("| base model |")).split(" | ")
    assert base[1] == "56.6 [54.6, 58.6] (1)" and base[2] == "56.6" and base[3] == "–"
    written = pd.read_csv(tmp_path / "t2.csv")
    assert list(written["model"]) == list(table["model"]) and written["math500_ft"].iloc[0] == pytest.approx(
        _pct(FT_MATH["grpo"])[0], abs=1e-4)


def test_table2_needs_one_fine_tuning_setting(tmp_path):
    other = [_row("grpo", "ft", "math500", "math_verify,none", 0.2, 0, 0, "code-full-lr1e-5-ep1")]
    evals = _evals(tmp_path / "evals.csv", other)
    with pytest.raises(ValueError, match="several fine-tuning settings"):
        table2(evals, tmp_path / "t2.csv", tmp_path / "t2.md", track="math")
    table = table2(evals, tmp_path / "t2.csv", tmp_path / "t2.md", setting="code-full-lr1e-5-ep1",
                   track="math").set_index("run")
    assert table.loc["grpo", "math500_ft"] == pytest.approx(20.0) and table.loc["grpo", "math500_ft_n_seeds"] == 1
    assert math.isnan(table.loc["frpo_lam2", "math500_ft"])


def test_the_paper_table_is_the_papers():
    lams = (10.0, 4.0, 2.0, 1.0, 0.5, 0.2, 0.1)
    assert [k for k in PAPER_TABLE2 if k[0] == "frpo"] == [("frpo", lam) for lam in lams]
    assert [PAPER_TABLE2[("frpo", lam)]["math500_ft"] for lam in lams] == [
        44.5, 61.0, 64.5, 63.1, 53.6, 59.3, 54.6]
    assert [PAPER_TABLE2[("frpo", lam)]["mbpp_plus_base"] for lam in lams] == [
        57.9, 57.4, 57.9, 58.2, 57.9, 57.1, 57.7]
    grpo = PAPER_TABLE2[("grpo", None)]
    assert grpo["math500_base"] == 73.0 and grpo["math500_ft"] == 42.3 and grpo["mbpp_plus_ft"] == 62.5
    assert PAPER_TABLE2[("base", None)] == {"math500_base": 56.6, "mbpp_plus_base": 57.4}


def _rl_metrics(path, grpo_std=(0.6, 0.5, 0.5, 0.4, 0.5, 0.6, 0.5, 0.4)):
    rows = []
    for run, (algorithm, lam) in RUNS.items():
        seeds = (0, 1) if run == "grpo" else (0,)
        for seed in seeds:
            for step in range(1, len(grpo_std) + 1):
                rows.append({"track": "math", "run": run, "algorithm": algorithm, "lambda": lam, "rl_seed": seed,
                             "step": step, "rewards/format/mean": 0.5 + 0.05 * step + 0.01 * seed,
                             "rewards/format/std": 0.3, "rewards/correct/mean": 0.44 + 0.03 * step,
                             "rewards/correct/std": 0.45,
                             "frpo/reward_std_within_group": grpo_std[step - 1] + 0.1 * seed})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_fig14_draws_both_rewards_with_seed_bands(tmp_path):
    curves = fig14(_rl_metrics(tmp_path / "rl_metrics.csv"), tmp_path / "fig" / "fig14.png")
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "fig" / f"fig14{suffix}").stat().st_size > 1000
    assert set(curves["key"]) == {"rewards/format/mean", "rewards/correct/mean"}
    grpo = curves[(curves["key"] == "rewards/format/mean") & (curves["run"] == "grpo")]
    assert grpo["mean"].iloc[0] == pytest.approx(0.555)
    assert grpo["band"].iloc[0] == pytest.approx(statistics.stdev([0.55, 0.56])) and set(grpo["n_seeds"]) == {2}
    lam2 = curves[(curves["key"] == "rewards/correct/mean") & (curves["run"] == "frpo_lam2")]
    assert list(lam2["band"]) == pytest.approx([0.45] * 8)  # one seed: the step's own spread
    assert list(dict.fromkeys(curves["run"])) == ["grpo", "frpo_lam10", "frpo_lam2"]


def test_fig14_refuses_a_table_without_its_rewards(tmp_path):
    path = tmp_path / "m.csv"
    pd.DataFrame([{"track": "math", "run": "grpo", "step": 1, "kl": 0.1}]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="rewards/format/mean"):
        fig14(path, tmp_path / "f.png")


def test_the_lambda_star_band_is_std_over_root_two_rho():
    lo, hi = lambda_star_band(0.5, (0.02, 0.3))
    assert lo == pytest.approx(0.5 / math.sqrt(0.6)) and hi == pytest.approx(2.5)
    assert lambda_star_band(0.07, (0.3, 0.02)) == pytest.approx((0.07 / math.sqrt(0.6), 0.07 / math.sqrt(0.04)))


def test_grpo_reward_std_is_its_last_five_steps_averaged_over_seeds(tmp_path):
    stds = (0.9, 0.9, 0.9, 0.4, 0.5, 0.6, 0.5, 0.4)
    expected = statistics.mean([statistics.mean(stds[-5:]), statistics.mean(stds[-5:]) + 0.1])
    assert grpo_reward_std(_rl_metrics(tmp_path / "m.csv", stds)) == pytest.approx(expected)


def test_math500_vs_lambda(tmp_path):
    stds = (0.9, 0.9, 0.9, 0.4, 0.5, 0.6, 0.5, 0.4)
    drawn = math500_vs_lambda(_evals(tmp_path / "evals.csv"), _rl_metrics(tmp_path / "m.csv", stds),
                              tmp_path / "fig" / "m500.png", rho=(0.02, 0.3))
    for suffix in (".png", ".pdf"):
        assert (tmp_path / "fig" / f"m500{suffix}").stat().st_size > 1000
    std = statistics.mean([statistics.mean(stds[-5:]), statistics.mean(stds[-5:]) + 0.1])
    assert drawn["reward_std"] == pytest.approx(std)
    assert drawn["band"] == pytest.approx((std / math.sqrt(0.6), std / math.sqrt(0.04)))
    points = drawn["points"]
    assert list(points["run"]) == ["frpo_lam10", "frpo_lam2"] and list(points["lambda"]) == [10.0, 2.0]
    mean, sd = _pct(FT_MATH["frpo_lam2"])
    assert points["mean"].iloc[1] == pytest.approx(mean) and points["std"].iloc[1] == pytest.approx(sd)
    assert drawn["grpo"]["mean"] == pytest.approx(_pct(FT_MATH["grpo"])[0]) and drawn["grpo"]["n_seeds"] == 4
