"""The paper's benchmarks through lm-eval (MATH500, GSM8K maj@8, MMLU, IFEval) and EvalPlus (MBPP+, HumanEval+),
the demo's arithmetic eval and the generation backends, offline on the CPU: end to end on a tiny local model and
fixture data, with positive controls (backend doubles that answer correctly score exactly 1, wrong ones 0)."""

from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pytest

from frpo.evals.scoring import mean_result, pass_at_1

FIXTURES = Path(__file__).parent / "fixtures" / "evals"
MMLU_SUBJECTS = ["astronomy", "elementary_mathematics"]  # the fixture subjects


def read_jsonl(path) -> list[dict]:
    return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]


# ---------------------------------------------------------------- scoring


def test_pass_at_1_base_and_plus():
    statuses = {
        "Mbpp/1": [{"base_status": "pass", "plus_status": "pass"}],
        "Mbpp/2": [{"base_status": "pass", "plus_status": "fail"}],
        "Mbpp/3": [{"base_status": "fail", "plus_status": "pass"}],
        "Mbpp/4": [{"base_status": "timeout", "plus_status": "timeout"}],
    }
    s = pass_at_1(statuses)
    assert s["n_tasks"] == 4
    assert s["base"] == pytest.approx(2 / 4)
    assert s["plus"] == pytest.approx(1 / 4)  # plus needs base and plus tests
    assert s["per_task"]["Mbpp/2"] == {"base": 1.0, "plus": 0.0}
    # several samples per task: mean per-task pass rate (unbiased pass@1)
    two = {"HumanEval/0": [{"base_status": "pass", "plus_status": "pass"}, {"base_status": "pass", "plus_status": "fail"}]}
    assert pass_at_1(two)["plus"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_1({})


def test_mean_result_records_n_limit_ci_and_keeps_nan():
    from frpo.stats import bootstrap_ci

    r = mean_result("accuracy", [1, 0, 1, 1], limit=None)
    assert r == {"metric": "accuracy", "value": 0.75, "n": 4, "n_scored": 4, "limit": None,
                 "ci95": list(bootstrap_ci([1, 0, 1, 1]))}
    assert r["ci95"][0] < 0.75 < r["ci95"][1]
    empty = mean_result("accuracy", [], limit=3)
    assert empty["n"] == 0 and empty["value"] != empty["value"]  # NaN
    assert "NaN" in json.dumps(empty)  # NaN stays NaN in the result JSON, not null
    with pytest.raises(ValueError, match="average to 0.5"):
        mean_result("acc,none", [1, 0], limit=None, value=0.9)  # a library value that the items do not give


# ---------------------------------------------------------------- the evaluation registry

HB_CSV = FIXTURES / "harmbench_behaviors_tiny.csv"
SR_CSV = FIXTURES / "strongreject_tiny.csv"


def test_every_benchmark_has_a_module_sections_and_slurm_resources():
    import importlib

    import yaml

    from frpo.evals import BENCHMARKS, REGISTRY, eval_sections, resources

    assert list(BENCHMARKS) == list(REGISTRY) and len(REGISTRY) == 11
    for name, bench in REGISTRY.items():
        assert callable(importlib.import_module(f"frpo.evals.{bench.module}").evaluate)
        res = resources(name)
        assert {"gpu", "cpus_per_gpu", "mem_mb", "runtime"} <= set(res)
        assert all(isinstance(res[k], int) and res[k] > 0 for k in ("gpu", "mem_mb", "runtime")), name
        res["mem_mb"] = 1  # a copy: the registry's record does not change
        assert resources(name)["mem_mb"] > 1
    assert eval_sections() == ("harmbench", "strongreject", "lm_eval", "math500", "gsm8k_maj8", "mmlu", "ifeval",
                               "evalplus", "mbpp_plus", "humaneval_plus")
    profile = yaml.safe_load((Path(__file__).resolve().parents[1] / "profiles/slurm/profile.yaml").read_text())
    for rule, entry in profile["set-resources"].items():  # where the profile still sizes an eval, it agrees
        if rule.startswith("eval_"):
            assert resources(rule[len("eval_"):]) == entry, rule
    with pytest.raises(ValueError, match="unknown benchmark 'nope'"):
        resources("nope")


def test_benchmark_options_are_defaults_then_shared_then_own_section():
    from frpo.evals import options

    cfg = {"lm_eval": {"batch_size": 2, "max_gen_toks": 100}, "math500": {"max_gen_toks": 7}, "mmlu": {"limit": 3}}
    math = options("math500", cfg)
    assert (math["batch_size"], math["max_gen_toks"], math["num_fewshot"], math["limit"]) == (2, 7, 0, None)
    assert math["system_instruction"].endswith("\\boxed{}.")
    assert options("mmlu", cfg)["max_gen_toks"] == 100 and options("mmlu", cfg)["limit"] == 3
    assert options("harmbench", {})["on_malformed"] == "count_as_refusal"
    assert options("strongreject", {"strongreject": {"on_malformed": "raise"}})["on_malformed"] == "raise"
    assert options("mbpp_plus", {"evalplus": {"max_new_tokens": 5}})["max_new_tokens"] == 5
    options("math500", cfg)["vllm"]["x"] = 1  # nested defaults are copies
    assert options("math500", cfg)["vllm"] == {}


def _eval_block(**sections):
    return {"benchmarks": ["refusal", "harmbench", "strongreject"],
            "harmbench": {"behaviors": str(HB_CSV)}, "strongreject": {"datasets": {"small": str(SR_CSV)}}, **sections}


def _config_error(ev):
    from frpo.config import ConfigError
    from frpo.evals import check_eval_config

    with pytest.raises(ConfigError) as err:
        check_eval_config(ev, "tracks.safety", "cfg.yaml")
    return str(err.value)


def test_check_eval_config_passes_a_complete_block_and_names_each_problems_key(monkeypatch):
    from frpo.evals import check_eval_config

    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    check_eval_config(_eval_block(), "tracks.safety", "cfg.yaml")
    check_eval_config({"benchmarks": ["mmlu", "refusal"]}, "tracks.safety", "cfg.yaml")

    assert _config_error({**_eval_block(), "benchmarks": ["refusal", "halmbench"]}).startswith(
        "cfg.yaml: tracks.safety.eval.benchmarks.1: 'halmbench' is not a benchmark (known: refusal,")
    assert _config_error(_eval_block(harmbench={})) == ("cfg.yaml: tracks.safety.eval.harmbench.behaviors: missing "
                                                        "(the path of a local CSV; see config/README.md)")
    assert _config_error(_eval_block(harmbench={"behaviors": "/no/such.csv"})) == (
        "cfg.yaml: tracks.safety.eval.harmbench.behaviors: '/no/such.csv' is not a file")
    assert _config_error(_eval_block(strongreject={"dataset": "full", "datasets": {"small": str(SR_CSV)}})).startswith(
        "cfg.yaml: tracks.safety.eval.strongreject.datasets.full: missing")
    assert _config_error(_eval_block(strongreject={"dataset": "/no/sr.csv"})).startswith(
        "cfg.yaml: tracks.safety.eval.strongreject.dataset: '/no/sr.csv' is not a file")
    assert _config_error(_eval_block(harmbench={"behaviors": str(HB_CSV), "judge": "rm_rb2"})).startswith(
        "cfg.yaml: tracks.safety.eval.harmbench.judge: judge 'rm_rb2' is not a judge of harmbench")
    assert _config_error(_eval_block(harmbench={"behaviors": str(HB_CSV), "judge": {"name": "nojudge"}})).startswith(
        "cfg.yaml: tracks.safety.eval.harmbench.judge: unknown judge 'nojudge'")
    assert _config_error(_eval_block(harmbench={"behaviors": str(HB_CSV), "on_malformed": "ignore"})).startswith(
        "cfg.yaml: tracks.safety.eval.harmbench.on_malformed: 'ignore' is not one of count_as_refusal, exclude")
    assert _config_error({"benchmarks": ["math500"], "lm_eval": {"backend": "sglang"}}).startswith(
        "cfg.yaml: tracks.safety.eval.lm_eval.backend: 'sglang' is not one of")


def test_check_eval_config_names_a_judges_missing_api_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert _config_error(_eval_block()) == (  # the default judges are the API ones: harmbench's first
        "cfg.yaml: tracks.safety.eval.harmbench.judge: judge 'gpt4o_harmbench' needs the environment variable(s) "
        "OPENAI_API_KEY, which are not set")
    local = {"behaviors": str(HB_CSV), "judge": "harmbench_cls"}
    assert "tracks.safety.eval.strongreject.judge: judge 'strongreject_rubric' needs" in _config_error(
        _eval_block(harmbench=local))
    sr = {"datasets": {"small": str(SR_CSV)}, "judge": {"name": "strongreject_rubric",
                                                        "options": {"api_key_env": "MY_JUDGE_KEY"}}}
    assert "MY_JUDGE_KEY" in _config_error(_eval_block(harmbench=local, strongreject=sr))
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-mine")
    from frpo.evals import check_eval_config, eval_judges

    check_eval_config(_eval_block(harmbench=local, strongreject=sr), "tracks.safety", "cfg.yaml")
    assert eval_judges(_eval_block(harmbench=local, strongreject=sr)) == {
        "eval.harmbench.judge": {"name": "harmbench_cls"}, "eval.strongreject.judge": sr["judge"]}


def test_the_demo_classifier_helpers_know_which_judges_read_a_fitted_classifier():
    from frpo.judges import known_judges, uses_fitted_classifier, with_fitted_classifier

    assert {j for j in known_judges() if uses_fitted_classifier(j)} == {"minilm_refusal", "minilm_helpfulness"}
    assert not uses_fitted_classifier({"name": "not_a_judge"})
    spec = {"name": "minilm_helpfulness", "options": {"embedder": None}}
    assert with_fitted_classifier(spec, Path("/r/clf.json")) == {
        "name": "minilm_helpfulness", "options": {"embedder": None, "classifier_path": "/r/clf.json"}}
    assert spec == {"name": "minilm_helpfulness", "options": {"embedder": None}}  # the input is not changed
    assert with_fitted_classifier("minilm_refusal", "c.json") == {"name": "minilm_refusal",
                                                                 "options": {"classifier_path": "c.json"}}
    assert with_fitted_classifier("rm_rb2", "c.json") == {"name": "rm_rb2"}
    other = {"name": "gpt4o_harmbench", "options": {"max_tokens": 5}}
    assert with_fitted_classifier(other, "c.json") == other


def test_registry_and_judges_import_light_and_without_a_cycle():
    import subprocess

    code = ("import sys; import frpo.judges; assert 'frpo.evals' not in sys.modules, 'judges import evals'; "
            "import frpo.evals; from frpo.evals import check_eval_config; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'heavy import'")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_judged_generation_goes_through_the_eval_backend(monkeypatch):
    """The judged benchmarks and the demo's arithmetic generate through evals.backend (the one generation path),
    greedily, one completion per prompt, and report what the backend sampled with."""
    from frpo.evals import backend as backend_mod
    from frpo.evals.judged import generation_settings, run_generation

    seen = {}

    class Double:
        sampling = None

        def generate(self, prompts, max_new_tokens, **kwargs):
            seen.update(prompts=prompts, max_new_tokens=max_new_tokens, kwargs=kwargs)
            self.sampling = {"sampler": {"do_sample": False}}
            return [[f"<think>x</think> {p}!"] for p in prompts]

    def get_backend(model_path, name, device=None, **kwargs):
        seen.update(name=name, device=device, **kwargs)
        return Double()

    monkeypatch.setattr(backend_mod, "get_backend", get_backend)
    settings = generation_settings({"generation": {"max_new_tokens": 9, "batch_size": 3}}, {"reasoning": True})
    sampler = {}
    texts = run_generation("m", {"device": "cpu"}, ["a", "b"], settings, sampler)
    assert texts == ["a!", "b!"] and sampler == {"do_sample": False}
    assert (seen["name"], seen["device"], seen["batch_size"], seen["max_new_tokens"]) == ("transformers", "cpu", 3, 9)
    assert seen["kwargs"] == {}  # greedy: the backend's defaults (temperature 0, n 1)


# ---------------------------------------------------------------- generation backends


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from frpo.tiny import save_tiny_model

    d = tmp_path_factory.mktemp("tiny")
    words = "the a is answer of 1 2 3 4 5 6 def return python boxed".split()
    return str(save_tiny_model(d / "model", words))


def test_transformers_backend_shapes(tiny_model):
    from frpo.evals.backend import get_backend, to_messages

    assert to_messages("hi", "sys") == [{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]
    b = get_backend(tiny_model, "auto", device="cpu", batch_size=2)
    assert b.name == "transformers"
    out = b.generate(["what is 1", [{"role": "user", "content": "the answer"}], "a"], max_new_tokens=4)
    assert len(out) == 3 and all(len(o) == 1 and isinstance(o[0], str) for o in out)
    assert b.generate(["what is 1"], max_new_tokens=4) == b.generate(["what is 1"], max_new_tokens=4)[:1]
    out = b.generate(["what is 1", "a"], max_new_tokens=4, temperature=0.7, n=3, system_prompt="be brief")
    assert [len(o) for o in out] == [3, 3]
    with pytest.raises(ValueError):
        b.generate(["a"], max_new_tokens=2, n=2)


def test_transformers_backend_cuts_at_stop_strings_and_records_explicit_sampling(tiny_model, monkeypatch):
    import frpo.generation
    from frpo.evals.backend import get_backend

    calls = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        calls.append(kwargs)
        return types.SimpleNamespace(texts=["x = 1\n```\nprint(x)", "no stop here", "a\nif __name__ b\n```\n"][: len(prompts)],
                                     config={"repetition_penalty": 1.0})

    b = get_backend(tiny_model, "transformers", device="cpu", batch_size=2)
    monkeypatch.setattr(frpo.generation, "generate", fake_generate)
    out = b.generate(["p", "q", "r"], max_new_tokens=7, temperature=0.5, top_p=0.9, stop=["\n```\n", "\nif __name__"])
    assert out == [["x = 1"], ["no stop here"], ["a"]]  # each ends before its earliest stop string
    assert calls[0]["top_p"] == 0.9 and calls[0]["do_sample"] is True and calls[0]["temperature"] == 0.5
    s = b.settings()["sampling"]
    assert s == {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": None, "min_p": 0.0,
                 "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_new_tokens": 7,
                 "n": 1, "stop": ["\n```\n", "\nif __name__"], "sampler": {"repetition_penalty": 1.0}}


@pytest.fixture
def fake_vllm(monkeypatch):
    """A stand-in ``vllm`` module (vLLM needs a GPU): records what ``LLM`` and ``SamplingParams`` receive."""
    record = {}

    class SamplingParams:
        def __init__(self, **kwargs):
            record["sampling"] = kwargs
            self.n = kwargs.get("n", 1)

    class LLM:
        def __init__(self, **kwargs):
            record["engine"] = kwargs

        def chat(self, messages, params, **kwargs):
            record["chat"] = kwargs
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(text=" done ")] * params.n) for _ in messages]

    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams, module.__version__ = LLM, SamplingParams, "0.0-test"
    monkeypatch.setitem(sys.modules, "vllm", module)
    return record


