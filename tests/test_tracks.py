"""The tracks (frpo.tracks): what each names, the math track's data preparation (contamination filter, held-out
split, reference answers), prompts, rewards and probe, on the built-in data and offline doubles of the hub."""

from __future__ import annotations

import json

import pytest

from frpo.data import builtin, read_jsonl
from frpo.tracks import TRACKS, get_track

REQUIRED = ("DATA", "RL_DATA", "FINETUNE", "PROBES", "FIGURES", "rl_dataset", "reward_funcs", "probes", "prepare",
            "prepared", "check")


@pytest.mark.parametrize("name", sorted(TRACKS))
def test_every_track_names_what_the_pipeline_asks_of_it(name):
    track = get_track(name)
    for attr in REQUIRED:
        assert hasattr(track, attr), (name, attr)
    assert track.RL_DATA in track.DATA
    assert set(track.FINETUNE) <= set(track.DATA)
    for figure, spec in track.FIGURES.items():
        assert spec["kind"] in ("figure", "table") and spec["caption"], figure
        assert set(spec["tables"]) <= {"rl_metrics", "evals", "tracking", "rewards"}, figure
        assert spec.get("scope", "experiment") in ("experiment", "track"), figure
        module, _, function = spec["draw"].partition(":")
        assert callable(getattr(__import__(module, fromlist=[function]), function)), figure


def test_an_unknown_track_is_named():
    with pytest.raises(ValueError, match="unknown track 'chess'.*math, safety"):
        get_track("chess")


def _math_spec(tmp_path, **data):
    math500 = tmp_path / "math500.jsonl"
    problems = read_jsonl(builtin("math_problems"))
    # two of the training problems are MATH500 problems, written with other spacing and case
    banned = [{"problem": "  " + problems[0]["problem"].upper().replace(" ", "  ")}, {"problem": problems[5]["problem"]}]
    math500.write_text("".join(json.dumps(r) + "\n" for r in banned))
    return {"track": "math", "data": {"math_problems": "builtin:math_problems", "math500": str(math500),
                                      "code": "builtin:code_instruct", **data}}


def test_math_problems_lose_every_math500_problem_and_keep_their_split(tmp_path):
    spec = _math_spec(tmp_path)
    rows, info = get_track("math").prepare("math_problems", spec)
    source = read_jsonl(builtin("math_problems"))
    assert info["dropped_as_math500"] == 2 and len(rows) == len(source) - 2
    kept = {r["problem"] for r in rows}
    assert source[0]["problem"] not in kept and source[5]["problem"] not in kept
    assert {r["split"] for r in rows} == {"train", "eval"}
    assert info["train"] + info["eval"] == len(rows)
    assert all(r["answer"] for r in rows)


def test_hub_problems_without_a_split_hold_out_100_with_seed_42(tmp_path, monkeypatch):
    from frpo.data import sources

    fake = [{"problem": f"What is {i} + {i}?", "solution": f"It is $\\boxed{{{2 * i}}}$.", "level": 4}
            for i in range(300)]
    calls = []
    monkeypatch.setattr(sources, "math_train_rows", lambda: calls.append("train") or fake)
    monkeypatch.setattr(sources, "math500_rows", lambda: calls.append("math500") or [{"problem": "What is 7 + 7?"}])
    spec = _math_spec(tmp_path, math_problems="hub:math_train", math500="hub:math500")
    rows, info = get_track("math").prepare("math_problems", spec)
    again, _ = get_track("math").prepare("math_problems", spec)
    assert calls == ["train", "math500", "train", "math500"]
    assert info == {"rows_in": 300, "dropped_as_math500": 1, "math500_problems": 1, "train": 199, "eval": 100}
    assert [r["split"] for r in rows] == [r["split"] for r in again]  # seeded: the same held-out problems
    assert {r["problem"]: r["answer"] for r in rows}["What is 3 + 3?"] == "6"


def test_an_unknown_hub_source_is_named(tmp_path):
    spec = _math_spec(tmp_path, math_problems="hub:competition_math")
    with pytest.raises(ValueError, match="data.math_problems: unknown hub source 'hub:competition_math'"):
        get_track("math").prepare("math_problems", spec)


def test_code_keeps_rows_whose_tests_all_pass(tmp_path):
    rows, info = get_track("math").prepare("code", _math_spec(tmp_path))
    source = read_jsonl(builtin("code_instruct"))
    assert info["rows_in"] == len(source)
    assert len(rows) == sum(r["average_test_score"] == "1" for r in source) == info["kept_average_test_score_1"]
    assert all(set(r) == {"input", "output", "split"} for r in rows)


