"""The `frpo` command line: the quick-start demo and the λ helper, run as a user would run them."""

from __future__ import annotations

import json

import pytest

from frpo.cli import main


@pytest.mark.slow
def test_demo_runs_grpo_and_frpo_and_writes_metrics(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--lambdas", "0.2", "--set", "trainer.max_steps=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"grpo", "frpo_lam0.2"}
    assert summary["frpo_lam0.2"]["frpo_lambda"] == 0.2 and summary["grpo"]["objective"] == "grpo"
    for run in summary:
        rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        assert len(rows) == 2 and all(0.0 <= r["reward"] <= 1.0 for r in rows)
        assert (out / run / "final_model" / "config.json").is_file()
    assert "frpo/robust_reward" in json.loads((out / "frpo_lam0.2" / "metrics.jsonl").read_text().splitlines()[0])
    assert "reward (last step)" in capsys.readouterr().out


def test_lambda_star_from_std_and_from_rewards(tmp_path, capsys):
    rewards = tmp_path / "rewards.jsonl"
    rewards.write_text("\n".join(json.dumps([0.4, 0.5, 0.6, 0.5]) for _ in range(3)) + "\n")
    assert main(["lambda-star", "--std", "0.07", "--rho", "0.02", "--rewards", str(rewards)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lambda_star"] == pytest.approx(0.35)
    assert 0.0 < result["optimal_lambda"] < 1.0


def test_bad_override_and_missing_config_are_named(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("data: {name: toy}\n")
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        main(["train", "--config", str(good), "--out", str(tmp_path), "--set", "oops"])
    with pytest.raises(SystemExit, match="config file not found"):
        main(["train", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(SystemExit, match="bad.yaml: invalid YAML"):
        main(["train", "--config", str(bad), "--out", str(tmp_path)])