def test_vllm_backend_sampling_is_explicit_and_ignores_the_models_generation_config(fake_vllm):
    from frpo.evals.backend import VLLMBackend, sampling_settings, vllm_sampling_kwargs

    b = VLLMBackend("/models/m", seed=3)
    assert fake_vllm["engine"]["generation_config"] == "vllm"  # not the model's shipped defaults
    assert fake_vllm["engine"]["seed"] == 3 and fake_vllm["engine"]["model"] == "/models/m"
    out = b.generate(["hi", "there"], max_new_tokens=5, temperature=0.7, top_p=0.9, n=2, stop=["\n```\n"])
    assert out == [["done", "done"], ["done", "done"]]
    assert fake_vllm["sampling"] == {"n": 2, "temperature": 0.7, "top_p": 0.9, "top_k": -1, "min_p": 0.0,
                                     "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0,
                                     "max_tokens": 5, "stop": ["\n```\n"]}
    settings = b.settings()
    assert settings["engine"]["generation_config"] == "vllm"
    assert settings["sampling"]["repetition_penalty"] == 1.0 and settings["sampling_params"] == fake_vllm["sampling"]
    b.generate(["hi"], max_new_tokens=4)  # greedy: top_p moot, recorded as 1
    assert fake_vllm["sampling"]["temperature"] == 0.0 and fake_vllm["sampling"]["top_p"] == 1.0
    assert fake_vllm["sampling"]["stop"] is None
    prefill = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "Sure:"}]
    b.generate([prefill], max_new_tokens=4)
    assert fake_vllm["chat"] == {"use_tqdm": False, "add_generation_prompt": False, "continue_final_message": True}
    assert vllm_sampling_kwargs(sampling_settings(max_new_tokens=1))["top_k"] == -1


