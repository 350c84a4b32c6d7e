"""Figures and the final table from synthetic results: uncertainty on every point, details beside every value."""

from __future__ import annotations

import csv
import json
import math

import pytest

from frpo.figures import final_table, lambda_landscape, rl_curves, run_label
from frpo.track import FIELDS


def _tracking(path):
    rows = []
    for run, drop in [("grpo", 0.3), ("frpo_lam0.2", 0.1)]:
        for step in (0, 5, 10):
            safety = 0.8 - drop * step / 10
            row = dict.fromkeys(FIELDS, "")
            row.update(step=step, kl_per_token_sampled=0.02 * step, kl_safety_sampled=0.02 * step,
                       kl_normal_sampled=0.02 * step, safety_reward_greedy=safety,
                       safety_reward_greedy_ci_low=safety - 0.2, safety_reward_greedy_ci_high=safety + 0.15,
                       helpfulness_reward_greedy=0.5, helpfulness_reward_greedy_ci_low=0.4,
                       helpfulness_reward_greedy_ci_high=0.6, n_safety=12, n_normal=8)
            rows.append({"run": run, "setting": "arithmetic-full-lr5e-5-ep1", **row})
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def test_the_landscape_draws_an_error_bar_on_every_point(tmp_path, monkeypatch):
    import matplotlib.axes

    calls = []
    real = matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, x, y, yerr=None, **kw: calls.append((list(x), list(y), yerr)) or
                        real(self, x, y, yerr=yerr, **kw))
    lambda_landscape(str(_tracking(tmp_path / "tracking.csv")), tmp_path / "fig" / "landscape.png")
    assert (tmp_path / "fig" / "landscape.png").stat().st_size > 1000 and (tmp_path / "fig" / "landscape.pdf").is_file()
    assert len(calls) == 2  # one line per run, each point with its interval
    for _, y, (below, above) in calls:
        assert list(below) == pytest.approx([0.2] * 3) and list(above) == pytest.approx([0.15] * 3)


def test_rl_curves(tmp_path):
    metrics = tmp_path / "grpo.jsonl"
    # a step whose batch held no harmful prompt logs null for the safety reward (TRL), as in the smoke run
    metrics.write_text("".join(json.dumps({"step": s, "rewards/safety/mean": 0.1 * s if s != 2 else None,
                                           "rewards/safety/std": 0.05 if s != 2 else None,
                                           "kl": 0.01 * s}) + "\n" for s in range(1, 4)))
    rl_curves([f"grpo={metrics}"], tmp_path / "fig" / "rl.png")
    assert (tmp_path / "fig" / "rl.png").is_file()
    assert run_label("frpo_lam0.2") == "FRPO λ=0.2" and run_label("grpo") == "GRPO"


def test_the_table_shows_intervals_limits_counts_and_nan(tmp_path):
    tracking = _tracking(tmp_path / "tracking.csv")
    refusal = tmp_path / "refusal.json"
    refusal.write_text(json.dumps({"value": 0.75, "metric": "refusal_rate", "n": 16, "ci95": [0.5, 0.94],
                                   "limit": 16}))
    sr = tmp_path / "sr.json"
    sr.write_text(json.dumps({"value": float("nan"), "metric": "strongreject_score", "n": 60, "n_scored": 0,
                              "n_malformed": 60, "n_excluded": 60}))
    table = final_table(str(tracking), [f"grpo:refusal={refusal}", f"grpo:strongreject={sr}",
                                        f"grpo/arithmetic-full-lr5e-5-ep1:refusal={refusal}"],
                        tmp_path / "t.csv", tmp_path / "t.md")
    rows = table.set_index("model")
    row = rows.loc["frpo_lam0.2/arithmetic-full-lr5e-5-ep1"]
    assert row["safety_before_ft"] == pytest.approx(0.8) and row["safety_after_ft"] == pytest.approx(0.7)
    assert row["safety_after_ft_ci_low"] == pytest.approx(0.5)
    assert rows.loc["grpo", "refusal"] == 0.75 and rows.loc["grpo", "refusal_limit"] == 16
    assert rows.loc["grpo", "refusal_ci_high"] == 0.94 and rows.loc["grpo", "strongreject_n_excluded"] == 60
    assert math.isnan(rows.loc["grpo", "strongreject"])
    md = (tmp_path / "t.md").read_text()
    assert md.startswith("| model |") and "refusal [refusal_rate]" in md
    assert "0.750 [0.50, 0.94] (n=16, limit=16)" in md
    assert "NaN (n=60, n_scored=0, n_malformed=60, n_excluded=60)" in md
    assert "| – |" in md  # a model without tracking shows a dash, not NaN and not a blank
    assert "NaN" in (tmp_path / "t.csv").read_text()
