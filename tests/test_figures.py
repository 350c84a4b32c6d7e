"""The safety figures and the final table from synthetic tidy tables: uncertainty on every point (an interval
with one seed, mean ± std over several), details beside every value, run order and seed bookkeeping."""

from __future__ import annotations

import math
import statistics

import pandas as pd
import pytest

from frpo.figures import aggregate_seeds, final_table, lambda_landscape, order_runs, read_table, rl_curves, \
    run_label

SETTING = "arithmetic-full-lr5e-5-ep1"


def _ident(run, rl_seed, track="safety"):
    lam = float(run[len("frpo_lam"):]) if run.startswith("frpo_lam") else math.nan
    return {"track": track, "run": run, "algorithm": "grpo" if run == "grpo" else "frpo", "lambda": lam,
            "rl_seed": rl_seed}


def _tracking(path, seeds=((0, 0),), jitter=0.0):
    """GRPO drops 0.3 in safety over 10 steps, FRPO λ=0.2 drops 0.1; each seed pair shifted by ±``jitter``."""
    rows = []
    for run, drop in [("frpo_lam0.2", 0.1), ("grpo", 0.3)]:
        for i, (rl_seed, ft_seed) in enumerate(seeds):
            shift = jitter * (1 if i % 2 else -1)
            for step in (0, 5, 10):
                safety = 0.8 - drop * step / 10 + shift
                rows.append({**_ident(run, rl_seed), "setting": SETTING, "ft_seed": ft_seed, "step": step,
                             "kl_per_token_sampled": 0.02 * step, "kl_safety_sampled": 0.02 * step,
                             "kl_helpfulness_sampled": 0.02 * step, "safety_reward_greedy": safety,
                             "safety_reward_greedy_ci_low": safety - 0.2,
                             "safety_reward_greedy_ci_high": safety + 0.15, "helpfulness_reward_greedy": 0.5,
                             "helpfulness_reward_greedy_ci_low": 0.4, "helpfulness_reward_greedy_ci_high": 0.6,
                             "n_safety": 12, "n_helpfulness": 8, "train_loss": 1.0})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _record_errorbars(monkeypatch):
    import matplotlib.axes

    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: calls.append((list(x), list(y), yerr, kw)) or
                        real(self, x, y, yerr=yerr, **kw))
    return calls


def test_the_landscape_draws_the_interval_of_a_single_seed(tmp_path, monkeypatch):
    calls = _record_errorbars(monkeypatch)
    lambda_landscape(_tracking(tmp_path / "tracking.csv"), tmp_path / "fig" / "landscape.png")
    assert (tmp_path / "fig" / "landscape.png").stat().st_size > 1000
    assert (tmp_path / "fig" / "landscape.pdf").stat().st_size > 1000
    assert len(calls) == 2  # one line per run, each point with its interval
    for _, _, (below, above), _ in calls:
        assert list(below) == pytest.approx([0.2] * 3) and list(above) == pytest.approx([0.15] * 3)
    assert calls[0][3]["label"] == "GRPO" and calls[1][3]["label"] == "FRPO λ=0.2"  # GRPO first
    assert calls[0][1] == pytest.approx([0.8, 0.65, 0.5])


def test_the_landscape_draws_the_settings_every_run_went_through(tmp_path, monkeypatch):
    calls = _record_errorbars(monkeypatch)
    data = pd.read_csv(_tracking(tmp_path / "tracking.csv"))
    extra = data[data["run"] == "grpo"].assign(setting="gsm8k-lora_r16-lr1e-6-ep2")  # a sweep of GRPO's only
    points = lambda_landscape(pd.concat([data, extra], ignore_index=True), tmp_path / "l.png")
    assert set(points["setting"]) == {SETTING} and len(calls) == 2
    alone = lambda_landscape(extra, tmp_path / "alone.png")  # nothing common to every run: each setting drawn
    assert set(alone["setting"]) == {"gsm8k-lora_r16-lr1e-6-ep2"}