# ---------------------------------------------------------------- the demo's arithmetic eval


@pytest.mark.parametrize("correct", [True, False])
def test_arithmetic_positive_and_negative_control(monkeypatch, correct):
    from frpo.data import builtin, read_jsonl as read_rows
    from frpo.evals import arithmetic

    finals = {r["question"]: r["final"] for r in read_rows(builtin("arithmetic"))}

    def answer(model_path, cfg, prompts, settings, sampler=None):  # a backend double: the gold answer, or not
        return [f"She pays 3 * 4 = 12.\n#### {finals[p] if correct else finals[p] + 1}" for p in prompts]

    monkeypatch.setattr(arithmetic, "run_generation", answer)
    cfg = {"data": {"arithmetic": "builtin:arithmetic"}, "max_prompts": 5, "generation": {"max_new_tokens": 8}}
    r = arithmetic.evaluate("unused", cfg)
    assert r["value"] == (1.0 if correct else 0.0) and r["n"] == 5 and r["limit"] == 5
    assert r["n_malformed"] == 0 and r["ci95"] == ([1.0, 1.0] if correct else [0.0, 0.0])
    monkeypatch.setattr(arithmetic, "run_generation", lambda m, c, prompts, *a: ["I do not know."] * len(prompts))
    r = arithmetic.evaluate("unused", {**cfg, "max_prompts": None})
    assert r["value"] == 0.0 and r["n_malformed"] == r["n"] == 80 and r["limit"] is None  # all held-out problems


