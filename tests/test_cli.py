"""The `frpo` command line, run as the workflow rules run it."""

from __future__ import annotations

import json

import pytest

from frpo.cli import build_parser, main


def test_every_stage_has_a_subcommand():
    parser = build_parser()
    commands = set(parser._subparsers._group_actions[0].choices)
    assert {"prepare-model", "prepare-data", "fit-judge", "sft", "rl", "lambda-select", "merge", "evaluate",
            "collect", "figure", "lambda-star"} <= commands
    assert "collect-tracking" not in commands  # replaced by `collect tracking --track`
    args = parser.parse_args(["figure", "fig14", "--track", "math", "--out", "fig14.pdf", "rl_metrics=m.csv"])
    assert (args.name, args.track, args.tables) == ("fig14", "math", ["rl_metrics=m.csv"])
    args = parser.parse_args(["collect", "evals", "--track", "math", "--out", "evals.csv", "ref=ref.json"])
    assert (args.kind, args.track, args.inputs) == ("evals", "math", ["ref=ref.json"])
    with pytest.raises(SystemExit):  # a figure belongs to a track: --track is required
        parser.parse_args(["figure", "fig14", "--out", "fig14.pdf", "rl_metrics=m.csv"])


def test_lambda_star_from_std_and_from_rewards(tmp_path, capsys):
    rewards = tmp_path / "rewards.jsonl"
    rewards.write_text("\n".join(json.dumps([0.4, 0.5, 0.6, 0.5]) for _ in range(3)) + "\n")
    assert main(["lambda-star", "--std", "0.07", "--rho", "0.02", "--rewards", str(rewards)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["lambda_star"] == pytest.approx(0.35)
    assert 0.0 < result["optimal_lambda"] < 1.0


def test_the_floor_command_reads_rewards_per_prompt_and_names_a_bad_line(tmp_path, capsys):
    rewards = tmp_path / "rewards.jsonl"
    rewards.write_text("\n".join(json.dumps([1.0] * 7 + [0.0] * 3) for _ in range(4)) + "\n")
    assert main(["floor", "--rewards", str(rewards), "--rho", "0.01", "0.1", "--no-jackknife"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompts"] == 4 and [r["rho"] for r in out["floor"]] == [0.01, 0.1]
    first, second = out["floor"]
    assert 0.0 < second["floor"] < first["floor"] < 0.7 == pytest.approx(first["mean_reward"])
    assert main(["floor", "--rewards", str(rewards), "--rho", "0.1", "--n-boot", "10"]) == 0
    banded = json.loads(capsys.readouterr().out)["floor"][0]
    assert banded["lo"] <= banded["floor"] <= banded["hi"]
    rewards.write_text(json.dumps([0.5, 0.2]) + "\n" + json.dumps({"r": 1}) + "\n")
    with pytest.raises(SystemExit, match=r"rewards\.jsonl:2: expected a non-empty list of numbers"):
        main(["floor", "--rewards", str(rewards), "--rho", "0.1"])


def test_lambda_select_reads_the_final_within_group_std(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    stds = [0.3, 0.2, 0.1, 0.1, 0.1, 0.1, 0.1]
    metrics.write_text("".join(json.dumps({"step": i + 1, "frpo/reward_std_within_group": s}) + "\n"
                               for i, s in enumerate(stds)))
    out = tmp_path / "lambda_star.json"
    assert main(["lambda-select", "--metrics", str(metrics), "--rho", "0.02", "--last-k", "5", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["reward_std"] == pytest.approx(0.1) and result["lambda_star"] == pytest.approx(0.5)
    assert result["lambda"] == "0.5"
    zero = tmp_path / "zero.jsonl"
    zero.write_text(json.dumps({"step": 1, "frpo/reward_std_within_group": 0.0}) + "\n")
    with pytest.raises(ValueError, match="std is 0"):
        main(["lambda-select", "--metrics", str(zero), "--rho", "0.1", "--out", str(out)])


def test_a_malformed_spec_is_reported(tmp_path):
    with pytest.raises(SystemExit, match="--spec is not valid JSON"):
        main(["rl", "--spec", "{oops", "--model", "m", "--out", str(tmp_path), "--ckpt", str(tmp_path)])
    with pytest.raises(SystemExit, match="must be a JSON object"):
        main(["rl", "--spec", "[1]", "--model", "m", "--out", str(tmp_path), "--ckpt", str(tmp_path)])
