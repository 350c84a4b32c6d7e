"""Run, setting and target identities (frpo.runs): formatting and parsing round trips, refusals, the identity
columns of the tidy tables, and the agreement of the regular expressions (the workflow's wildcard constraints)
with the parsers (the command line and the collectors)."""

from __future__ import annotations

import math
import re

import pytest

from frpo.runs import (
    RUN_RE,
    SETTING_RE,
    TARGET_RE,
    Target,
    canonical_lambda,
    parse_run,
    parse_setting,
    parse_target,
    run_name,
    setting_name,
)


@pytest.mark.parametrize(
    ("name", "algorithm", "lambda_text", "lam"),
    [("grpo", "grpo", None, None), ("frpo_lam0.2", "frpo", "0.2", 0.2), ("frpo_lam10", "frpo", "10", 10.0)],
)
def test_run_names_round_trip(name, algorithm, lambda_text, lam):
    run = parse_run(name)
    assert (run.name, run.algorithm, run.lambda_text, run.lam) == (name, algorithm, lambda_text, lam)
    assert run_name(run.algorithm, run.lambda_text) == name


@pytest.mark.parametrize(
    ("name", "dataset", "method", "lr_text", "epochs"),
    [
        ("arithmetic-full-lr5e-5-ep1", "arithmetic", "full", "5e-5", 1),
        ("code-lora-lr1e-3-ep2", "code", "lora", "1e-3", 2),
        ("alpaca-lora-lr0.0001-ep12", "alpaca", "lora", "0.0001", 12),
    ],
)
def test_setting_names_round_trip(name, dataset, method, lr_text, epochs):
    setting = parse_setting(name)
    assert (setting.dataset, setting.method, setting.lr_text, setting.epochs) == (dataset, method, lr_text, epochs)
    assert setting.learning_rate == float(lr_text)
    assert setting_name(dataset, method, lr_text, epochs) == name


@pytest.mark.parametrize(
    "path",
    ["ref", "rl/grpo/seed0", "rl/frpo_lam0.2/seed3", "ft/frpo_lam10/seed1/code-lora-lr5e-5-ep1/seed2",
     "ft/grpo/seed0/arithmetic-full-lr5e-5-ep1/seed0"],
)
def test_targets_round_trip(path):
    assert parse_target(path).path == path


def test_target_constructors_build_the_paths_the_parser_reads():
    assert Target("base").path == "ref"
    rl = Target.rl("frpo_lam0.2", 3)
    assert rl.path == "rl/frpo_lam0.2/seed3" and parse_target(rl.path) == rl
    ft = Target.ft("grpo", 1, "code-lora-lr5e-5-ep1", 2)
    assert ft.path == "ft/grpo/seed1/code-lora-lr5e-5-ep1/seed2" and parse_target(ft.path) == ft


@pytest.mark.parametrize(
    ("name", "message"),
    [
        # names hold plain decimals
        ("frpo_lam2e-1", r"'frpo_lam2e-1' is not an RL run name \(grpo or frpo_lam<λ> with λ > 0\)"),
        ("frpo_lam-1", r"'frpo_lam-1' is not an RL run name"),
        ("grpo_lam1", r"'grpo_lam1' is not an RL run name"),
        ("frpo", r"'frpo' is not an RL run name"),
    ],
)
def test_bad_run_names_are_refused(name, message):
    with pytest.raises(ValueError, match=message):
        parse_run(name)


def test_run_name_refuses_what_it_could_not_parse_back():
    with pytest.raises(ValueError, match="GRPO has no λ"):
        run_name("grpo", "1")
    with pytest.raises(ValueError, match=r"plain decimal > 0 .* got '2e-1'"):
        run_name("frpo", "2e-1")
    with pytest.raises(ValueError, match=r"plain decimal > 0 .* got '-1'"):
        run_name("frpo", "-1")
    with pytest.raises(ValueError, match=r"plain decimal > 0 .* got '0'"):
        run_name("frpo", "0")
    with pytest.raises(ValueError, match=r"plain decimal > 0 .* got None"):
        run_name("frpo")
    with pytest.raises(ValueError, match="unknown algorithm 'ppo'"):
        run_name("ppo")


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match=r"'code-lora-lr5e-5' is not <dataset>-<full\|lora\|lora_r<N>>-lr<lr>-ep<epochs>"):
        parse_setting("code-lora-lr5e-5")  # no -ep
    with pytest.raises(ValueError, match="is not <dataset>"):
        parse_setting("code-qlora-lr5e-5-ep1")
    with pytest.raises(ValueError, match="is not <dataset>"):
        setting_name("code", "lora", "five", 1)  # formatted, then refused: it would not parse back


def test_bad_targets_are_refused_naming_the_part():
    with pytest.raises(ValueError, match=r"'rl/grpo' is not a model target \(ref, rl/<run>/seed<s>"):
        parse_target("rl/grpo")
    with pytest.raises(ValueError, match=r"'grpo_lam1' is not an RL run name"):
        parse_target("rl/grpo_lam1/seed0")
    with pytest.raises(ValueError, match=r"'code-lora-lr5e-5' is not <dataset>"):
        parse_target("ft/grpo/seed0/code-lora-lr5e-5/seed0")