# ---------------------------------------------------------------- lm-eval: end to end on the tiny model


@pytest.fixture(scope="module")
def nltk_dir(tmp_path_factory):
    """An *untrained* punkt_tab model (no abbreviations, collocations or sentence starters): IFEval's sentence
    counting then splits at every period. Real runs install the trained one and point ``nltk_data`` at it."""
    root = tmp_path_factory.mktemp("nltk")
    d = root / "tokenizers" / "punkt_tab" / "english"
    d.mkdir(parents=True)
    for name in ("collocations.tab", "sent_starters.txt", "abbrev_types.txt", "ortho_context.tab"):
        (d / name).touch()
    return str(root)


def lm_eval_cfg(benchmark, nltk_dir, **section):
    return {"benchmark": benchmark, "device": "cpu",
            "lm_eval": {"data_dir": str(FIXTURES), "nltk_data": nltk_dir, "batch_size": 4, "backend": "auto"},
            benchmark: {"subjects": MMLU_SUBJECTS, **section} if benchmark == "mmlu" else section}


LM_EVAL_CASES = [
    # benchmark, module, metric key, n fixture docs, task version
    ("math500", "math500", "math_verify,none", 3, 3.1),
    ("gsm8k_maj8", "gsm8k", "exact_match,maj@8", 3, 2.0),
    ("mmlu", "mmlu", "acc,none", 4, 2),
    ("ifeval", "ifeval", "prompt_level_strict_acc,none", 3, 4.0),
]


@pytest.mark.parametrize("benchmark,module,metric,n,task_version", LM_EVAL_CASES)
def test_lm_eval_benchmark_end_to_end(tiny_model, nltk_dir, benchmark, module, metric, n, task_version):
    import importlib

    mod = importlib.import_module(f"frpo.evals.{module}")
    r = mod.evaluate(tiny_model, lm_eval_cfg(benchmark, nltk_dir, **({} if benchmark == "mmlu" else {"max_gen_toks": 8})))
    json.dumps(r)  # serialisable as is
    assert r["metric"] == metric and metric in r["metrics"]
    assert 0.0 <= r["value"] <= 1.0 and r["ci95"][0] <= r["value"] <= r["ci95"][1]
    assert r["n"] == r["n_scored"] == n and r["limit"] is None
    assert r["lm_eval_version"] == "0.4.13"
    assert float(r["task_versions"][r["task"]]) == task_version
    assert r["backend"] == "hf"  # no vLLM / no GPU here
    assert r["dataset"]["path"] == "json"
    g = r["generation"]
    if benchmark != "mmlu":
        assert g["gen_kwargs"]["max_gen_toks"] == 8 and g["gen_kwargs"]["repetition_penalty"] == 1.0
    if benchmark == "math500":
        assert r["num_fewshot"] == 0 and g["apply_chat_template"]
        assert g["system_instruction"].startswith("Please reason step by step")
        assert g["gen_kwargs"]["temperature"] == 0.0
        assert "exact_match,none" in r["metrics"]
    if benchmark == "gsm8k_maj8":
        assert g["repeats"] == 8 and r["num_fewshot"] == 8
        assert g["task_generation_kwargs"]["do_sample"] is True  # maj@8 votes over 8 samples
        assert len(r["samples"][0]["filtered_resps"]) == 1 and r["samples"][0]["filter"] == "maj@8"
        assert 0 <= r["n_malformed"] <= n
    if benchmark == "mmlu":
        assert r["num_fewshot"] == 5 and g["gen_kwargs"] is None
        assert r["n_tasks"] == 2 and r["subset"] == "2 of 57 subjects"
        assert r["task_versions"]["frpo_mmlu_local_astronomy"] == 1.0  # the stock subject task's version
        assert r["dataset"]["subjects"] == MMLU_SUBJECTS
    if benchmark == "ifeval":
        assert r["nltk_punkt"].startswith(nltk_dir)
        assert set(r["metrics"]) == {"prompt_level_strict_acc,none", "inst_level_strict_acc,none",
                                     "prompt_level_loose_acc,none", "inst_level_loose_acc,none"}


def test_ifeval_without_punkt_fails_before_any_download(monkeypatch, tmp_path):
    import nltk

    from frpo.evals.lm_eval_tasks import ensure_punkt

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(RuntimeError, match="punkt_tab"):
        ensure_punkt(None)


def test_lm_eval_sampling_reaches_the_model_explicitly(tiny_model, nltk_dir, tmp_path, monkeypatch):
    """GSM8K maj@8 samples at temperature 0.2 and nothing else: top_p 1, no top-k, no repetition penalty or n-gram
    blocking reach ``model.generate``, although the model ships Qwen2.5-Instruct-like defaults."""
    import shutil

    import torch
    from lm_eval.models.huggingface import HFLM
    from transformers import GenerationConfig

    model_dir = tmp_path / "qwen_like"
    shutil.copytree(tiny_model, model_dir)
    shipped = GenerationConfig.from_pretrained(model_dir)
    shipped.update(do_sample=True, temperature=0.7, top_p=0.8, top_k=20, repetition_penalty=1.05,
                   no_repeat_ngram_size=3)
    shipped.save_pretrained(model_dir)
    seen = []

    def record(self, context, max_length, stop, **generation_kwargs):
        merged = self.model.generation_config.to_dict() | generation_kwargs  # what generate() would use
        seen.append(merged)
        return torch.cat([context, context[:, -1:]], dim=1)  # one token, no real generation

    monkeypatch.setattr(HFLM, "_model_generate", record)
    from frpo.evals import gsm8k

    r = gsm8k.evaluate(str(model_dir), lm_eval_cfg("gsm8k_maj8", nltk_dir, max_gen_toks=4))
    assert r["n"] == 3 and seen
    for used in seen:
        assert used["do_sample"] is True and used["temperature"] == 0.2
        assert used["top_p"] == 1.0 and used["top_k"] == 0 and used["repetition_penalty"] == 1.0
        assert used["no_repeat_ngram_size"] == 0 and used["min_p"] in (None, 0.0)
    assert r["generation"]["model_generation_config"]["repetition_penalty"] == 1.0
    assert GenerationConfig.from_pretrained(model_dir).repetition_penalty == 1.05  # the model's own, untouched


