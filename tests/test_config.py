"""Workflow config: schema and semantic validation (errors name the key), and the per-stage specs."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from frpo.config import (
    ConfigError,
    finetune_settings,
    finetune_spec,
    rl_runs,
    rl_spec,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


@pytest.mark.parametrize("name", ["config.yaml", "smoke.yaml"])
def test_shipped_configs_are_valid(name):
    validate_config(load(name), SCHEMA)


def _set(config, dotted, value):
    *parents, leaf = dotted.split(".")
    node = config
    for p in parents:
        node = node[p]
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value


_DELETE = object()


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rl.num_generations", 1, r"rl\.num_generations: 1 is less than the minimum of 2"),
        ("rl.steps", "ten", r"rl\.steps: 'ten' is not of type 'integer'"),
        ("rl.lambdas", ["0"], r"rl\.lambdas\.0: λ must be > 0"),
        ("rl.lambdas", ["-0.5"], r"rl\.lambdas\.0: '-0.5' does not match"),
        ("rl.lambdas", [0.2], r"rl\.lambdas\.0: 0\.2 is not of type 'string'"),
        ("rl.lambdas", ["2e-1"], r"rl\.lambdas\.0: '2e-1' does not match"),  # run names hold plain decimals
        ("rl.lambda_star.rho", 0, r"rl\.lambda_star\.rho: 0 is less than or equal to the minimum of 0"),
        ("rl.colour", "blue", r"rl: Additional properties are not allowed \('colour' was unexpected\)"),
        ("model.source", "ollama", r"model\.source: 'ollama' is not one of"),
        ("finetune.learning_rates", ["0"], r"finetune\.learning_rates\.0: must be > 0"),
        ("eval.benchmarks", ["mmlu_pro"], r"eval\.benchmarks\.0: 'mmlu_pro' is not one of"),
        ("name", _DELETE, r"\(top level\): 'name' is a required property"),
    ],
)
def test_bad_values_fail_with_the_key_and_the_reason(key, value, message):
    config = load("config.yaml")
    _set(config, key, value)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


def test_unknown_key_error_lists_the_known_keys():
    config = load("config.yaml")
    config["rl"]["lamdbas"] = ["0.5"]
    with pytest.raises(ConfigError, match="known keys: .*lambdas"):
        validate_config(config, SCHEMA)


def test_a_missing_local_model_directory_is_named(tmp_path):
    config = load("config.yaml")
    config["model"] = {"source": "local", "local": {"path": str(tmp_path / "nowhere")}}
    with pytest.raises(ConfigError, match=r"model\.local\.path: .*nowhere.* is not a directory"):
        validate_config(config, SCHEMA)


def test_an_api_judge_without_its_key_fails_at_start(monkeypatch):
    config = load("config.yaml")
    config["judges"]["safety"] = {"name": "safety_paper"}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"judges\.safety: .*OPENAI_API_KEY"):
        validate_config(config, SCHEMA)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    validate_config(config, SCHEMA)


def test_judged_benchmarks_need_their_data_and_their_default_judges_key(monkeypatch, tmp_path):
    config = load("config.yaml")
    config["eval"]["benchmarks"] = ["harmbench"]
    with pytest.raises(ConfigError, match=r"eval\.harmbench\.behaviors: missing"):
        validate_config(config, SCHEMA)
    config["eval"]["harmbench"] = {"behaviors": str(tmp_path / "nowhere.csv"), "judge": {"name": "minilm_refusal"}}
    with pytest.raises(ConfigError, match=r"eval\.harmbench\.behaviors: .*nowhere\.csv.* is not a file"):
        validate_config(config, SCHEMA)
    csv = tmp_path / "behaviors.csv"
    csv.write_text("Behavior,FunctionalCategory\nx,standard\n")
    config["eval"]["harmbench"]["behaviors"] = str(csv)
    validate_config(config, SCHEMA)
    # with no judge named, the default (the paper's GPT-4o labelling) needs its key now, not after training
    del config["eval"]["harmbench"]["judge"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"eval\.harmbench\.judge: judge 'gpt4o_harmbench' .*OPENAI_API_KEY"):
        validate_config(config, SCHEMA)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    validate_config(config, SCHEMA)

    config["eval"]["benchmarks"] = ["strongreject"]
    with pytest.raises(ConfigError, match=r"eval\.strongreject\.datasets\.small: missing"):
        validate_config(config, SCHEMA)
    config["eval"]["strongreject"] = {"dataset": "full", "datasets": {"small": str(csv)}}
    with pytest.raises(ConfigError, match=r"eval\.strongreject\.datasets\.full: missing"):
        validate_config(config, SCHEMA)
    config["eval"]["strongreject"]["datasets"]["full"] = str(csv)
    validate_config(config, SCHEMA)
    config["eval"]["strongreject"] = {"dataset": "mini", "datasets": {"mini": str(tmp_path / "none.csv")}}
    with pytest.raises(ConfigError, match=r"eval\.strongreject\.datasets\.mini: .*none\.csv.* is not a file"):
        validate_config(config, SCHEMA)
    config["eval"]["strongreject"] = {"dataset": str(tmp_path / "elsewhere.csv")}
    with pytest.raises(ConfigError, match=r"eval\.strongreject\.dataset: .*elsewhere\.csv.* is not a file"):
        validate_config(config, SCHEMA)


def test_lambda_star_needs_a_grpo_run():
    config = load("config.yaml")
    config["rl"]["algorithms"] = ["frpo"]
    with pytest.raises(ConfigError, match=r"rl\.lambda_star: .*grpo"):
        validate_config(config, SCHEMA)


def test_runs_and_settings_are_canonical_names():
    config = load("config.yaml")
    assert rl_runs(config) == ["grpo", "frpo_lam0.2"]
    assert rl_runs(config, lambda_star="0.16") == ["grpo", "frpo_lam0.2", "frpo_lam0.16"]
    assert rl_runs(config, lambda_star="0.2") == ["grpo", "frpo_lam0.2"]  # λ* equal to a listed λ: one run
    config["finetune"].update(datasets=["arithmetic", "alpaca"], methods=["lora"], learning_rates=["1e-6", "6e-5"],
                              epochs=[1, 2])
    settings = finetune_settings(config)
    assert len(settings) == 8 and "alpaca-lora-lr6e-5-ep2" in settings


def test_a_new_lambda_does_not_change_the_other_runs_specs():
    config = load("config.yaml")
    before = {run: rl_spec(config, run, "clf.pt") for run in ("grpo", "frpo_lam0.2")}
    changed = copy.deepcopy(config)
    changed["rl"]["lambdas"] = ["0.2", "0.5"]
    after = {run: rl_spec(changed, run, "clf.pt") for run in ("grpo", "frpo_lam0.2")}
    assert before == after  # so snakemake reruns only the new λ's jobs
    changed["rl"]["beta"] = 0.05
    assert rl_spec(changed, "grpo", "clf.pt") != before["grpo"]


def test_finetune_spec_parses_the_setting_name():
    config = load("config.yaml")
    spec = finetune_spec(config, "alpaca-lora-lr6e-5-ep2", "clf.pt")
    assert spec["train"]["method"] == "lora" and spec["train"]["learning_rate"] == 6e-5
    assert spec["train"]["epochs"] == 2 and spec["train"]["lora"]["r"] == 16
    assert spec["dataset"] == {"path": "builtin:alpaca_like", "format": "alpaca", "split": "train",
                               "max_examples": config["finetune"]["max_examples"]}
    assert spec["judges"]["safety"]["options"]["classifier_path"] == "clf.pt"
    with pytest.raises(ConfigError, match="not <dataset>"):
        finetune_spec(config, "alpaca-qlora-lr1-ep1", None)


def test_a_missing_data_file_is_named(tmp_path):
    config = load("config.yaml")
    config["data"]["arithmetic"] = str(tmp_path / "gsm.jsonl")
    with pytest.raises(ConfigError, match=r"data\.arithmetic: .*gsm\.jsonl"):
        validate_config(config, SCHEMA)


def test_a_corrupt_data_file_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi", "task": "normal", "split": "train"}\n{"prompt": "oops", "task": \n')
    config = load("config.yaml")
    config["data"]["safety_prompts"] = str(bad)
    with pytest.raises(ConfigError, match=r"data\.safety_prompts: .*prompts\.jsonl:2: invalid JSON"):
        validate_config(config, SCHEMA)
    bad.write_text('{"prompt": 3, "task": "normal", "split": "train"}\n')
    with pytest.raises(ConfigError, match=r"prompts\.jsonl:1: key 'prompt' must be str, got int"):
        validate_config(config, SCHEMA)


def test_beta_per_run_reaches_each_run_spec_and_only_that_one():
    config = load("config.yaml")
    config["rl"]["lambdas"] = ["5", "0.2"]
    config["rl"]["beta"] = {"grpo": 0.1, "5": 2.0e-4, "0.2": 5.0e-3, "default": 1.0e-3}
    validate_config(config, SCHEMA)
    assert rl_spec(config, "grpo", None)["rl"]["beta"] == 0.1
    assert rl_spec(config, "frpo_lam5", None)["rl"]["beta"] == 2.0e-4
    assert rl_spec(config, "frpo_lam0.2", None)["rl"]["beta"] == 5.0e-3
    assert rl_spec(config, "frpo_lam0.25", None)["rl"]["beta"] == 1.0e-3  # λ*: the default
    before = rl_spec(config, "frpo_lam0.2", None)
    config["rl"]["beta"]["5"] = 3.0e-4  # another run's β: this run's spec (and so its job) is unchanged
    assert rl_spec(config, "frpo_lam0.2", None) == before
    config["rl"]["beta"] = 0.02  # a plain number still means every run
    assert {rl_spec(config, r, None)["rl"]["beta"] for r in ("grpo", "frpo_lam5")} == {0.02}


@pytest.mark.parametrize(
    ("beta", "message"),
    [
        ({"grpo": 0.1}, r"rl\.beta: no β for 0\.2"),
        ({"grpo": 0.1, "0.2": 0.005, "0.5": 0.002}, r"rl\.beta\.0\.5: λ=0\.5 is not in rl\.lambdas"),
        ({"grpo": 0.1, "frpo": 0.005}, r"rl\.beta\.frpo: a β map's keys are grpo, default or a λ"),
        ({"grpo": 0.1, "0.2": -1.0}, r"rl\.beta\.0\.2: -1\.0 is less than the minimum of 0"),
        ({"grpo": 0.1, "0.2": 0.005}, r"rl\.beta: FRPO at λ\* needs rl\.beta\.default"),
        (-0.5, r"rl\.beta: -0\.5 is less than the minimum of 0"),
    ],
)
def test_a_beta_map_must_cover_every_run(beta, message):
    config = load("config.yaml")
    config["rl"]["beta"] = beta
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


def test_rl_length_is_steps_or_epochs_not_both():
    config = load("config.yaml")
    config["rl"]["epochs"] = 2
    with pytest.raises(ConfigError, match=r"rl: give exactly one of rl\.steps .* and rl\.epochs"):
        validate_config(config, SCHEMA)
    del config["rl"]["steps"]
    validate_config(config, SCHEMA)


def test_the_old_lambda_scale_names_are_refused():
    config = load("config.yaml")
    config["rl"]["lambda_scale"] = "paper"  # ambiguous: the paper's text and its figures use different scalings
    with pytest.raises(ConfigError, match=r"rl\.lambda_scale: 'paper' is not one of \['equation_4_1', 'max_lambda_1'\]"):
        validate_config(config, SCHEMA)


def test_precision_reaches_every_training_stage_and_only_when_set():
    from frpo.config import warmup_spec

    config = load("config.yaml")
    specs = lambda c: [warmup_spec(c), rl_spec(c, "grpo", None),  # noqa: E731
                       finetune_spec(c, finetune_settings(c)[0], None)]
    assert all("precision" not in s for s in specs(config))  # the device's default (frpo.training.precision)
    config["precision"] = "bf16-mixed"
    validate_config(config, SCHEMA)
    assert [s["precision"] for s in specs(config)] == ["bf16-mixed"] * 3
    config["precision"] = "bf16"  # pure bf16 weights: refused (most AdamW updates vanish at lr 1e-6)
    with pytest.raises(ConfigError, match=r"precision: 'bf16' is not one of \['fp32', 'bf16-mixed'\]"):
        validate_config(config, SCHEMA)