def test_the_landscape_averages_seeds_with_std_error_bars(tmp_path, monkeypatch):
    calls = _record_errorbars(monkeypatch)
    seeds = ((0, 0), (0, 1), (1, 0), (1, 1))
    points = lambda_landscape(_tracking(tmp_path / "tracking.csv", seeds, jitter=0.05), tmp_path / "l.png")
    std = statistics.stdev([-0.05, 0.05, -0.05, 0.05])
    assert len(calls) == 2 and calls[0][3]["label"] == "GRPO (4 seeds)"
    _, y, (below, above), _ = calls[0]
    assert y == pytest.approx([0.8, 0.65, 0.5])  # the shifts cancel in the mean
    assert list(below) == pytest.approx([std] * 3) and list(above) == pytest.approx([std] * 3)
    assert set(points["n_seeds"]) == {4}


def _rl_metrics(path, grpo_seeds=(0,)):
    rows = []
    for seed in grpo_seeds:
        for s in range(1, 4):
            # a step whose batch held no harmful prompt logs null for the safety reward (TRL)
            rows.append({**_ident("grpo", seed), "step": s,
                         "rewards/safety/mean": 0.1 * s + 0.02 * seed if s != 2 else None,
                         "rewards/safety/std": 0.05 if s != 2 else None, "kl": 0.01 * s})
    rows.append({**_ident("frpo_lam0.2", 0), "step": 1, "rewards/safety/mean": 0.3, "rewards/safety/std": 0.04,
                 "kl": 0.02})
    # another track's GRPO must not be mixed into the safety curves
    rows.append({**_ident("grpo", 0, track="math"), "step": 1, "rewards/safety/mean": 9.0, "kl": 9.0})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_rl_curves_shade_the_step_spread_for_one_seed(tmp_path):
    curves = rl_curves(_rl_metrics(tmp_path / "rl_metrics.csv"), tmp_path / "fig" / "rl.png", track="safety")
    assert (tmp_path / "fig" / "rl.png").stat().st_size > 1000 and (tmp_path / "fig" / "rl.pdf").is_file()
    safety = curves[(curves["key"] == "rewards/safety/mean") & (curves["run"] == "grpo")]
    assert list(safety["step"]) == [1, 3]  # the null step is skipped, not drawn as 0
    assert list(safety["mean"]) == pytest.approx([0.1, 0.3]) and list(safety["band"]) == pytest.approx([0.05] * 2)
    assert curves["mean"].max() < 1  # the math track's rows were left out
    assert run_label("frpo_lam0.2") == "FRPO λ=0.2" and run_label("grpo") == "GRPO"


def test_rl_curves_shade_the_std_across_seeds(tmp_path):
    curves = rl_curves(_rl_metrics(tmp_path / "rl_metrics.csv", grpo_seeds=(0, 1)), tmp_path / "rl.png",
                       track="safety")
    safety = curves[(curves["key"] == "rewards/safety/mean") & (curves["run"] == "grpo")]
    assert list(safety["mean"]) == pytest.approx([0.11, 0.31])
    assert list(safety["band"]) == pytest.approx([statistics.stdev([0.1, 0.12]), statistics.stdev([0.3, 0.32])])
    kl = curves[(curves["key"] == "kl") & (curves["run"] == "frpo_lam0.2")]
    assert kl["band"].isna().all()  # one seed and no per-step spread logged: no band rather than a made-up one