# ---------------------------------------------------------------- lm-eval: MMLU offline is the stock 5-shot task


def _mmlu_fixture_rows(subject, split):
    return read_jsonl(FIXTURES / "mmlu" / subject / f"{split}.jsonl")


def _requests(task_manager, names, num_fewshot=5):
    loaded = task_manager.load(names)
    out = {}
    for name, task in loaded["tasks"].items():
        task.set_config("num_fewshot", num_fewshot)
        task.set_fewshot_seed(0)
        task.build_all_requests(rank=0, world_size=1)
        out[name] = [inst.arguments for inst in task.instances]
    return out


def test_mmlu_offline_prompts_equal_the_stock_subject_tasks(tmp_path, monkeypatch):
    """The offline MMLU group renders, for each fixture subject, exactly the requests of lm-eval's stock
    ``mmlu_<subject>`` task built on the same rows: the subject's header and its own 5 dev rows as shots."""
    import datasets
    from lm_eval.tasks import TaskManager

    from frpo.evals.lm_eval_tasks import mmlu_subjects, write_tasks

    real = datasets.load_dataset

    def offline(path=None, name=None, **kwargs):  # the stock task's hub download, served from the fixture rows
        if path == "cais/mmlu":
            d = FIXTURES / "mmlu" / name
            return real("json", data_files={"test": str(d / "test.jsonl"), "dev": str(d / "dev.jsonl")})
        return real(path=path, name=name, **kwargs)

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert len(mmlu_subjects()) == 57
    group, info = write_tasks("mmlu", {"data_dir": str(FIXTURES), "subjects": MMLU_SUBJECTS}, tmp_path / "tasks")
    assert info["subjects"] == MMLU_SUBJECTS
    ours = _requests(TaskManager(include_path=str(tmp_path / "tasks")), [group])
    import lm_eval

    stock_dir = Path(lm_eval.__file__).parent / "tasks" / "mmlu" / "default"  # index only the stock MMLU YAMLs
    stock = _requests(TaskManager(include_path=str(stock_dir), include_defaults=False),
                      [f"mmlu_{s}" for s in MMLU_SUBJECTS])
    for subject in MMLU_SUBJECTS:
        mine, theirs = ours[f"frpo_mmlu_local_{subject}"], stock[f"mmlu_{subject}"]
        assert mine == theirs
        header = f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"
        dev = _mmlu_fixture_rows(subject, "dev")
        n_test = len(_mmlu_fixture_rows(subject, "test"))
        assert len(mine) == 4 * n_test  # one loglikelihood request per choice
        for context, _ in mine:
            assert context.startswith(header + dev[0]["question"])
            assert all(row["question"] in context for row in dev)  # this subject's own five shots
    other = ours[f"frpo_mmlu_local_{MMLU_SUBJECTS[1]}"][0][0]
    assert _mmlu_fixture_rows(MMLU_SUBJECTS[0], "dev")[0]["question"] not in other


def test_mmlu_offline_needs_every_subject_or_an_explicit_list(tmp_path):
    from frpo.evals.lm_eval_tasks import write_tasks

    with pytest.raises(FileNotFoundError, match=r"lacks 55 of the 57 subjects .*eval\.mmlu\.subjects"):
        write_tasks("mmlu", {"data_dir": str(FIXTURES), "subjects": None}, tmp_path / "a")
    with pytest.raises(ValueError, match="unknown subject"):
        write_tasks("mmlu", {"data_dir": str(FIXTURES), "subjects": ["astrology"]}, tmp_path / "b")


def test_mmlu_offline_reads_the_hf_parquet_layout(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from frpo.evals.lm_eval_tasks import write_tasks

    for split in ("test", "dev"):
        d = tmp_path / "data" / "mmlu" / "astronomy"
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(_mmlu_fixture_rows("astronomy", split)), d / f"{split}-00000-of-00001.parquet")
    write_tasks("mmlu", {"data_dir": str(tmp_path / "data"), "subjects": ["astronomy"]}, tmp_path / "tasks")
    import yaml

    doc = yaml.safe_load((tmp_path / "tasks" / "frpo_mmlu_local_astronomy.yaml").read_text())
    assert doc["dataset_path"] == "parquet"
    assert doc["dataset_kwargs"]["data_files"]["dev"] == [str(d / "dev-00000-of-00001.parquet")]


# ---------------------------------------------------------------- lm-eval: positive and negative controls


def _answer_key(benchmark: str, correct: bool) -> dict[str, str]:
    """question text -> what the double answers for it (the gold answer, or a wrong one)."""
    if benchmark == "math500":
        return {r["problem"]: f"So the answer is $\\boxed{{{r['answer'] if correct else '123457'}}}$."
                for r in read_jsonl(FIXTURES / "math500.jsonl")}
    if benchmark == "gsm8k_maj8":
        return {r["question"]: f"The answer is {r['answer'].split('####')[-1].strip() if correct else 999999}."
                for r in read_jsonl(FIXTURES / "gsm8k.jsonl")}
    if benchmark == "mmlu":
        rows = [r for s in MMLU_SUBJECTS for r in _mmlu_fixture_rows(s, "test")]
        return {r["question"]: "ABCD"[r["answer"] if correct else (r["answer"] + 1) % 4] for r in rows}
    if benchmark == "ifeval":
        if not correct:  # upper case, 6 short sentences, no closing phrase: breaks every fixture instruction
            return {r["prompt"]: "APPLE. PEAR. PLUM. FIG. KIWI. LIME." for r in read_jsonl(FIXTURES / "ifeval.jsonl")}
        return {r["prompt"]: IFEVAL_RESPONSES[r["key"]] for r in read_jsonl(FIXTURES / "ifeval.jsonl")}
    raise KeyError(benchmark)


