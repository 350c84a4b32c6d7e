"""The tidy tables (frpo.tables): identity columns parsed from the model targets, one row per observation, and
what a result records beside its main value as rows of their own."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from frpo.tables import IDENTITY, evals_table, rewards_table, rl_metrics_table, tracking_table


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_rl_metrics_rows_carry_run_algorithm_lambda_and_seed(tmp_path):
    a = _write(tmp_path / "a.jsonl", "".join(json.dumps({"run": "grpo", "step": s, "kl": 0.1 * s}) + "\n"
                                            for s in (1, 2)))
    b = _write(tmp_path / "b.jsonl", json.dumps({"run": "frpo_lam0.5", "step": 1, "rewards/format/mean": 0.5}) + "\n")
    table = rl_metrics_table("math", [("rl/grpo/seed3", a), ("rl/frpo_lam0.5/seed0", b)])
    assert list(table.columns[:6]) == ["track", "run", "algorithm", "lambda", "rl_seed", "step"]
    assert table["run"].tolist() == ["grpo", "grpo", "frpo_lam0.5"]
    assert table["rl_seed"].tolist() == [3, 3, 0]
    assert math.isnan(table["lambda"][0]) and table["lambda"][2] == 0.5
    assert table["algorithm"].tolist() == ["grpo", "grpo", "frpo"]
    assert math.isnan(table["rewards/format/mean"][0]) and table["kl"][1] == pytest.approx(0.2)


def test_evals_rows_name_the_model_and_keep_every_metric_a_result_records(tmp_path):
    result = {"metric": "pass@1_base", "value": 0.25, "ci95": [0.1, 0.4], "n": 4, "limit": None,
              "n_scored": 4, "pass@1_plus": 0.2, "ci95_plus": [0.0, 0.5],
              "metrics": {"pass@1_base": 0.25, "pass@1_plus": 0.2}}
    path = _write(tmp_path / "r.json", json.dumps(result))
    ft = "ft/frpo_lam2/seed0/code-lora-lr5e-5-ep1/seed2"
    table = evals_table("math", [("ref:mbpp_plus", path), (f"{ft}:mbpp_plus", path)])
    assert len(table) == 4  # two models x (the value, and pass@1_plus beside it)
    base = table[table["model"] == "ref"]
    assert base["stage"].unique().tolist() == ["base"] and base["algorithm"].unique().tolist() == ["base"]
    fine = table[table["model"] == ft].set_index("metric")
    assert fine.loc["pass@1_base", "value"] == 0.25 and fine.loc["pass@1_base", "n"] == 4
    assert fine.loc["pass@1_plus", "value"] == 0.2 and fine.loc["pass@1_plus", "n"] == 4  # the same items
    assert (fine.loc["pass@1_plus", "ci_low"], fine.loc["pass@1_plus", "ci_high"]) == (0.0, 0.5)
    assert fine["setting"].unique().tolist() == ["code-lora-lr5e-5-ep1"] and fine["ft_seed"].unique().tolist() == [2]
    assert fine["lambda"].unique().tolist() == [2.0]


def test_a_bad_label_is_refused_naming_it(tmp_path):
    path = _write(tmp_path / "r.json", json.dumps({"metric": "m", "value": 1.0}))
    with pytest.raises(ValueError, match="'rl/grpo' is not a model target"):
        evals_table("math", [("rl/grpo:math500", path)])


def test_tracking_rows_get_the_identity_of_their_fine_tuning_run(tmp_path):
    a = _write(tmp_path / "a.csv", "step,kl_per_token_sampled\n0,0.0\n2,0.05\n")
    table = tracking_table("safety", [("ft/grpo/seed0/arithmetic-full-lr5e-5-ep1/seed1", a)])
    assert table["step"].tolist() == [0, 2] and set(table["ft_seed"]) == {1}
    assert set(table["setting"]) == {"arithmetic-full-lr5e-5-ep1"} and set(table["stage"]) == {"ft"}
    assert isinstance(table, pd.DataFrame) and list(table.columns[:9]) == [
        "track", "stage", "model", "run", "algorithm", "lambda", "rl_seed", "setting", "ft_seed"]


def test_rewards_rows_are_one_per_sample_of_each_probe_prompt(tmp_path):
    lines = [{"probe": "safety", "prompt_index": 0, "prompt": "a", "rewards": [1.0, 0.0]},
             {"probe": "safety", "prompt_index": 1, "prompt": [{"role": "user", "content": "b"}], "rewards": [0.5]},
             {"probe": "helpfulness", "prompt_index": 0, "prompt": "c", "rewards": [0.25, 0.75, 1]}]
    a = _write(tmp_path / "a.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    empty = _write(tmp_path / "empty.jsonl", "")
    table = rewards_table("safety", [("rl/frpo_lam2/seed1", a), ("rl/grpo/seed0", empty)])
    assert list(table.columns) == IDENTITY + ["probe", "prompt_index", "sample", "reward"]
    assert table[["probe", "prompt_index", "sample", "reward"]].values.tolist() == [
        ["safety", 0, 0, 1.0], ["safety", 0, 1, 0.0], ["safety", 1, 0, 0.5],
        ["helpfulness", 0, 0, 0.25], ["helpfulness", 0, 1, 0.75], ["helpfulness", 0, 2, 1.0]]
    assert set(table["run"]) == {"frpo_lam2"} and set(table["lambda"]) == {2.0} and set(table["rl_seed"]) == {1}
    assert list(rewards_table("safety", [("rl/grpo/seed0", empty)]).columns) == list(table.columns)