def test_math_rl_prompts_carry_the_qwen_math_system_prompt_and_the_answer(tmp_path):
    from frpo.math_grading import QWEN_MATH_SYSTEM

    rows, _ = get_track("math").prepare("math_problems", _math_spec(tmp_path))
    path = tmp_path / "prepared.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = get_track("math").rl_dataset({"data": {"math_problems": str(path)}}, "train")
    first = ds[0]
    assert first["prompt"][0] == {"role": "system", "content": QWEN_MATH_SYSTEM}
    assert first["prompt"][1]["role"] == "user" and first["answer"]
    assert len(ds) == sum(r["split"] == "train" for r in rows)


def test_math_rewards_are_format_and_correct_weighted_0_2_and_0_8(tmp_path):
    funcs, weights = get_track("math").reward_funcs({"reward": {"timeout_s": 5.0, "workers": 1}})
    assert [f.__name__ for f in funcs] == ["format", "correct"] and weights == [0.2, 0.8]
    completions = ["so $\\boxed{\\frac12}$", "$\\boxed{1}$ or $\\boxed{0.5}$", "no box: 0.5"]
    answer = ["0.5"] * 3
    scores = [f(prompts=["p"] * 3, completions=completions, answer=answer) for f in funcs]
    total = [0.2 * a + 0.8 * b for a, b in zip(*scores)]
    assert total == pytest.approx([1.0, 0.8, 0.0])


def test_the_math_probe_scores_held_out_problems_with_the_verifier(tmp_path):
    rows, _ = get_track("math").prepare("math_problems", _math_spec(tmp_path))
    path = tmp_path / "prepared.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {"data": {"math_problems": str(path)}, "track_forgetting": {"n_prompts": {"math": 4}}}
    (probe,) = get_track("math").probes(spec)
    assert probe.name == "math" and len(probe.prompts) == 4
    held_out = {r["problem"]: r for r in rows if r["split"] == "eval"}
    assert set(probe.prompts) <= set(held_out)
    right = [f"\\boxed{{{held_out[p]['answer']}}}" for p in probe.prompts]
    assert probe.judge.score(probe.prompts, right) == [1.0] * 4
    assert probe.judge.score(probe.prompts, ["\\boxed{-12345}"] * 4) == [0.0] * 4


def test_code_rows_become_an_empty_system_turn_a_user_turn_and_the_solution():
    from frpo.sft import sft_rows

    rows = sft_rows({"path": "builtin:code_instruct", "format": "code"})
    first = read_jsonl(builtin("code_instruct"))[0]
    assert rows[0]["prompt"] == [{"role": "system", "content": ""}, {"role": "user", "content": first["input"]}]
    assert rows[0]["completion"] == [{"role": "assistant", "content": first["output"]}]


def test_an_unknown_hub_source_fails_at_dag_start_naming_the_key():
    from frpo.config import ConfigError, validate_config
    from configs import ROOT, load_config

    config = load_config("paper.yaml", tracks=["math"])
    config["tracks"]["math"]["data"]["math_problems"] = "hub:competition_math"
    with pytest.raises(ConfigError, match=r"tracks\.math\.data\.math_problems: unknown hub source "
                                          r"'hub:competition_math' \(known: hub:math_train"):
        validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")


def test_preparing_a_key_reads_only_its_own_sources():
    """Editing data.code must not re-prepare math_problems (and so retrain every math RL run)."""
    from frpo.config import data_spec, view
    from configs import load_config

    v = view(load_config("paper.yaml"), "math")
    assert data_spec(v, "math_problems")["data"] == {"math_problems": "hub:math_train", "math500": "hub:math500"}
    assert data_spec(v, "code")["data"] == {"code": "hub:opencodeinstruct"}


def test_fitting_the_demo_classifier_needs_labelled_data_in_the_track():
    from frpo.config import ConfigError, validate_config
    from configs import ROOT, load_config

    config = load_config("smoke.yaml")
    config["tracks"]["math"]["judges"] = {"fit_refusal_judge": True}
    with pytest.raises(ConfigError, match=r"tracks\.math\.judges\.fit_refusal_judge: no data\.judge_labelled to "
                                          "fit"):
        validate_config(config, ROOT / "workflow" / "schemas" / "config.schema.yaml")