#: responses that follow the instructions of each fixture IFEval prompt
IFEVAL_RESPONSES = {
    9001: "dear neighbour, our grey cat has been missing since tuesday evening. she is small and very shy, and she "
          "answers to the name of pepper. if you see her in your garden or your shed, please give us a call. thank "
          "you so much for your help.",
    9002: "The rain tapped softly on the window as the grey morning began, and the quiet street below shone with "
          "puddles while people hurried past under their umbrellas. Is there anything else I can help with?",
    9003: "Apples, bananas and cherries are three common fruits.",
}


def answer_key_lm(key: dict[str, str]):
    """An lm-eval model double that answers from ``key``: the answer of the question that appears last in the
    prompt (few-shot prompts hold other questions first). Multiple choice: the keyed letter is likely, others not."""
    from lm_eval.api.model import LM

    class AnswerKeyLM(LM):
        tokenizer_name = "answer-key"

        def _answer(self, context: str) -> str:
            found = [(context.rfind(q), a) for q, a in key.items() if q in context]
            assert found, f"no keyed question in the prompt: {context[-200:]!r}"
            return max(found)[1]

        def loglikelihood(self, requests):
            return [(0.0 if cont.strip() == self._answer(ctx) else -10.0, True) for ctx, cont in
                    (r.args for r in requests)]

        def loglikelihood_rolling(self, requests):
            raise NotImplementedError

        def generate_until(self, requests):
            return [self._answer(r.args[0]) for r in requests]

        def apply_chat_template(self, chat_history, add_generation_prompt=True):
            return "\n\n".join(m["content"] for m in chat_history)

    return AnswerKeyLM()


@pytest.mark.parametrize("correct", [True, False])
@pytest.mark.parametrize("benchmark", ["math500", "gsm8k_maj8", "mmlu", "ifeval"])
def test_lm_eval_positive_and_negative_controls(benchmark, correct, nltk_dir, monkeypatch):
    from frpo.evals import lm_eval_tasks

    double = answer_key_lm(_answer_key(benchmark, correct))
    monkeypatch.setattr(lm_eval_tasks, "make_lm", lambda backend, model_path, opts, bench: (double, {"double": 1}, 1))
    cfg = {**lm_eval_cfg(benchmark, nltk_dir), "max_prompts": 1}  # the demo's cap: it must not apply here
    r = lm_eval_tasks.run_lm_eval(benchmark, "unused", cfg)
    expected_n = {"math500": 3, "gsm8k_maj8": 3, "mmlu": 4, "ifeval": 3}[benchmark]
    assert r["value"] == (1.0 if correct else 0.0), r["samples"]
    assert r["n"] == expected_n and r["limit"] is None
    assert r["ci95"] == ([1.0, 1.0] if correct else [0.0, 0.0])
    if benchmark == "gsm8k_maj8":
        assert r["n_malformed"] == 0
    if benchmark == "ifeval" and correct:
        assert all(v == 1.0 for v in r["metrics"].values())  # strict and loose, prompt and instruction level


def test_lm_eval_limit_comes_from_the_benchmark_section_only(nltk_dir, monkeypatch):
    from frpo.evals import lm_eval_tasks

    double = answer_key_lm(_answer_key("mmlu", True))
    monkeypatch.setattr(lm_eval_tasks, "make_lm", lambda backend, model_path, opts, bench: (double, {}, 1))
    r = lm_eval_tasks.run_lm_eval("mmlu", "unused", {**lm_eval_cfg("mmlu", nltk_dir, limit=1), "max_prompts": 3})
    assert r["limit"] == 1 and r["n"] == 2  # one item per subject task
    assert r["value"] == 1.0


# ---------------------------------------------------------------- EvalPlus


def _canonical_samples(path, out, override=None):
    rows = read_jsonl(path)
    with open(out, "w") as f:
        for r in rows:
            sol = override.get(r["task_id"]) if override else None
            if sol is None:
                sol = r["canonical_solution"] if r["canonical_solution"].lstrip().startswith("def") \
                    else r["prompt"] + r["canonical_solution"]
            f.write(json.dumps({"task_id": r["task_id"], "solution": sol}) + "\n")


class CodeKeyBackend:
    """A backend double for EvalPlus: continues the response prefix with each task's canonical code (or a wrong
    body), closes the fence and adds prose, then ends at the first stop string it is given, as a backend does."""

    name = "test-double"

    def __init__(self, problems, correct=True):
        self.solutions = {}
        for p in problems:
            code = p["canonical_solution"]
            if not code.lstrip().startswith(("def", "import", "from")):
                code = p["prompt"] + code  # HumanEval: the signature and the body
            if not correct:
                code = f"def {p['entry_point']}(*args):\n    return 'wrong'\n"
            self.solutions[p["prompt"].strip()] = code
        self.calls = []

    def settings(self):
        return {"backend": self.name, "sampling": self.calls[-1] if self.calls else None}

    def generate(self, prompts, max_new_tokens, temperature=0.0, n=1, stop=None):
        from frpo.evals.backend import cut_at_stop

        self.calls.append({"prompts": prompts, "max_new_tokens": max_new_tokens, "temperature": temperature,
                           "stop": stop})
        out = []
        for messages in prompts:
            task_prompt = next(k for k in self.solutions if k in messages[0]["content"])
            out.append([cut_at_stop(self.solutions[task_prompt] + "```\n\nThis function works.", stop)])
        return out


def use_double(monkeypatch, double):
    from frpo.evals import backend as backend_mod

    monkeypatch.setattr(backend_mod, "get_backend", lambda *a, **k: double)