def test_identity_columns():
    columns = ["stage", "model", "run", "algorithm", "lambda", "rl_seed", "setting", "ft_seed"]
    base = Target("base").identity()
    assert list(base) == columns
    assert {k: base[k] for k in ("stage", "model", "run", "algorithm", "setting")} == {
        "stage": "base", "model": "ref", "run": "", "algorithm": "base", "setting": ""}
    assert all(math.isnan(base[k]) for k in ("lambda", "rl_seed", "ft_seed"))

    grpo = parse_target("rl/grpo/seed4").identity()
    assert (grpo["stage"], grpo["model"], grpo["run"], grpo["algorithm"], grpo["rl_seed"], grpo["setting"]) == (
        "rl", "rl/grpo/seed4", "grpo", "grpo", 4, "")
    assert math.isnan(grpo["lambda"]) and math.isnan(grpo["ft_seed"])

    ft = parse_target("ft/frpo_lam0.2/seed1/code-lora-lr5e-5-ep1/seed2").identity()
    assert ft == {"stage": "ft", "model": "ft/frpo_lam0.2/seed1/code-lora-lr5e-5-ep1/seed2", "run": "frpo_lam0.2",
                  "algorithm": "frpo", "lambda": 0.2, "rl_seed": 1, "setting": "code-lora-lr5e-5-ep1",
                  "ft_seed": 2}


@pytest.mark.parametrize(("value", "text"), [(0.16, "0.16"), (0.2, "0.2"), (2, "2"), (10, "10"), (0.157, "0.16"),
                                             (2.04, "2")])
def test_canonical_lambda(value, text):
    assert canonical_lambda(value) == text
    assert parse_run(run_name("frpo", text)).lambda_text == text  # λ* becomes a run name that parses back


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, math.nan])
def test_canonical_lambda_refuses_what_is_not_a_lambda(value):
    with pytest.raises(ValueError, match="λ must be a finite number > 0"):
        canonical_lambda(value)


def test_canonical_lambda_keeps_two_significant_digits_of_a_small_lambda():
    assert canonical_lambda(1.6e-6) == "0.0000016"
    assert canonical_lambda(1e-7) == "0.0000001"


def _accepts(parse, text) -> bool:
    try:
        parse(text)
    except ValueError:
        return False
    return True


GOOD_RUNS = ["grpo", "frpo_lam0.2", "frpo_lam10", "frpo_lam0.16", "frpo_lam0.00001"]
BAD_RUNS = ["", "GRPO", "grpo_lam1", "frpo", "frpo_lam", "frpo_lam2e-1", "frpo_lam-1", "frpo_lam.5", "frpo_lam0.",
            "frpo_lam+1", "frpo_lam1,5", " grpo", "grpo ", "grpofrpo_lam1", "frpo_lam0.2/seed0", "frpo_lam١"]
GOOD_SETTINGS = ["arithmetic-full-lr5e-5-ep1", "code-lora-lr1E-3-ep2", "alpaca-lora-lr0.0001-ep12"]
BAD_SETTINGS = ["", "code-lora-lr5e-5", "code-qlora-lr5e-5-ep1", "Code-lora-lr5e-5-ep1", "code-lora-5e-5-ep1",
                "code-lora-lr-5e-5-ep1", "code-lora-lr5e-5-ep", "code/x-lora-lr5e-5-ep1", "-lora-lr5e-5-ep1"]
GOOD_TARGETS = ["ref", "rl/grpo/seed0", "rl/frpo_lam0.2/seed12", "ft/grpo/seed0/arithmetic-full-lr5e-5-ep1/seed0",
                "ft/frpo_lam10/seed1/code-lora-lr1e-3-ep2/seed2"]
BAD_TARGETS = ["", "base", "refs", "ref/", "rl", "rl/grpo", "rl/grpo/seed", "rl/grpo/seedx", "rl/grpo/seed-1",
               "rl/grpo/seed0/", "rl//seed0", "rl/grpo_lam1/seed0", "rl/frpo_lam2e-1/seed0", "ft/grpo/seed0",
               "ft/grpo/seed0/code-lora-lr5e-5/seed0", "ft/grpo/seed0/code-qlora-lr5e-5-ep1/seed0",
               "ft/frpo_lam-1/seed0/code-lora-lr5e-5-ep1/seed0", "ft/grpo/seed0/code-lora-lr5e-5-ep1/seed0/x",
               "ft/grpo/seed0/code-lora-lr5e-5-ep1", "rl/grpo/seed0|ref"]


@pytest.mark.parametrize(
    ("pattern", "parse", "good", "bad"),
    [(RUN_RE, parse_run, GOOD_RUNS, BAD_RUNS), (SETTING_RE, parse_setting, GOOD_SETTINGS, BAD_SETTINGS),
     (TARGET_RE, parse_target, GOOD_TARGETS, BAD_TARGETS)],
    ids=["run", "setting", "target"],
)
def test_the_patterns_accept_exactly_what_the_parsers_accept(pattern, parse, good, bad):
    # snakemake matches a wildcard constraint against the whole wildcard value, hence fullmatch
    assert all(_accepts(parse, name) for name in good)
    assert not any(_accepts(parse, name) for name in bad)
    disagree = [name for name in good + bad if bool(re.fullmatch(pattern, name)) != _accepts(parse, name)]
    assert not disagree


@pytest.mark.parametrize(("pattern", "parse", "name"),
                         [(RUN_RE, parse_run, "grpo\n"), (SETTING_RE, parse_setting, "code-lora-lr5e-5-ep1\n"),
                          (TARGET_RE, parse_target, "ref\n")], ids=["run", "setting", "target"])
def test_the_parsers_refuse_a_trailing_newline_as_the_patterns_do(pattern, parse, name):
    assert re.fullmatch(pattern, name) is None
    assert not _accepts(parse, name)
