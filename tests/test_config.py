"""Workflow config: schema and semantic validation of the track-shaped config (errors name the key
``tracks.<track>.<key>`` and the reason), the track views, and the per-stage specs built from them."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from frpo.config import (
    ConfigError,
    data_path,
    data_spec,
    eval_spec,
    finetune_settings,
    finetune_spec,
    ft_seeds,
    prepare_spec,
    prepared_data,
    rl_runs,
    rl_seeds,
    rl_spec,
    track_names,
    validate_config,
    view,
    warmup_spec,
)

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "workflow" / "schemas" / "config.schema.yaml"


@pytest.fixture(autouse=True)
def _in_the_repository(monkeypatch):
    # the shipped configs name repository-relative files (smoke.yaml's math track reads tests/fixtures)
    monkeypatch.chdir(ROOT)


def load(name: str) -> dict:
    return yaml.safe_load((ROOT / "config" / name).read_text())


def safety() -> dict:
    """The demo config: one track, safety."""
    return load("config.yaml")


def paper() -> dict:
    """The paper config's math track (its data are hub sources, so validating it reads no file; the safety
    experiments read local files: tests/test_paper_safety.py)."""
    config = load("paper.yaml")
    config["tracks"] = {"math": config["tracks"]["math"]}
    return config


@pytest.mark.parametrize(
    ("name", "tracks"), [("config.yaml", ["safety"]), ("smoke.yaml", ["safety", "math"]), ("study.yaml", ["study"]),
                         ("paper.yaml", ["mistral", "qwen7b", "qwen3b", "qwen14b", "qwen32b", "math"])]
)
def test_shipped_configs_are_valid(name, tracks, tmp_path, monkeypatch):
    from configs import PAPER_ENV, paper_files

    if name == "paper.yaml":  # its safety experiments read local files (docs/paper-data.md), relative to the
        paper_files(tmp_path)  # directory snakemake runs in; and their API judges' key is checked
        monkeypatch.chdir(tmp_path)
        for key, value in PAPER_ENV.items():
            monkeypatch.setenv(key, value)
    config = load(name)
    assert validate_config(config, SCHEMA) is config
    assert track_names(config) == tracks


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
        ("rl.num_generations", 1, r"tracks\.safety\.rl\.num_generations: 1 is less than the minimum of 2"),
        ("rl.steps", "ten", r"tracks\.safety\.rl\.steps: 'ten' is not of type 'integer'"),
        ("rl.lambdas", ["0"], r"tracks\.safety\.rl\.lambdas\.0: λ must be > 0"),
        ("rl.lambdas", ["-0.5"], r"tracks\.safety\.rl\.lambdas\.0: '-0.5' does not match"),
        ("rl.lambdas", [0.2], r"tracks\.safety\.rl\.lambdas\.0: 0\.2 is not of type 'string'"),
        ("rl.lambdas", ["2e-1"], r"tracks\.safety\.rl\.lambdas\.0: '2e-1' does not match"),  # names hold decimals
        ("rl.lambda_star.rho", 0, r"tracks\.safety\.rl\.lambda_star\.rho: 0 is less than or equal to the minimum"),
        ("rl.colour", "blue",
         r"tracks\.safety\.rl: Additional properties are not allowed \('colour' was unexpected\)"),
        ("model.source", "ollama", r"tracks\.safety\.model\.source: 'ollama' is not one of"),
        ("finetune.learning_rates", ["0"], r"tracks\.safety\.finetune\.learning_rates\.0: must be > 0"),
        ("eval.benchmarks", ["mmlu_pro"],
         r"tracks\.safety\.eval\.benchmarks\.0: 'mmlu_pro' is not a benchmark \(known: .*harmbench"),
        ("finetune.datasets", ["arithmetic", "code"],
         r"tracks\.safety\.finetune\.datasets\.1: 'code' is not a fine-tuning set of track 'safety' "
         r"\(known: arithmetic, alpaca, gsm8k, instructions\)"),
        ("finetune.epochs", [0], r"tracks\.safety\.finetune\.epochs\.0: 0 is less than the minimum of 1"),
    ],
)
def test_bad_values_fail_with_the_key_and_the_reason(key, value, message):
    config = safety()
    _set(config["tracks"]["safety"], key, value)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("name", _DELETE, r"\(top level\): 'name' is a required property"),
        ("tracks", _DELETE, r"\(top level\): 'tracks' is a required property"),
        ("tracks", {}, r"tracks: \{\} should be non-empty"),
        # the old flat shape: its sections are refused at the top level, not silently ignored
        ("rl", {"steps": 1}, r"\(top level\): Additional properties are not allowed \('rl' was unexpected\)"),
        ("precision", "bf16", r"precision: 'bf16' is not one of \['fp32', 'bf16-mixed'\]"),
    ],
)
def test_bad_top_level_values_fail_with_the_key_and_the_reason(key, value, message):
    config = safety()
    _set(config, key, value)
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


def test_an_unknown_track_is_refused_naming_it():
    config = safety()
    config["tracks"]["vision"] = copy.deepcopy(config["tracks"]["safety"])
    with pytest.raises(ConfigError, match=r"tracks\.vision: unknown track 'vision' \(known: math, safety; .*kind"):
        validate_config(config, SCHEMA)
    config["tracks"]["vision"]["kind"] = "video"
    with pytest.raises(ConfigError, match=r"tracks\.vision\.kind: unknown track 'video' \(known: math, safety"):
        validate_config(config, SCHEMA)


def test_unknown_key_error_lists_the_known_keys():
    config = safety()
    config["tracks"]["safety"]["rl"]["lamdbas"] = ["0.5"]
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.rl: .*'lamdbas' was unexpected.*known keys: .*lambdas"):
        validate_config(config, SCHEMA)


def test_a_data_key_missing_or_unknown_for_the_track_is_named():
    config = safety()
    del config["tracks"]["safety"]["data"]["safety_prompts"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.data\.safety_prompts: missing \(track 'safety' needs it\)"):
        validate_config(config, SCHEMA)
    config = safety()  # an optional key (a fine-tuning set) may be left out, unless a sweep trains on it
    del config["tracks"]["safety"]["data"]["alpaca"]
    validate_config(config, SCHEMA)
    config["tracks"]["safety"]["finetune"]["datasets"] = ["arithmetic", "alpaca"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.finetune\.datasets\.1: 'alpaca' has no source under "
                                          r"data\.alpaca"):
        validate_config(config, SCHEMA)
    config = safety()
    config["tracks"]["safety"]["data"]["code"] = "builtin:code_instruct"  # a key of the math track, not this one
    with pytest.raises(ConfigError, match=r"tracks\.safety\.data\.code: not a data key of track 'safety' "
                                          r"\(known: safety_prompts, .*alpaca, gsm8k, instructions\)"):
        validate_config(config, SCHEMA)
    config = paper()
    del config["tracks"]["math"]["data"]["math500"]  # it filters MATH500 out of the RL data: never optional
    with pytest.raises(ConfigError, match=r"tracks\.math\.data\.math500: missing \(track 'math' needs it\)"):
        validate_config(config, SCHEMA)


def test_hub_sources_only_for_keys_that_allow_them():
    config = safety()
    config["tracks"]["safety"]["data"]["arithmetic"] = "hub:gsm8k"
    with pytest.raises(ConfigError, match=r"tracks\.safety\.data\.arithmetic: a hub source is not supported"):
        validate_config(config, SCHEMA)
    config = paper()
    assert all(str(v).startswith("hub:") for v in config["tracks"]["math"]["data"].values())
    validate_config(config, SCHEMA)


def test_a_missing_data_file_is_named(tmp_path):
    config = safety()
    config["tracks"]["safety"]["data"]["arithmetic"] = str(tmp_path / "gsm.jsonl")
    with pytest.raises(ConfigError, match=r"tracks\.safety\.data\.arithmetic: .*gsm\.jsonl"):
        validate_config(config, SCHEMA)


def test_a_corrupt_data_file_names_the_file_and_the_line(tmp_path):
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "hi", "task": "normal", "split": "train"}\n{"prompt": "oops", "task": \n')
    config = safety()
    config["tracks"]["safety"]["data"]["safety_prompts"] = str(bad)
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.data\.safety_prompts: .*prompts\.jsonl:2: invalid JSON"):
        validate_config(config, SCHEMA)
    bad.write_text('{"prompt": 3, "task": "normal", "split": "train"}\n')
    with pytest.raises(ConfigError, match=r"prompts\.jsonl:1: key 'prompt' must be str, got int"):
        validate_config(config, SCHEMA)


def test_a_local_file_of_a_prepared_key_is_checked_too(tmp_path):
    bad = tmp_path / "problems.jsonl"
    bad.write_text('{"problem": "1+1"}\n')  # no solution
    config = load("smoke.yaml")
    config["tracks"]["math"]["data"]["math_problems"] = str(bad)
    with pytest.raises(ConfigError, match=r"tracks\.math\.data\.math_problems: .*problems\.jsonl:1: .*solution"):
        validate_config(config, SCHEMA)


def test_a_missing_local_model_directory_is_named(tmp_path):
    config = safety()
    config["tracks"]["safety"]["model"] = {"source": "local", "local": {"path": str(tmp_path / "nowhere")}}
    with pytest.raises(ConfigError, match=r"tracks\.safety\.model\.local\.path: .*nowhere.* is not a directory"):
        validate_config(config, SCHEMA)


def test_the_safety_track_needs_its_judges():
    config = safety()
    del config["tracks"]["safety"]["judges"]["helpfulness"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.judges\.helpfulness: missing"):
        validate_config(config, SCHEMA)


def test_a_track_without_warmup_data_refuses_a_warmup():
    config = paper()
    config["tracks"]["math"]["warmup"] = {"enabled": True}
    with pytest.raises(ConfigError, match=r"tracks\.math\.warmup\.enabled: track 'math' has no warm-up data"):
        validate_config(config, SCHEMA)


def test_an_api_judge_without_its_key_fails_at_start(monkeypatch):
    config = safety()
    config["tracks"]["safety"]["judges"]["safety"] = {"name": "safety_paper"}
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"tracks\.safety\.judges\.safety: .*OPENAI_API_KEY"):
        validate_config(config, SCHEMA)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    validate_config(config, SCHEMA)


def test_judged_benchmarks_need_their_data_and_their_default_judges_key(monkeypatch, tmp_path):
    config = safety()
    ev = config["tracks"]["safety"]["eval"]
    ev["benchmarks"] = ["harmbench"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.eval\.harmbench\.behaviors: missing"):
        validate_config(config, SCHEMA)
    ev["harmbench"] = {"behaviors": str(tmp_path / "nowhere.csv"), "judge": {"name": "minilm_refusal"}}
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.eval\.harmbench\.behaviors: .*nowhere\.csv.* is not a file"):
        validate_config(config, SCHEMA)
    csv = tmp_path / "behaviors.csv"
    csv.write_text("Behavior,FunctionalCategory\nx,standard\n")
    ev["harmbench"]["behaviors"] = str(csv)
    validate_config(config, SCHEMA)
    # with no judge named, the default (the paper's GPT-4o labelling) needs its key now, not after training
    del ev["harmbench"]["judge"]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.eval\.harmbench\.judge: judge 'gpt4o_harmbench' .*OPENAI_API_KEY"):
        validate_config(config, SCHEMA)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    validate_config(config, SCHEMA)

    ev["benchmarks"] = ["strongreject"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.eval\.strongreject\.datasets\.small: missing"):
        validate_config(config, SCHEMA)
    ev["strongreject"] = {"dataset": "full", "datasets": {"small": str(csv)}}
    with pytest.raises(ConfigError, match=r"tracks\.safety\.eval\.strongreject\.datasets\.full: missing"):
        validate_config(config, SCHEMA)
    ev["strongreject"]["datasets"]["full"] = str(csv)
    validate_config(config, SCHEMA)
    ev["strongreject"] = {"dataset": "mini", "datasets": {"mini": str(tmp_path / "none.csv")}}
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.eval\.strongreject\.datasets\.mini: .*none\.csv.* is not a file"):
        validate_config(config, SCHEMA)
    ev["strongreject"] = {"dataset": str(tmp_path / "elsewhere.csv")}
    with pytest.raises(ConfigError,
                       match=r"tracks\.safety\.eval\.strongreject\.dataset: .*elsewhere\.csv.* is not a file"):
        validate_config(config, SCHEMA)


def test_lambda_star_needs_a_grpo_run():
    config = safety()
    config["tracks"]["safety"]["rl"]["algorithms"] = ["frpo"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.lambda_star: .*grpo"):
        validate_config(config, SCHEMA)


def test_frpo_needs_a_lambda():
    config = paper()
    config["tracks"]["math"]["rl"]["lambdas"] = []
    config["tracks"]["math"]["rl"]["learning_rate"] = 6.0e-6
    with pytest.raises(ConfigError, match=r"tracks\.math\.rl\.lambdas: FRPO needs at least one λ"):
        validate_config(config, SCHEMA)


def test_a_lambda_with_a_trailing_newline_is_refused_naming_the_key():
    config = safety()
    config["tracks"]["safety"]["rl"]["lambdas"] = ["0.2\n"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.lambdas\.0"):
        validate_config(config, SCHEMA)


def test_a_tracker_probe_the_track_does_not_have_is_refused_at_start():
    config = load("smoke.yaml")
    config["tracks"]["math"]["finetune"]["track"]["n_prompts"] = {"safety": 4}
    with pytest.raises(ConfigError, match=r"tracks\.math\.finetune\.track\.n_prompts"):
        validate_config(config, SCHEMA)


def test_view_is_the_track_block_with_the_shared_keys():
    config = paper()
    v = view(config, "math")
    assert (v["name"], v["device"], v["seed"], v["precision"]) == ("paper", "cuda", 0, "bf16-mixed")
    assert v["track"] == "math" and v["results"] == "results/paper/math"
    assert v["rl"] == config["tracks"]["math"]["rl"]
    v["rl"]["beta"] = 1.0  # a copy: a rule that edits its view leaves the config alone
    assert config["tracks"]["math"]["rl"]["beta"] == 1.0e-4


def test_runs_and_settings_are_canonical_names():
    config = safety()
    v = view(config, "safety")
    assert rl_runs(v) == ["grpo", "frpo_lam0.2"]
    assert rl_runs(v, lambda_star="0.16") == ["grpo", "frpo_lam0.2", "frpo_lam0.16"]
    assert rl_runs(v, lambda_star="0.2") == ["grpo", "frpo_lam0.2"]  # λ* equal to a listed λ: one run
    v["finetune"].update(datasets=["arithmetic", "alpaca"], methods=["lora"], learning_rates=["1e-6", "6e-5"],
                         epochs=[1, 2])
    settings = finetune_settings(v)
    assert len(settings) == 8 and "alpaca-lora-lr6e-5-ep2" in settings
    assert rl_runs(view(paper(), "math")) == ["grpo"] + [f"frpo_lam{lam}" for lam in
                                                         ["10", "4", "2", "1", "0.5", "0.2", "0.1"]]


def test_a_new_lambda_or_seed_does_not_change_the_other_runs_specs():
    config = safety()
    v = view(config, "safety")
    before = {run: rl_spec(v, run, 0, "clf.pt") for run in ("grpo", "frpo_lam0.2")}
    changed = copy.deepcopy(config)
    changed["tracks"]["safety"]["rl"]["lambdas"] = ["0.2", "0.5"]
    changed["tracks"]["safety"]["rl"]["seeds"] = [0, 1]
    validate_config(changed, SCHEMA)
    after = {run: rl_spec(view(changed, "safety"), run, 0, "clf.pt") for run in ("grpo", "frpo_lam0.2")}
    assert before == after  # so snakemake reruns only the new λ's and the new seed's jobs
    changed["tracks"]["safety"]["rl"]["beta"] = 0.05
    assert rl_spec(view(changed, "safety"), "grpo", 0, "clf.pt") != before["grpo"]


def test_seeds_reach_the_specs():
    v = view(paper(), "math")
    assert rl_seeds(v) == [0] and ft_seeds(v) == [0, 1, 2]
    assert rl_spec(v, "grpo", 2, None)["seed"] == 2
    assert rl_spec(v, "frpo_lam0.5", 0, None)["seed"] == 0
    assert [finetune_spec(v, "code-lora-lr5e-5-ep1", s, None)["seed"] for s in ft_seeds(v)] == [0, 1, 2]
    config = safety()
    config["seed"] = 7
    assert rl_seeds(view(config, "safety")) == [7] and ft_seeds(view(config, "safety")) == [7]  # default: the seed


def test_finetune_spec_parses_the_setting_name():
    v = view(safety(), "safety")
    spec = finetune_spec(v, "alpaca-lora-lr6e-5-ep2", 0, "clf.pt")
    assert spec["train"]["method"] == "lora" and spec["train"]["learning_rate"] == 6e-5
    assert spec["train"]["epochs"] == 2 and spec["train"]["lora"]["r"] == 16
    assert spec["dataset"] == {"path": "builtin:alpaca_like", "format": "alpaca", "split": "train",
                               "max_examples": v["finetune"]["max_examples"]}
    assert spec["judges"]["safety"]["options"]["classifier_path"] == "clf.pt"
    assert spec["track_forgetting"] == v["finetune"]["track"]
    assert spec["track_forgetting"]["n_prompts"] == {"safety": 12, "helpfulness": 8}
    assert spec["data"] == {"safety_prompts": "builtin:safety_prompts"}
    with pytest.raises(ValueError, match="not <dataset>"):
        finetune_spec(v, "alpaca-qlora-lr1-ep1", 0, None)


def test_finetune_spec_of_the_math_track_reads_the_prepared_code_data():
    v = view(paper(), "math")
    spec = finetune_spec(v, finetune_settings(v)[0], 1, None)
    assert spec["dataset"]["format"] == "code"
    assert spec["dataset"]["path"] == "results/paper/math/data/code.jsonl"
    assert spec["data"] == {"math_problems": "results/paper/math/data/math_problems.jsonl"}
    assert spec["track_forgetting"] is None  # paper.yaml: no tracker during code SFT
    assert spec["train"]["max_grad_norm"] == 0.3 and spec["train"]["weight_decay"] == 0.04


def test_data_path_of_a_prepared_and_a_plain_key():
    math = view(paper(), "math")
    assert prepared_data(math) == ["math_problems", "code"]
    assert data_path(math, "code") == "results/paper/math/data/code.jsonl"
    assert data_path(math, "math500") == "hub:math500"  # read as configured (only to filter math_problems)
    smoke = view(load("smoke.yaml"), "math")  # a prepared key with a local source is still prepared
    assert data_path(smoke, "math_problems") == "results/smoke/math/data/math_problems.jsonl"
    demo = view(safety(), "safety")
    assert prepared_data(demo) == []
    assert data_path(demo, "arithmetic") == "builtin:arithmetic"
    assert data_spec(math, "code") == {"track": "math", "key": "code", "data": {"code": "hub:opencodeinstruct"}}


def test_beta_per_run_reaches_each_run_spec_and_only_that_one():
    config = safety()
    rl = config["tracks"]["safety"]["rl"]
    rl["lambdas"] = ["5", "0.2"]
    rl["beta"] = {"grpo": 0.1, "5": 2.0e-4, "0.2": 5.0e-3, "default": 1.0e-3}
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    assert rl_spec(v, "grpo", 0, None)["rl"]["beta"] == 0.1
    assert rl_spec(v, "frpo_lam5", 0, None)["rl"]["beta"] == 2.0e-4
    assert rl_spec(v, "frpo_lam0.2", 0, None)["rl"]["beta"] == 5.0e-3
    assert rl_spec(v, "frpo_lam0.25", 0, None)["rl"]["beta"] == 1.0e-3  # λ*: the default
    before = rl_spec(v, "frpo_lam0.2", 0, None)
    rl["beta"]["5"] = 3.0e-4  # another run's β: this run's spec (and so its job) is unchanged
    assert rl_spec(view(config, "safety"), "frpo_lam0.2", 0, None) == before
    rl["beta"] = 0.02  # a plain number still means every run
    assert {rl_spec(view(config, "safety"), r, 0, None)["rl"]["beta"] for r in ("grpo", "frpo_lam5")} == {0.02}


def test_learning_rate_and_max_grad_norm_per_run_reach_each_run_spec():
    v = view(paper(), "math")
    lr = {run: rl_spec(v, run, 0, None)["rl"]["learning_rate"] for run in rl_runs(v)}
    assert lr["frpo_lam0.5"] == 5e-6 and lr["frpo_lam0.2"] == 5e-6 and lr["frpo_lam0.1"] == 5e-6
    assert lr["frpo_lam2"] == 6e-6 and lr["frpo_lam10"] == 6e-6 and lr["grpo"] == 6e-6
    norm = {run: rl_spec(v, run, 0, None)["rl"]["max_grad_norm"] for run in rl_runs(v)}
    assert norm.pop("grpo") == 1.0
    assert set(norm.values()) == {0.5} and len(norm) == 7  # every FRPO run: the map's default
    assert rl_spec(v, "grpo", 0, None)["rl"]["weight_decay"] == 0.0  # a plain number: every run


def test_weight_decay_per_run_reaches_each_run_spec():
    config = safety()
    config["tracks"]["safety"]["rl"]["weight_decay"] = {"grpo": 0.1, "0.2": 0.0, "default": 0.05}
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    assert [rl_spec(v, run, 0, None)["rl"]["weight_decay"] for run in rl_runs(v, lambda_star="0.3")] == [
        0.1, 0.0, 0.05]


@pytest.mark.parametrize(
    ("beta", "message"),
    [
        ({"grpo": 0.1}, r"tracks\.safety\.rl\.beta: no value for 0\.2 \(add them, or a default\)"),
        ({"grpo": 0.1, "0.2": 0.005, "0.5": 0.002},
         r"tracks\.safety\.rl\.beta\.0\.5: λ=0\.5 is not in rl\.lambdas"),
        ({"grpo": 0.1, "frpo": 0.005},
         r"tracks\.safety\.rl\.beta\.frpo: a per-run map's keys are grpo, default or a λ"),
        ({"grpo": 0.1, "0.2": -1.0}, r"tracks\.safety\.rl\.beta\.0\.2: -1\.0 is less than the minimum of 0"),
        ({"grpo": 0.1, "0.2": 0.005}, r"tracks\.safety\.rl\.beta: FRPO at λ\* needs beta\.default"),
        (-0.5, r"tracks\.safety\.rl\.beta: -0\.5 is less than the minimum of 0"),
    ],
)
def test_a_beta_map_must_cover_every_run(beta, message):
    config = safety()
    config["tracks"]["safety"]["rl"]["beta"] = beta
    with pytest.raises(ConfigError, match=message):
        validate_config(config, SCHEMA)


@pytest.mark.parametrize("key", ["learning_rate", "max_grad_norm", "weight_decay"])
def test_every_per_run_map_must_cover_every_run(key):
    config = paper()
    config["tracks"]["math"]["rl"][key] = {"grpo": 1.0e-6, "10": 1.0e-6}
    with pytest.raises(ConfigError, match=rf"tracks\.math\.rl\.{key}: no value for 4, 2, 1, 0\.5, 0\.2, 0\.1"):
        validate_config(config, SCHEMA)
    config["tracks"]["math"]["rl"][key] = {"grpo": 1.0e-6, "3": 1.0e-6, "default": 1.0e-6}
    with pytest.raises(ConfigError, match=rf"tracks\.math\.rl\.{key}\.3: λ=3 is not in rl\.lambdas"):
        validate_config(config, SCHEMA)


def test_rl_length_is_steps_or_epochs_not_both():
    config = safety()
    rl = config["tracks"]["safety"]["rl"]
    rl["epochs"] = 2
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl: give exactly one of rl\.steps .* and rl\.epochs"):
        validate_config(config, SCHEMA)
    del rl["steps"]
    validate_config(config, SCHEMA)
    del rl["epochs"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl: give exactly one of rl\.steps"):
        validate_config(config, SCHEMA)


def test_the_old_lambda_scale_names_are_refused():
    config = safety()
    config["tracks"]["safety"]["rl"]["lambda_scale"] = "paper"  # ambiguous: the text and the figures differ
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.lambda_scale: 'paper' is not one of "
                                          r"\['equation_4_1', 'max_lambda_1'\]"):
        validate_config(config, SCHEMA)


def test_precision_reaches_every_training_stage_and_only_when_set():
    config = safety()

    def specs(c):
        v = view(c, "safety")
        return [warmup_spec(v), rl_spec(v, "grpo", 0, None), finetune_spec(v, finetune_settings(v)[0], 0, None)]

    assert all("precision" not in s for s in specs(config))  # the device's default (frpo.training.precision)
    config["precision"] = "bf16-mixed"
    validate_config(config, SCHEMA)
    assert [s["precision"] for s in specs(config)] == ["bf16-mixed"] * 3
    config["precision"] = "bf16"  # pure bf16 weights: refused (most AdamW updates vanish at lr 1e-6)
    with pytest.raises(ConfigError, match=r"precision: 'bf16' is not one of \['fp32', 'bf16-mixed'\]"):
        validate_config(config, SCHEMA)


# ---------------------------------------------------------------------------------------------------------------
# No silent inheritance: the paper config, validated on its own, hands its stages nothing of the CPU demo.
# ---------------------------------------------------------------------------------------------------------------


def _all_specs(config: dict) -> list[dict]:
    """Every stage spec of every track of ``config``, as the workflow's rules build them."""
    out = []
    for track in track_names(config):
        v = view(config, track)
        out.append(prepare_spec(v))
        out += [data_spec(v, key) for key in prepared_data(v)]
        if v["warmup"]["enabled"]:
            out.append(warmup_spec(v))
        star = "0.123" if v["rl"].get("lambda_star", {}).get("enabled") else None
        out += [rl_spec(v, run, seed, "clf.pt") for run in rl_runs(v, star) for seed in rl_seeds(v)]
        out += [finetune_spec(v, s, seed, "clf.pt") for s in finetune_settings(v) for seed in ft_seeds(v)]
        out.append(eval_spec(v, "clf.pt"))
    return out