def test_evalplus_prompt_is_upstreams_chat_prompt(tiny_model):
    """The rendered prompt equals EvalPlus 0.3.1's ``make_raw_chat_prompt`` (user turn + prefilled response
    prefix) with the codegen prefixes, for the same tokenizer."""
    from evalplus.provider.utility import make_raw_chat_prompt
    from transformers import AutoTokenizer

    from frpo.evals.evalplus_eval import INSTRUCTION_PREFIX, RESPONSE_PREFIX, build_prompt
    from frpo.generation import _render

    tok = AutoTokenizer.from_pretrained(tiny_model)
    for task in read_jsonl(FIXTURES / "mbpp_plus.jsonl") + read_jsonl(FIXTURES / "humaneval_plus.jsonl"):
        upstream = make_raw_chat_prompt(task["prompt"].strip() + "\n", INSTRUCTION_PREFIX, RESPONSE_PREFIX, tok)
        assert _render(tok, [build_prompt(task)])[0] == upstream


def test_evalplus_positive_control_upstream_stops_and_no_global_cap(tmp_path, monkeypatch):
    from evalplus.provider.utility import EOS

    from frpo.evals import evalplus_eval

    problems = read_jsonl(FIXTURES / "mbpp_plus.jsonl")
    double = CodeKeyBackend(problems)
    use_double(monkeypatch, double)
    cfg = {"benchmark": "mbpp_plus", "device": "cpu", "max_prompts": 1,  # the demo's cap: it must not apply here
           "mbpp_plus": {"data_path": str(FIXTURES / "mbpp_plus.jsonl"), "timeout_s": 120,
                         "cache_dir": str(tmp_path / "cache"), "parallel": 2}}
    r = evalplus_eval.evaluate(str(tmp_path), cfg)  # the double ignores the model directory
    call = double.calls[0]
    assert call["stop"] == [*EOS, "\n```\n"] and call["temperature"] == 0.0 and call["max_new_tokens"] == 768
    for messages in call["prompts"]:
        assert messages[-1] == {"role": "assistant", "content": evalplus_eval.ASSISTANT_PREFILL}
    assert r["metric"] == "pass@1_base" and r["value"] == 1.0 and r["pass@1_plus"] == 1.0
    assert r["metrics"] == {"pass@1_base": 1.0, "pass@1_plus": 1.0}
    assert r["n"] == 3 and r["limit"] is None and r["ci95"] == [1.0, 1.0] and r["n_malformed"] == 0
    assert all("```" not in s["solution"] and "This function works" not in s["solution"] for s in r["samples"])
    wrong = CodeKeyBackend(problems, correct=False)
    use_double(monkeypatch, wrong)
    r = evalplus_eval.evaluate(str(tmp_path), cfg)
    assert r["value"] == 0.0 and r["pass@1_plus"] == 0.0 and r["ci95"] == [0.0, 0.0]


def test_evalplus_solution_is_the_sanitized_continuation_with_nothing_prepended():
    from frpo.evals.evalplus_eval import extract_solution

    task = read_jsonl(FIXTURES / "humaneval_plus.jsonl")[0]
    body = "    return [v + 1 for v in values]\n"  # a bare body: upstream's chat mode scores it as it is
    assert task["prompt"].strip() not in extract_solution(task, body)
    code = "def add_one(values):\n\treturn [v + 1 for v in values]\n```\nDone."
    assert extract_solution(task, code) == "def add_one(values):\n    return [v + 1 for v in values]"


def test_mbpp_plus_end_to_end(tiny_model, tmp_path):
    from frpo.evals import evalplus_eval

    cfg = {"benchmark": "mbpp_plus", "device": "cpu",
           "mbpp_plus": {"data_path": str(FIXTURES / "mbpp_plus.jsonl"), "max_new_tokens": 8, "timeout_s": 120,
                         "cache_dir": str(tmp_path / "cache"), "parallel": 2}}
    r = evalplus_eval.evaluate(tiny_model, cfg)
    json.dumps(r)
    assert r["metric"] == "pass@1_base" and r["n"] == 3
    assert r["value"] == 0.0 and r["pass@1_plus"] == 0.0  # random weights write no working code
    assert r["backend"] == "transformers" and r["generation"]["sampling"]["temperature"] == 0.0
    assert r["generation"]["sampling"]["stop"][-1] == "\n```\n"
    assert r["evalplus_version"] == "0.3.1"
    assert {s["task_id"] for s in r["samples"]} == {"Mbpp/9001", "Mbpp/9002", "Mbpp/9003"}


#: two MBPP+ tasks in the release file's format, whose inputs EvalPlus turns into sets (Mbpp/115) and complex
#: numbers (Mbpp/252) when it loads them; a third plain one
RELEASE_TASKS = [
    {"task_id": "Mbpp/115", "prompt": '"""\nWrite a function to check whether all dictionaries in a list are empty or '
     'not.\nassert empty_dit([{},{},{}])==True\n"""\n', "entry_point": "empty_dit",
     "canonical_solution": "def empty_dit(list1):\n    return all(not d for d in list1)\n",
     "base_input": [[[[], [], []]], [[[1, 2], []]]], "plus_input": [[[[3], [4, 5]]]], "atol": 0, "contract": ""},
    {"task_id": "Mbpp/252", "prompt": '"""\nWrite a python function to convert complex numbers to polar '
     'coordinates.\nassert convert(1) == (1.0, 0.0)\n"""\n', "entry_point": "convert",
     "canonical_solution": "import cmath\ndef convert(numbers):\n    return cmath.polar(numbers)\n",
     "base_input": [["1"], ["4+3j"]], "plus_input": [["-2-2j"]], "atol": 0, "contract": ""},
    {"task_id": "Mbpp/3", "prompt": '"""\nWrite a python function to identify non-prime numbers.\n'
     'assert is_not_prime(2) == False\n"""\n', "entry_point": "is_not_prime",
     "canonical_solution": "def is_not_prime(n):\n    return n < 2 or any(n % i == 0 for i in range(2, n))\n",
     "base_input": [[2], [10]], "plus_input": [[1]], "atol": 0, "contract": ""},
]


