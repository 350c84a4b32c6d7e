"""The safety track's paper figures (Fig. 2, 3 right, 4, 5), Table 1 and the forgetting-floor figure from small
synthetic tidy tables: two track instances (``mistral`` with GRPO and FRPO λ=0.2, ``qwen7b`` with GRPO only, as
the paper's model-size sweep has), three seed pairs, rows shuffled. Each number a function returns is checked
against the formula the table was built from: the final-step selection, the normalisation by step 0 per seed,
seeds averaged (mean and n−1 std), λ* = std/√(2ρ), the paper's columns, and the floor respected on a case whose
floor is known exactly."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from frpo.figures.safety_paper import (PAPER_TABLE1, fig2, fig4, fig5, floor_figure, lambda_star_vs_rho,
                                       parse_setting, table1)
from frpo.floor import floor
from frpo.objective import optimal_lambda

RUNS = {"grpo": ("grpo", math.nan), "frpo_lam0.2": ("frpo", 0.2)}
INSTANCES = {"mistral": ("grpo", "frpo_lam0.2"), "qwen7b": ("grpo",)}
SETTINGS = {"gsm8k-full-lr6e-6-ep1": 0.2, "gsm8k-lora_r16-lr1e-5-ep2": 0.05, "alpaca-full-lr1e-6-ep1": 0.1}
SEED_PAIRS = [(0, 0), (1, 0), (1, 1)]  # (rl_seed, ft_seed)
STEPS = (10, 0, 5)  # not in order
SAFETY0 = {"grpo": 0.8, "frpo_lam0.2": 0.9}
HELP0 = {"mistral": 0.6, "qwen7b": 0.7}


def _kl(inst, setting, rl_seed, ft_seed, step):
    return SETTINGS[setting] * step / 10 * (1 + 0.1 * rl_seed + 0.05 * ft_seed) * (1 if inst == "mistral" else .5)


def _safety(inst, run, setting, rl_seed, ft_seed, step):
    return SAFETY0[run] - 0.3 * _kl(inst, setting, rl_seed, ft_seed, step) + 0.01 * rl_seed


def _help(inst, run, setting, rl_seed, ft_seed, step):
    return HELP0[inst] * (1 - 0.5 * _kl(inst, setting, rl_seed, ft_seed, step)) + 0.02 * rl_seed


def _sampled(inst, run, setting, rl_seed, ft_seed, step):
    """The floor's case: GRPO seed 0 samples 0.5 for every completion (its floor is 0.5 at every KL), and its
    fine-tuning runs measure 0.5 ± 0.05 by step: 0.55, 0.5 + ε, 0.45 (below); GRPO seed 1's runs measure at
    least 0.85, above its mean sampled reward 0.80 (which no floor exceeds)."""
    if run == "grpo" and rl_seed == 0:
        return {0: 0.55, 5: 0.5 + 1e-9, 10: 0.45}[step]
    if run == "grpo" and rl_seed == 1:
        return 0.9 - 0.005 * step
    return _safety(inst, run, setting, rl_seed, ft_seed, step) - 0.05


def _identity(inst, run, stage, rl_seed=math.nan, setting="", ft_seed=math.nan):
    algorithm, lam = RUNS[run] if run else ("base", math.nan)
    return {"track": inst, "stage": stage, "model": f"{stage}/{run}/{rl_seed}/{setting}/{ft_seed}", "run": run,
            "algorithm": algorithm, "lambda": lam, "rl_seed": rl_seed, "setting": setting, "ft_seed": ft_seed}


def _tracking():
    rows = []
    for inst, runs in INSTANCES.items():
        for run in runs:
            for setting in SETTINGS:
                for rl_seed, ft_seed in SEED_PAIRS:
                    for step in STEPS:
                        args = (inst, run, setting, rl_seed, ft_seed, step)
                        kl = _kl(inst, setting, rl_seed, ft_seed, step)
                        rows.append({**_identity(inst, run, "ft", rl_seed, setting, ft_seed), "step": step,
                                     "kl_per_token_sampled": kl, "kl_per_sequence_sampled": 10 * kl,
                                     "kl_safety_sampled": kl, "kl_helpfulness_sampled": kl,
                                     "safety_reward_greedy": _safety(*args), "safety_reward_greedy_ci_low": 0.0,
                                     "safety_reward_greedy_ci_high": 1.0,
                                     "helpfulness_reward_greedy": _help(*args),
                                     "safety_reward_sampled": _sampled(*args), "n_safety": 8, "n_helpfulness": 8})
    return pd.DataFrame(rows).sample(frac=1.0, random_state=0).reset_index(drop=True)


#: GRPO's within-group reward std by (instance, rl_seed) and step (8 logged steps; the last 5 count)
STD = {("mistral", 0): [0.2, 0.2, 0.2, 0.06, 0.07, 0.08, 0.07, 0.06],
       ("mistral", 1): [0.2, 0.2, 0.2, 0.08, 0.08, 0.09, 0.08, 0.08],
       ("qwen7b", 0): [0.3, 0.3, 0.3, 0.05, 0.05, 0.05, 0.05, 0.05]}


def _rl_metrics():
    rows = []
    for (inst, seed), stds in STD.items():
        for step, std in enumerate(stds):
            rec = {"track": inst, "run": "grpo", "algorithm": "grpo", "lambda": math.nan, "rl_seed": seed,
                   "step": step, "rewards/safety/mean": 0.5, "kl": 0.01}
            # qwen7b logged only TRL's reward_std (the fallback), mistral the within-group std
            rec["reward_std" if inst == "qwen7b" else "frpo/reward_std_within_group"] = std
            rows.append(rec)
        rows.append({"track": inst, "run": "frpo_lam0.2", "algorithm": "frpo", "lambda": 0.2, "rl_seed": seed,
                     "step": 7, "frpo/reward_std_within_group": 0.9})  # not GRPO's
    return pd.DataFrame(rows)


#: sampled rewards per prompt of the RL models (probe safety): GRPO seed 0 constant (the floor's case)
REWARDS = {("mistral", "grpo", 0): [[0.5] * 4 for _ in range(6)],
           ("mistral", "grpo", 1): [[0.9, 0.7, 0.8, 0.95], [0.6, 0.9, 0.85, 0.7], [0.8, 0.8, 0.5, 0.9],
                                    [1.0, 0.75, 0.9, 0.65], [0.7, 0.95, 0.8, 0.85]],
           ("mistral", "frpo_lam0.2", 0): [[1, 0, 1, 1], [1, 1, 0, 1], [0, 1, 1, 1], [1, 1, 1, 1], [0, 1, 0, 1],
                                           [1, 1, 1, 0]]}


def _rewards():
    rows = []
    for (inst, run, seed), prompts in REWARDS.items():
        for p, samples in enumerate(prompts):
            for s, r in enumerate(samples):
                rows.append({**_identity(inst, run, "rl", seed), "probe": "safety", "prompt_index": p, "sample": s,
                             "reward": float(r)})
                rows.append({**_identity(inst, run, "rl", seed), "probe": "helpfulness", "prompt_index": p,
                             "sample": s, "reward": 0.0})  # another probe: never read
    return pd.DataFrame(rows).sample(frac=1.0, random_state=1).reset_index(drop=True)


FT = "gsm8k-full-lr6e-6-ep1"
#: (benchmark, main metric, value before, value after by (rl_seed, ft_seed)) per run; base: value
BENCH = {"harmbench": "refusal_rate", "strongreject": "score", "gsm8k_maj8": "exact_match,maj@8",
         "mmlu": "acc,none", "ifeval": "prompt_level_strict_acc,none", "humaneval_plus": "pass@1_base"}


def _ev_value(bench, run, stage, rl_seed=0, ft_seed=0, setting=FT):
    i = list(BENCH).index(bench)
    base = 0.3 + 0.05 * i + {"": 0.0, "grpo": 0.01, "frpo_lam0.2": 0.02}[run]
    if stage == "rl":
        base += 0.01 * rl_seed
    if stage == "ft":
        base += 0.1 + 0.01 * rl_seed + 0.02 * ft_seed + (0.05 if setting != FT else 0)
    return base


def _evals():
    rows = []

    def add(ident, bench, value):
        rows.append({**ident, "benchmark": bench, "metric": BENCH[bench], "value": value, "ci_low": value - 0.03,
                     "ci_high": value + 0.03, "n": 100})
        rows.append({**ident, "benchmark": bench, "metric": "other", "value": 0.99, "ci_low": 0.9, "ci_high": 1.0,
                     "n": 100})  # a result's secondary metric, written after its main one

    for inst, runs in INSTANCES.items():
        for bench in BENCH:
            add(_identity(inst, "", "base"), bench, _ev_value(bench, "", "base"))
            for run in runs:
                for rl_seed in (0, 1):
                    add(_identity(inst, run, "rl", rl_seed), bench, _ev_value(bench, run, "rl", rl_seed))
                for setting in (FT, "gsm8k-lora-lr1e-5-ep1", "alpaca-full-lr1e-6-ep1"):
                    for rl_seed, ft_seed in SEED_PAIRS:
                        add(_identity(inst, run, "ft", rl_seed, setting, ft_seed), bench,
                            _ev_value(bench, run, "ft", rl_seed, ft_seed, setting))
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    root = tmp_path_factory.mktemp("tables")
    paths = {}
    for name, frame in (("tracking", _tracking()), ("rl_metrics", _rl_metrics()), ("rewards", _rewards()),
                        ("evals", _evals())):
        paths[name] = root / f"{name}.csv"
        frame.to_csv(paths[name], index=False)
    return paths


def _written(png):
    assert png.exists() and png.stat().st_size > 0 and png.with_suffix(".pdf").exists()


def _mean_std(values):
    return statistics.mean(values), statistics.stdev(values)


def test_parse_setting_reads_lora_ranks():
    assert parse_setting("gsm8k-lora_r16-lr1e-5-ep2") == {"dataset": "gsm8k", "method": "lora_r16",
                                                           "family": "lora", "rank": 16, "lr": "1e-5", "epochs": 2}
    assert parse_setting("alpaca-full-lr6e-6-ep1")["family"] == "full"
    with pytest.raises(ValueError, match="'gsm8k-qlora-lr1e-5-ep1'"):
        parse_setting("gsm8k-qlora-lr1e-5-ep1")


def test_fig2_final_step_normalised_by_step0_seeds_averaged(tables, tmp_path):
    points = fig2(tables["tracking"], tmp_path / "fig2.png").set_index(["track", "setting"])
    _written(tmp_path / "fig2.png")
    # GRPO of both instances, GSM8K settings only (the Alpaca setting and FRPO are left out)
    assert sorted(points.index) == sorted((i, s) for i in INSTANCES for s in SETTINGS if s.startswith("gsm8k"))
    for inst in INSTANCES:
        for setting in ("gsm8k-full-lr6e-6-ep1", "gsm8k-lora_r16-lr1e-5-ep2"):
            row = points.loc[(inst, setting)]
            finals = [(inst, "grpo", setting, r, f, 10) for r, f in SEED_PAIRS]  # step 10 is the last
            kl = [_kl(inst, setting, r, f, 10) for r, f in SEED_PAIRS]
            assert (row["kl"], row["kl_std"]) == pytest.approx(_mean_std(kl))
            assert (row["safety"], row["safety_std"]) == pytest.approx(_mean_std([_safety(*a) for a in finals]))
            # per seed: final / step 0 of the same run, then the mean (not the ratio of the means)
            ratios = [_help(*a) / _help(*a[:5], 0) for a in finals]
            assert (row["helpfulness_norm"], row["helpfulness_norm_std"]) == pytest.approx(_mean_std(ratios))
            assert row["n_seeds"] == 3 and row["step"] == 10
    assert points.loc[("mistral", "gsm8k-lora_r16-lr1e-5-ep2"), "family"] == "lora"

    data = _tracking()
    with pytest.raises(ValueError, match="helpfulness_reward_greedy"):
        fig2(data.drop(columns=["helpfulness_reward_greedy"]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="step-0"):
        fig2(data[data["step"] > 0], tmp_path / "x.png")
    with pytest.raises(ValueError, match="'grpo' run"):
        fig2(data[data["run"] != "grpo"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="found datasets alpaca"):
        fig2(data[data["setting"].str.startswith("alpaca")], tmp_path / "x.png")


def test_fig5_grpo_vs_frpo_every_setting_of_complete_instances(tables, tmp_path):
    points = fig5(tables["tracking"], tmp_path / "fig5.png")
    _written(tmp_path / "fig5.png")
    assert set(points["track"]) == {"mistral"}  # qwen7b has no FRPO run
    assert len(points) == 2 * len(SETTINGS)
    row = points.set_index(["run", "setting"]).loc[("frpo_lam0.2", "alpaca-full-lr1e-6-ep1")]
    finals = [("mistral", "frpo_lam0.2", "alpaca-full-lr1e-6-ep1", r, f, 10) for r, f in SEED_PAIRS]
    assert (row["safety"], row["safety_std"]) == pytest.approx(_mean_std([_safety(*a) for a in finals]))
    assert row["helpfulness"] == pytest.approx(statistics.mean(_help(*a) for a in finals))  # not normalised
    assert row["kl"] == pytest.approx(statistics.mean(_kl(*a[:1], *a[2:]) for a in finals))
    assert row["dataset"] == "alpaca" and row["n_seeds"] == 3
    with pytest.raises(ValueError, match="frpo_lam0.5.*mistral lacks frpo_lam0.5"):
        fig5(tables["tracking"], tmp_path / "x.png", runs=("grpo", "frpo_lam0.5"))


def test_lambda_star_theory_and_numeric(tables, tmp_path):
    rhos = (0.02, 0.1, 0.3)
    table = lambda_star_vs_rho(tables["rl_metrics"], tables["rewards"], tmp_path / "lam.png", rhos=rhos)
    _written(tmp_path / "lam.png")
    assert sorted(set(table["track"])) == ["mistral", "qwen7b"]
    std = {"mistral": statistics.mean([statistics.mean(STD[("mistral", s)][-5:]) for s in (0, 1)]),
           "qwen7b": statistics.mean(STD[("qwen7b", 0)][-5:])}  # qwen7b: TRL's reward_std, the fallback
    for row in table.itertuples():
        assert row.reward_std == pytest.approx(std[row.track])
        assert row.lambda_theory == pytest.approx(std[row.track] / math.sqrt(2 * row.rho))
        assert row.in_band == (0.02 <= row.rho <= 0.3)
    mistral = table[table["track"] == "mistral"].set_index("rho")
    for rho in rhos:
        per_seed = [optimal_lambda(REWARDS[("mistral", "grpo", s)], rho) for s in (0, 1)]
        assert mistral.loc[rho, "lambda_numeric"] == pytest.approx(statistics.mean(per_seed))
        assert mistral.loc[rho, "n_seeds"] == 2
    assert mistral["at_bound"].all()  # seed 0's rewards have no spread: its optimum is λ → 0, at the bound
    qwen = table[table["track"] == "qwen7b"]
    assert (qwen["n_seeds"] == 0).all() and qwen["lambda_numeric"].isna().all()  # no sampled rewards: theory only
    with pytest.raises(ValueError, match="probe"):
        lambda_star_vs_rho(tables["rl_metrics"], _rewards().drop(columns=["probe"]), tmp_path / "x.png")
    with pytest.raises(ValueError, match="'grpo' run"):
        metrics = _rl_metrics()
        lambda_star_vs_rho(metrics[metrics["run"] != "grpo"], _rewards()[lambda d: d["run"] != "grpo"],
                           tmp_path / "x.png")


def test_fig4_end_points_before_and_after_ft(tables, tmp_path):
    bars = fig4(tables["evals"], tmp_path / "fig4.png")
    _written(tmp_path / "fig4.png")
    assert set(bars["track"]) == {"mistral"}
    assert set(bars["setting"]) == {"", FT}  # of the two GSM8K settings, the paper's (full, lr 6e-6, 1 epoch)
    assert set(bars["metric"]) == {"refusal_rate", "score"}  # main metrics, not the "other" rows
    bars = bars.set_index(["benchmark", "run", "phase"])
    after = [_ev_value("harmbench", "frpo_lam0.2", "ft", r, f) for r, f in SEED_PAIRS]
    row = bars.loc[("harmbench", "frpo_lam0.2", "after")]
    assert (row["mean"], row["std"], row["n_seeds"]) == pytest.approx((*_mean_std(after), 3))
    before = [_ev_value("strongreject", "grpo", "rl", s) for s in (0, 1)]
    assert bars.loc[("strongreject", "grpo", "before"), "mean"] == pytest.approx(statistics.mean(before))
    base = bars.loc[("strongreject", "", "before")]
    assert base["mean"] == pytest.approx(_ev_value("strongreject", "", "base")) and base["n_seeds"] == 1
    assert ("strongreject", "", "after") not in bars.index  # the base model is not fine-tuned

    evals = _evals()
    with pytest.raises(ValueError, match="strongreject"):
        fig4(evals[evals["benchmark"] != "strongreject"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="several fine-tuning settings"):  # two GSM8K settings, not the paper's
        fig4(evals.assign(setting=evals["setting"].replace(FT, "gsm8k-full-lr3e-5-ep1")), tmp_path / "x.png")
    only = fig4(evals, tmp_path / "x.png", setting="gsm8k-lora-lr1e-5-ep1")
    assert set(only["setting"]) == {"", "gsm8k-lora-lr1e-5-ep1"}


def test_table1_before_after_beside_the_paper(tables, tmp_path):
    table = table1(tables["evals"], tmp_path / "t1.csv", tmp_path / "t1.md")
    assert list(table["model"]) == ["base model", "GRPO", "FRPO λ=0.2"] and set(table["track"]) == {"mistral"}
    rows = table.set_index("run")
    for name, bench in (("gsm8k", "gsm8k_maj8"), ("humaneval", "humaneval_plus")):
        for run in ("grpo", "frpo_lam0.2"):
            before = [100 * _ev_value(bench, run, "rl", s) for s in (0, 1)]
            after = [100 * _ev_value(bench, run, "ft", r, f) for r, f in SEED_PAIRS]
            assert (rows.loc[run, f"{name}_before"], rows.loc[run, f"{name}_before_std"]) == pytest.approx(
                _mean_std(before))
            assert (rows.loc[run, f"{name}_after"], rows.loc[run, f"{name}_after_std"]) == pytest.approx(
                _mean_std(after))
            assert rows.loc[run, f"{name}_after_n_seeds"] == 3
        assert rows.loc["", f"{name}_before"] == pytest.approx(100 * _ev_value(bench, "", "base"))
        assert math.isnan(rows.loc["", f"{name}_after"]) and rows.loc["", f"{name}_after_n_seeds"] == 0
    assert rows.loc["grpo", "gsm8k_before_paper"] == 48.4 and rows.loc["grpo", "gsm8k_after_paper"] == 55.5
    assert rows.loc["frpo_lam0.2", "humaneval_after_paper"] == PAPER_TABLE1[("frpo", 0.2)]["humaneval_after"]
    assert rows.loc["", "mmlu_after_paper"] == 53.7
    written = pd.read_csv(tmp_path / "t1.csv")
    assert written["gsm8k_after"].tolist()[1:] == pytest.approx(table["gsm8k_after"].tolist()[1:], abs=1e-4)
    md = (tmp_path / "t1.md").read_text()
    assert "GSM8K maj@8 (paper)" in md and "48.4 → 55.5" in md and "50.5 → 57.4" in md
    base_line = next(line for line in md.splitlines() if line.startswith("| base model"))
    g = 100 * _ev_value("gsm8k_maj8", "", "base")
    assert f"| {g:.1f} [{g - 3:.1f}, {g + 3:.1f}] (1) → – |" in base_line  # one value: its interval; no FT
    with pytest.raises(ValueError, match="gsm8k-full-lr1e-4-ep1"):
        table1(tables["evals"], tmp_path / "x.csv", tmp_path / "x.md", setting="gsm8k-full-lr1e-4-ep1")


def test_floor_figure_respected_fraction(tables, tmp_path):
    out = tmp_path / "floor.png"
    tracking = _tracking()
    tracking = tracking[tracking["setting"] == FT]  # fewer points: each costs a floor
    report = floor_figure(tracking, tables["rewards"], out, n_boot=2, grid=5)
    _written(out)
    assert pd.read_csv(out.with_suffix(".csv")).shape[0] == len(report)
    # the RL models with sampled rewards and tracked runs: GRPO seeds 0 and 1, FRPO λ=0.2 seed 0 (mistral)
    models = set(zip(report["run"], report["rl_seed"]))
    assert models == {("grpo", 0), ("grpo", 1), ("frpo_lam0.2", 0)} and set(report["track"]) == {"mistral"}
    constant = report[(report["run"] == "grpo") & (report["rl_seed"] == 0)]
    assert len(constant) == len(STEPS)  # ft seed 0 of RL seed 0, every step
    assert (constant["floor"] == 0.5).all() and (constant["floor_lo"] == 0.5).all()
    # steps 0 and 5 (0.55, 0.5 + ε) respect it, step 10 (0.45) does not
    assert constant.set_index("step")["respects"].to_dict() == {0: True, 5: True, 10: False}
    grpo = report[report["run"] == "grpo"]
    assert len(grpo) == 3 * len(STEPS)  # RL seed 1 has two fine-tuning seeds
    assert grpo["respects"].sum() == 8 and grpo["fraction_respecting"].tolist() == pytest.approx([8 / 9] * 9)
    # the varied model: each point's floor is the floor at its own KL, the band around it
    varied = report[report["run"] == "frpo_lam0.2"]
    for row in varied.itertuples():
        exact = floor(REWARDS[("mistral", "frpo_lam0.2", 0)], max(row.kl, 1e-6))["floor"]
        assert row.floor == pytest.approx(exact)
        assert row.floor_lo <= row.floor_hi  # a percentile band: not always around the estimate (2 draws here)
        assert row.respects == (row.reward >= row.floor_lo) and row.above_floor == (row.reward >= row.floor)

    with pytest.raises(ValueError, match="safety_reward_sampled"):
        floor_figure(tracking.drop(columns=["safety_reward_sampled"]), tables["rewards"], out, n_boot=2)
    with pytest.raises(ValueError, match="rhos reach 0.1"):
        floor_figure(tracking, tables["rewards"], out, rhos=[0.01, 0.1], n_boot=2)