def _strings(node):
    if isinstance(node, dict):
        for value in node.values():
            yield from _strings(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _strings(value)
    elif isinstance(node, str):
        yield node


def _judge_names(node):
    """The name of every judge in a spec: the values of a ``judges`` map and any ``judge`` section."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "judges" and isinstance(value, dict):
                yield from (j["name"] for j in value.values() if isinstance(j, dict))
            elif key == "judge" and value:
                yield value["name"] if isinstance(value, dict) else value
            yield from _judge_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _judge_names(value)


def _demo_values(specs: list[dict]) -> list[str]:
    found = [s for spec in specs for s in _strings(spec) if s.startswith("builtin:")]
    found += [n for spec in specs for n in _judge_names(spec) if n.startswith("minilm_")]
    found += [spec["device"] for spec in specs if "device" in spec and spec["device"] != "cuda"]
    return found


def test_the_demo_values_are_seen_where_they_are():
    # the check below can fail: on the demo config it finds the built-in data, the MiniLM judges and the CPU
    specs = _all_specs(validate_config(safety(), SCHEMA))
    found = _demo_values(specs)
    assert "builtin:safety_prompts" in found and "minilm_refusal" in found and "cpu" in found


def test_the_paper_config_holds_nothing_of_the_demo():
    config = validate_config(paper(), SCHEMA)  # on its own: nothing merged from config/config.yaml
    specs = _all_specs(config)
    assert len(specs) == 1 + 2 + 8 + 3 + 1  # prepare, 2 prepared keys, 8 RL runs, 3 fine-tuning seeds, eval
    assert _demo_values(specs) == []
    trained = [s for s in specs if "rl" in s or "train" in s]
    assert len(trained) == 11 and all(s["device"] == "cuda" for s in trained)
    assert eval_spec(view(config, "math"), None)["device"] == "cuda"


# ---------------------------------------------------------------------------------------------------------------
# Experiments (kind, extends), sweeps, per-dataset recipes, LoRA ranks, the evaluated models


def test_an_experiment_extends_another_by_a_deep_merge_and_names_its_track():
    config = safety()
    config["tracks"]["variant"] = {"extends": "safety", "rl": {"lambdas": ["0.5"], "beta": 0.05},
                                   "finetune": {"track": {"every_steps": 3}}}
    validate_config(config, SCHEMA)
    base, v = view(config, "safety"), view(config, "variant")
    assert (v["track"], v["experiment"], v["results"]) == ("safety", "variant", "results/demo/variant")
    assert v["rl"]["lambdas"] == ["0.5"] and v["rl"]["beta"] == 0.05  # lists and values replace
    assert v["rl"]["steps"] == base["rl"]["steps"] and v["model"] == base["model"]  # the rest is inherited
    assert v["finetune"]["track"] == {**base["finetune"]["track"], "every_steps": 3}  # mappings merge
    assert "extends" not in v and "kind" not in v and rl_runs(v) == ["grpo", "frpo_lam0.5"]
    config["tracks"]["second"] = {"extends": "variant", "kind": "safety", "seed": 1} | {"rl": {"steps": 3}}
    with pytest.raises(ConfigError, match=r"tracks\.second: .*'seed' was unexpected"):
        validate_config(config, SCHEMA)  # the resolved block is what the schema checks
    config["tracks"]["second"] = {"extends": "nowhere"}
    with pytest.raises(ConfigError, match=r"tracks\.second\.extends: no block 'nowhere' under tracks"):
        validate_config(config, SCHEMA)
    config["tracks"]["second"] = {"extends": "third"}
    config["tracks"]["third"] = {"extends": "second"}
    with pytest.raises(ConfigError, match=r"tracks\.second\.extends: circular \(second -> third -> second\)"):
        validate_config(config, SCHEMA)
    config["tracks"] = {"figures": safety()["tracks"]["safety"] | {"kind": "safety"}}
    with pytest.raises(ConfigError, match=r"tracks\.figures: the name 'figures' is reserved"):
        validate_config(config, SCHEMA)


def _sweeps(config, *sweeps):
    ft = config["tracks"]["safety"]["finetune"]
    for key in ("datasets", "methods", "learning_rates", "epochs"):
        del ft[key]
    ft["sweeps"] = list(sweeps)
    return config


def test_sweeps_cover_the_runs_they_name_once_each_and_sample_seeded():
    config = safety()
    config["tracks"]["safety"]["rl"]["seeds"] = [0, 1]
    grid = {"datasets": ["arithmetic", "alpaca"], "methods": ["full", "lora", "lora_r8"],
            "learning_rates": ["1e-5", "1e-4"], "epochs": [1, 2]}
    _sweeps(config, {"datasets": ["arithmetic"], "methods": ["full"], "learning_rates": ["5e-5"], "epochs": [1]},
            {"runs": ["grpo"], "rl_seeds": [0], "datasets": ["arithmetic"], "methods": ["full"],
             "learning_rates": ["5e-5", "1e-4"], "epochs": [1]},
            {"runs": ["grpo", "frpo_lam0.2"], **grid, "sample": {"n": 5, "seed": 3}})
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    main, extra = "arithmetic-full-lr5e-5-ep1", "arithmetic-full-lr1e-4-ep1"
    sample = set(finetune_settings(v, "frpo_lam0.2", 1)) - {main}
    assert len(sample) in (4, 5) and set(finetune_settings(v, "frpo_lam0.2", 1)) == {main} | sample
    assert finetune_settings(v, "grpo", 0)[:2] == [main, extra]  # sweep order; the main setting once
    assert extra not in finetune_settings(v, "grpo", 1)  # rl_seeds: [0]
    assert finetune_settings(v, "frpo_lam0.12", 0) == [main]  # λ* (not named by the other sweeps)
    again = set(finetune_settings(view(config, "safety"), "grpo", 1)) - {main}
    assert again == sample  # the same draw every time
    for sweep, message in [
        ({**grid, "runs": ["frpo_lam3"]}, r"sweeps\.0\.runs\.0: 'frpo_lam3' is not an RL run of this config"),
        ({**grid, "rl_seeds": [5]}, r"sweeps\.0\.rl_seeds\.0: 5 is not in rl\.seeds \[0, 1\]"),
        ({**grid, "sample": {"n": 25, "seed": 0}}, r"sweeps\.0\.sample\.n: 25 settings from a grid of 24"),
        ({**grid, "datasets": ["gsm8k"]}, r"sweeps\.0\.datasets\.0: 'gsm8k' has no source under data\.gsm8k"),
        ({**grid, "methods": ["qlora"]}, r"sweeps\.0\.methods\.0: 'qlora' does not match"),
    ]:
        bad = _sweeps(safety(), sweep)
        bad["tracks"]["safety"]["rl"]["seeds"] = [0, 1]
        bad["tracks"]["safety"]["rl"]["lambda_star"]["enabled"] = False  # (any FRPO run could be λ*'s)
        with pytest.raises(ConfigError, match=message):
            validate_config(bad, SCHEMA)


def test_recipes_and_lora_ranks_reach_the_fine_tuning_spec():
    config = _sweeps(safety(), {"datasets": ["arithmetic", "alpaca"], "methods": ["full", "lora_r8"],
                                "learning_rates": ["1e-5"], "epochs": [1]})
    ft = config["tracks"]["safety"]["finetune"]
    ft["lr_scheduler_type"], ft["warmup_ratio"] = "cosine", 0.03
    ft["recipes"] = {"alpaca": {"lr_scheduler_type": "constant_with_warmup", "warmup_ratio": 0.05}}
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    alpaca = finetune_spec(v, "alpaca-lora_r8-lr1e-5-ep1", 0, None)["train"]
    arith = finetune_spec(v, "arithmetic-full-lr1e-5-ep1", 0, None)["train"]
    assert (alpaca["lr_scheduler_type"], alpaca["warmup_ratio"]) == ("constant_with_warmup", 0.05)
    assert (arith["lr_scheduler_type"], arith["warmup_ratio"]) == ("cosine", 0.03)
    # lora_r8: the finetune.lora block at rank 8, alpha scaled to keep its alpha / r (32 / 16 = 2)
    assert alpaca["method"] == "lora" and alpaca["lora"] == {**ft["lora"], "r": 8, "alpha": 16}
    assert "lora" not in arith and arith["method"] == "full"
    ft["recipes"] = {"code": {"warmup_ratio": 0.1}}
    with pytest.raises(ConfigError, match=r"finetune\.recipes\.code: not a fine-tuning set of track 'safety'"):
        validate_config(config, SCHEMA)


def test_eval_runs_and_settings_choose_the_evaluated_models():
    from frpo.config import evaluated
    from frpo.runs import Target

    config = safety()
    ev = config["tracks"]["safety"]["eval"]
    ev["runs"], ev["settings"] = ["grpo"], []
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    setting = finetune_settings(v)[0]
    assert evaluated(v, Target("base")) and evaluated(v, Target.rl("grpo", 0))
    assert not evaluated(v, Target.rl("frpo_lam0.2", 0)) and not evaluated(v, Target.ft("grpo", 0, setting, 0))
    ev["settings"] = [setting]
    assert evaluated(view(config, "safety"), Target.ft("grpo", 0, setting, 0))
    for key, value, message in [("runs", ["frpo_lam9"], r"eval\.runs\.0: 'frpo_lam9' is not an RL run"),
                                ("settings", ["alpaca-full-lr1-ep1"], r"eval\.settings\.0: 'alpaca-full-lr1-ep1' "
                                                                      r"is not a fine-tuning setting")]:
        bad = safety()
        bad["tracks"]["safety"]["eval"][key] = value
        with pytest.raises(ConfigError, match=message):
            validate_config(bad, SCHEMA)


def test_figures_are_chosen_by_name_and_the_floor_needs_its_samples():
    config = safety()
    config["tracks"]["safety"]["figures"] = ["fig_rl_curves", "fig_chess"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.figures: 'fig_chess' is not a figure or table of track"):
        validate_config(config, SCHEMA)
    config["tracks"]["safety"]["figures"] = ["fig_rl_curves", "fig_floor"]
    del config["tracks"]["safety"]["floor"]
    with pytest.raises(ConfigError, match=r"tracks\.safety\.floor: missing \(fig_floor reads the RL models' "
                                          r"sampled rewards"):
        validate_config(config, SCHEMA)
    config["tracks"]["safety"]["figures"] = ["fig_rl_curves"]
    validate_config(config, SCHEMA)


def test_figure_options_name_a_figure_and_its_keyword_arguments():
    config = safety()
    block = config["tracks"]["safety"]
    block["figure_options"] = {"fig_floor": {"n_boot": 50}}
    validate_config(config, SCHEMA)
    from frpo.config import figure_options

    assert figure_options(view(config, "safety"), "fig_floor") == {"n_boot": 50}
    assert figure_options(view(config, "safety"), "fig_rl_curves") == {}
    block["figure_options"] = {"fig_chess": {}}
    with pytest.raises(ConfigError, match=r"tracks\.safety\.figure_options\.fig_chess: not a figure or table"):
        validate_config(config, SCHEMA)
    block["figure_options"] = {"fig_floor": {"n_bootstrap": 50}}
    with pytest.raises(ConfigError, match=r"tracks\.safety\.figure_options\.fig_floor\.n_bootstrap: not an option "
                                          r"of frpo\.figures\.safety_paper:floor_figure \(its options: rhos, n_boot"):
        validate_config(config, SCHEMA)
    block["figure_options"] = {"fig_floor": {"out": "x.png"}}  # an output is not an option
    with pytest.raises(ConfigError, match=r"fig_floor\.out: not an option"):
        validate_config(config, SCHEMA)


def test_a_figure_drawn_over_a_track_takes_one_set_of_options(tmp_path, monkeypatch):
    from configs import PAPER_ENV, paper_files

    paper_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    for key, value in PAPER_ENV.items():
        monkeypatch.setenv(key, value)
    config = load("paper.yaml")
    config["tracks"]["qwen7b"]["figure_options"] = {"fig2": {"kl_ball": 0.2}}
    with pytest.raises(ConfigError, match=r"tracks\.qwen7b\.figure_options\.fig2: differs from tracks\.mistral's"):
        validate_config(config, SCHEMA)


def test_seeds_may_be_a_count():
    config = safety()
    config["tracks"]["safety"]["rl"]["seeds"] = 3
    config["tracks"]["safety"]["finetune"]["seeds"] = 2
    validate_config(config, SCHEMA)
    assert rl_seeds(view(config, "safety")) == [0, 1, 2] and ft_seeds(view(config, "safety")) == [0, 1]
    config["tracks"]["safety"]["rl"]["seeds"] = 0
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.seeds: 0 is not valid"):
        validate_config(config, SCHEMA)


def test_kl_on_the_fine_tuning_data_needs_its_held_out_rows(tmp_path):
    config = safety()
    track = config["tracks"]["safety"]["finetune"]["track"]
    track["data_prompts"] = 8
    validate_config(config, SCHEMA)  # the demo's arithmetic set has an eval split
    spec = finetune_spec(view(config, "safety"), "arithmetic-full-lr5e-5-ep1", 0, None)
    assert spec["track_forgetting"]["data_prompts"] == 8
    rows = tmp_path / "arith.jsonl"
    rows.write_text('{"question": "q", "answer": "a", "final": 1, "split": "train"}\n')
    config["tracks"]["safety"]["data"]["arithmetic"] = str(rows)
    with pytest.raises(ConfigError, match=r"tracks\.safety\.finetune\.track\.data_prompts: data\.arithmetic \(.*arith"
                                          r"\.jsonl\) has no row with split 'eval'"):
        validate_config(config, SCHEMA)


def test_advantage_scaling_is_a_per_run_setting_that_frpo_refuses():
    config = safety()
    rl = config["tracks"]["safety"]["rl"]
    rl["scale_rewards"] = {"grpo": "group", "default": "none"}
    validate_config(config, SCHEMA)
    v = view(config, "safety")
    assert rl_spec(v, "grpo", 0, None)["rl"]["scale_rewards"] == "group"
    assert rl_spec(v, "frpo_lam0.2", 0, None)["rl"]["scale_rewards"] == "none"
    from frpo.rl import build_rl_config

    assert build_rl_config(rl_spec(v, "grpo", 0, None), "/tmp/x", processes=1).scale_rewards == "group"
    rl["scale_rewards"] = "group"  # every run, FRPO's too
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.scale_rewards: frpo_lam0\.2 would scale its "
                                          r"advantages"):
        validate_config(config, SCHEMA)
    rl["scale_rewards"] = {"grpo": "std"}
    with pytest.raises(ConfigError, match=r"tracks\.safety\.rl\.scale_rewards"):
        validate_config(config, SCHEMA)


def test_a_tracker_count_above_what_the_split_has_is_refused_not_cut():
    """finetune.track.n_prompts is a count, never cut silently: above the prompts of the configured split it is a
    config error naming the key (the paper's 128 per probe exist in the training split, not among the 25+25 held
    out)."""
    from frpo.data import read_safety_prompts

    config = safety()
    track = config["tracks"]["safety"]["finetune"]["track"]
    held_out = sum(r["task"] == "safety" for r in read_safety_prompts("builtin:safety_prompts", "eval"))
    track["n_prompts"]["safety"] = held_out + 1
    with pytest.raises(ConfigError, match=rf"tracks\.safety\.finetune\.track\.n_prompts\.safety: {held_out + 1} "
                                          rf"asked for, but data\.safety_prompts has only {held_out} safety prompts "
                                          r"in split 'eval'"):
        validate_config(config, SCHEMA)
    track["prompts"] = "train"  # the training split has them
    validate_config(config, SCHEMA)
    del track["prompts"]  # the default: the training prompts, as the public tracker
    validate_config(config, SCHEMA)