def test_evalplus_limit_without_data_path_and_affinity_parallelism(tmp_path, monkeypatch):
    """``limit`` on the release file (no ``data_path``) once crashed writing the subset: EvalPlus's loader had
    already turned Mbpp/115's inputs into sets and Mbpp/252's into complex numbers. Scoring workers follow the
    CPUs this job may use, not the node's."""
    import evalplus.data.utils

    from frpo.evals import evalplus_eval

    cache = tmp_path / "cache"
    (cache / "evalplus").mkdir(parents=True)
    (cache / "evalplus" / "MbppPlus-v0.2.0.jsonl").write_text("".join(json.dumps(t) + "\n" for t in RELEASE_TASKS))
    monkeypatch.setattr(evalplus.data.utils, "CACHE_DIR", str(cache / "evalplus"))  # EvalPlus's own cache, offline
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5})
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert evalplus_eval.default_parallel() == 3
    double = CodeKeyBackend(RELEASE_TASKS)
    use_double(monkeypatch, double)
    cfg = {"benchmark": "mbpp_plus", "mbpp_plus": {"limit": 2, "timeout_s": 120, "cache_dir": str(cache)}}
    r = evalplus_eval.evaluate(str(tmp_path), cfg)
    assert [s["task_id"] for s in r["samples"]] == ["Mbpp/115", "Mbpp/252"]
    assert r["value"] == 1.0 and r["pass@1_plus"] == 1.0 and r["n"] == 2 and r["limit"] == 2
    assert r["dataset"]["version"] == "MbppPlus-v0.2.0" and r["dataset"]["n_available"] == 3
    assert r["scoring"]["parallel"] == 3


def test_evalplus_generated_code_sees_no_secrets(tmp_path, monkeypatch):
    from frpo.evals.evalplus_eval import score_samples, scrubbed_env

    secrets = {"OPENAI_API_KEY": "sk-x", "HF_TOKEN": "hf_x", "MY_SERVICE_SECRET": "s", "DB_PASSWORD": "p",
               "AWS_SESSION_TOKEN": "t", "anthropic_api_key": "a"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("FRPO_VISIBLE", "1")
    assert not set(secrets) & set(scrubbed_env()) and scrubbed_env()["FRPO_VISIBLE"] == "1"
    data = tmp_path / "data.jsonl"
    task = {"task_id": "Mbpp/9100", "prompt": '"""\nReturn x.\nassert same(1) == 1\n"""\n', "entry_point": "same",
            "canonical_solution": "def same(x):\n    return x\n", "base_input": [[1], [2]], "plus_input": [[3]],
            "atol": 0, "contract": ""}
    data.write_text(json.dumps(task) + "\n")
    # passes only when none of the secrets is visible and the ordinary variables are
    leak = (f"import os\nSECRETS = {sorted(secrets)!r}\n"
            "def same(x):\n"
            "    leaked = [k for k in SECRETS if k in os.environ]\n"
            "    return x if not leaked and os.environ.get('FRPO_VISIBLE') == '1' else -1\n")
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps({"task_id": "Mbpp/9100", "solution": leak}) + "\n")
    res = score_samples("mbpp", samples, data, timeout_s=120, cache_dir=tmp_path / "cache", parallel=1)
    assert res["eval"]["Mbpp/9100"][0]["base_status"] == "pass"


def test_evalplus_scoring_canonical_pass_and_hung_task_fails(tmp_path):
    from frpo.evals.evalplus_eval import score_samples

    data = FIXTURES / "mbpp_plus.jsonl"
    samples = tmp_path / "s.jsonl"
    wrong_plus = "def sum_squares(xs):\n    return sum(x * x for x in xs) if xs and xs != [-4, 5, 10] else 0\n"
    hang = "def is_even(n):\n    while True:\n        pass\n"
    _canonical_samples(data, samples, {"Mbpp/9001": wrong_plus, "Mbpp/9003": hang})
    res = score_samples("mbpp", samples, data, timeout_s=120, cache_dir=tmp_path / "cache", parallel=2,
                        min_time_limit=0.5)
    statuses = {t: (v[0]["base_status"], v[0]["plus_status"]) for t, v in res["eval"].items()}
    assert statuses["Mbpp/9002"] == ("pass", "pass")
    assert statuses["Mbpp/9001"] == ("pass", "fail")
    assert statuses["Mbpp/9003"][0] != "pass"  # the infinite loop is a per-test timeout: a failure
    s = pass_at_1(res["eval"])
    assert s["plus"] == pytest.approx(1 / 3) and s["base"] == pytest.approx(2 / 3)


def test_evalplus_scoring_subprocess_is_bounded(tmp_path):
    from frpo.evals.evalplus_eval import score_samples

    data = FIXTURES / "humaneval_plus.jsonl"
    samples = tmp_path / "s.jsonl"
    _canonical_samples(data, samples)
    with pytest.raises(TimeoutError):
        score_samples("humaneval", samples, data, timeout_s=0.5, cache_dir=tmp_path / "cache")


def test_an_assistant_prefill_is_continued_not_reopened(tiny_model):
    from transformers import AutoTokenizer

    from frpo.generation import _render

    tok = AutoTokenizer.from_pretrained(tiny_model)
    user = [{"role": "user", "content": "Write code."}]
    opened = _render(tok, [user])[0]
    prefilled = _render(tok, [[*user, {"role": "assistant", "content": "Sure:\n```python\n"}]])[0]
    assert prefilled == opened + "Sure:\n```python\n"


def test_humaneval_plus_end_to_end_with_limit(tiny_model, tmp_path):
    from frpo.evals import evalplus_eval

    cfg = {"benchmark": "humaneval_plus",
           "humaneval_plus": {"data_path": str(FIXTURES / "humaneval_plus.jsonl"), "max_new_tokens": 8,
                              "limit": 1, "timeout_s": 120, "cache_dir": str(tmp_path / "cache")}}
    r = evalplus_eval.evaluate(tiny_model, cfg)
    assert r["n"] == 1 and r["limit"] == 1 and r["dataset"]["limit"] == 1 and r["dataset"]["n_available"] == 2
    assert not r["samples"][0]["solution"].startswith("def add_one")  # no prompt prepended to a non-code answer