def _evals(path, ft_values=(0.5, 0.7, 0.6, 0.8)):
    base = {"setting": "", "ft_seed": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": math.nan,
            "limit": math.nan, "subset": "", "n_scored": math.nan, "n_malformed": math.nan,
            "n_excluded": math.nan}
    rows = [
        {**_ident("grpo", 0), **base, "stage": "rl", "model": "rl/grpo/seed0", "benchmark": "refusal",
         "metric": "refusal_rate", "value": 0.75, "ci_low": 0.5, "ci_high": 0.94, "n": 16, "limit": 16},
        {**_ident("grpo", 0), **base, "stage": "rl", "model": "rl/grpo/seed0", "benchmark": "strongreject",
         "metric": "strongreject_score", "value": math.nan, "n": 60, "n_scored": 0, "n_malformed": 60,
         "n_excluded": 60},
        {"track": "safety", "run": "", "algorithm": "base", "lambda": math.nan, "rl_seed": math.nan, **base,
         "stage": "base", "model": "ref", "benchmark": "refusal", "metric": "refusal_rate", "value": 0.25,
         "n": 16},
    ]
    for (rl_seed, ft_seed), value in zip([(0, 0), (0, 1), (1, 0), (1, 1)], ft_values):
        rows.append({**_ident("grpo", rl_seed), **base, "stage": "ft", "setting": SETTING, "ft_seed": ft_seed,
                     "model": f"ft/grpo/seed{rl_seed}/{SETTING}/seed{ft_seed}", "benchmark": "refusal",
                     "metric": "refusal_rate", "value": value, "ci_low": value - 0.1, "ci_high": value + 0.1,
                     "n": 16, "limit": 16, "n_malformed": rl_seed})
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def test_the_table_shows_intervals_limits_counts_and_nan(tmp_path):
    table = final_table(_tracking(tmp_path / "tracking.csv"), _evals(tmp_path / "evals.csv"), tmp_path / "t.csv",
                        tmp_path / "t.md")
    rows = table.set_index("model")
    assert list(rows.index) == ["base", "grpo", f"grpo/{SETTING}", f"frpo_lam0.2/{SETTING}"]
    row = rows.loc[f"frpo_lam0.2/{SETTING}"]
    assert row["safety_before_ft"] == pytest.approx(0.8) and row["safety_after_ft"] == pytest.approx(0.7)
    assert row["safety_after_ft_ci_low"] == pytest.approx(0.5) and row["safety_after_ft_n_seeds"] == 1
    assert rows.loc["grpo", "refusal"] == 0.75 and rows.loc["grpo", "refusal_limit"] == 16
    assert rows.loc["grpo", "refusal_ci_high"] == 0.94 and rows.loc["grpo", "strongreject_n_excluded"] == 60
    assert math.isnan(rows.loc["grpo", "strongreject"])
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("| model |") and "refusal [refusal_rate]" in md
    assert "0.750 [0.50, 0.94] (n=16, limit=16)" in md
    assert "NaN (n=60, n_scored=0, n_malformed=60, n_excluded=60)" in md
    base_line = next(line for line in md.splitlines() if line.startswith("| base |"))
    assert "| – |" in base_line  # a model without tracking shows a dash, not NaN and not a blank
    assert "NaN" in (tmp_path / "t.csv").read_text()


def test_the_table_averages_fine_tuned_models_over_rl_and_ft_seeds(tmp_path):
    values = (0.5, 0.7, 0.6, 0.8)
    table = final_table(_tracking(tmp_path / "tracking.csv"), _evals(tmp_path / "evals.csv", values),
                        tmp_path / "t.csv", tmp_path / "t.md").set_index("model")
    row = table.loc[f"grpo/{SETTING}"]
    assert row["refusal"] == pytest.approx(statistics.mean(values))
    assert row["refusal_std"] == pytest.approx(statistics.stdev(values)) and row["refusal_n_seeds"] == 4
    assert pd.isna(row["refusal_ci_low"])  # several seeds: their spread, not one seed's interval
    assert row["refusal_n_malformed"] == 1  # the largest count over seeds
    assert pd.isna(table.loc["grpo", "refusal_std"]) and table.loc["grpo", "refusal_n_seeds"] == 1
    md = (tmp_path / "t.md").read_text()
    mean, std = statistics.mean(values), statistics.stdev(values)
    assert f"{mean:.3f} ± {std:.3f} (n_seeds=4, n=16, limit=16, n_malformed≤1)" in md


def test_runs_are_ordered_grpo_then_lambda_descending():
    assert order_runs(["frpo_lam0.2", "frpo_lam10", "grpo", "frpo_lam2", ""]) == [
        "grpo", "frpo_lam10", "frpo_lam2", "frpo_lam0.2"]
    # the lambda column wins over the name
    assert order_runs(["a", "b"], {"a": 0.5, "b": 4.0}) == ["b", "a"]


def test_seed_aggregation_refuses_a_seed_counted_twice(tmp_path):
    frame = pd.DataFrame([{**_ident("grpo", 0), "ft_seed": 0, "step": 1, "v": 1.0},
                          {**_ident("grpo", 0), "ft_seed": 0, "step": 1, "v": 2.0}])
    with pytest.raises(ValueError, match="several rows for the same seed"):
        aggregate_seeds(read_table(frame), ["run", "step"], "v")
    one = aggregate_seeds(read_table(frame.iloc[:1]), ["run", "step"], "v")
    assert one.loc[0, "mean"] == 1.0 and math.isnan(one.loc[0, "std"]) and one.loc[0, "n_seeds"] == 1


def test_a_track_without_rows_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="tracks present: math, safety"):
        rl_curves(_rl_metrics(tmp_path / "m.csv"), tmp_path / "x.png", track="medical")
