"""lm-eval (MATH500, GSM8K maj@8, MMLU, IFEval) and EvalPlus (MBPP+, HumanEval+) end to end on a tiny local
model and fixture data, offline on the CPU; plus the pure scoring helpers."""

from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import pytest

from frpo.evals.scoring import majority_vote, math_verify_score, pass_at_1

FIXTURES = Path(__file__).parent / "fixtures" / "evals"


# ---------------------------------------------------------------- scoring helpers


def test_majority_vote_counts_and_ties():
    assert majority_vote(["6", "5", "6", "7"]) == "6"
    assert majority_vote(["5", "6", "6", "5"]) == "5"  # tie: the answer seen first wins
    assert majority_vote(["6", "5", "5", "6"]) == "6"
    assert majority_vote([None, None, "3"]) == "3"  # unparsed answers do not vote
    assert majority_vote([None, None]) is None
    assert majority_vote(["1", "2", "2", "2", "2", "2", "2", "2", "9", "9"], k=8) == "2"
    assert majority_vote(["1", "1", "2", "2", "2"], k=4) == "1"  # only the first k vote


def test_pass_at_1_needs_base_and_plus():
    statuses = {
        "Mbpp/1": [{"base_status": "pass", "plus_status": "pass"}],
        "Mbpp/2": [{"base_status": "pass", "plus_status": "fail"}],
        "Mbpp/3": [{"base_status": "fail", "plus_status": "pass"}],
        "Mbpp/4": [{"base_status": "timeout", "plus_status": "timeout"}],
    }
    s = pass_at_1(statuses)
    assert s["n_tasks"] == 4
    assert s["base"] == pytest.approx(2 / 4)
    assert s["plus"] == pytest.approx(1 / 4)
    assert s["per_task"]["Mbpp/2"] == {"base": True, "plus": False}
    # several samples per task: mean per-task pass rate (unbiased pass@1)
    two = {"HumanEval/0": [{"base_status": "pass", "plus_status": "pass"}, {"base_status": "pass", "plus_status": "fail"}]}
    assert pass_at_1(two)["plus"] == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pass_at_1({})


def test_math_verify_wiring():
    pytest.importorskip("math_verify")
    assert math_verify_score("so the answer is $\\boxed{\\frac{2}{3}}$", "gives $\\boxed{\\frac{4}{6}}$") == 1
    assert math_verify_score("x = \\boxed{5}", "$x = \\boxed{5}$") == 1
    assert math_verify_score("\\boxed{0.5}", "\\boxed{\\frac{1}{2}}") == 1
    assert math_verify_score("\\boxed{41}", "\\boxed{40}") == 0
    assert math_verify_score("no answer here", "\\boxed{40}") == 0


# ---------------------------------------------------------------- end to end on a tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from frpo.tiny import save_tiny_model

    d = tmp_path_factory.mktemp("tiny")
    words = "the a is answer of 1 2 3 4 5 6 def return python boxed".split()
    return str(save_tiny_model(d / "model", words))


@pytest.fixture(scope="module")
def nltk_dir(tmp_path_factory):
    from frpo.evals.lm_eval_tasks import write_minimal_punkt_tab

    return str(write_minimal_punkt_tab(tmp_path_factory.mktemp("nltk")))


LM_EVAL_CASES = [
    # benchmark, module, metric key, n fixture docs, task version, extra expectations
    ("math500", "math500", "math_verify,none", 3, 3.1),
    ("gsm8k_maj8", "gsm8k", "exact_match,maj@8", 3, 2.0),
    ("mmlu", "mmlu", "acc,none", 3, 1.0),
    ("ifeval", "ifeval", "prompt_level_strict_acc,none", 3, 4.0),
]


@pytest.mark.parametrize("benchmark,module,metric,n,task_version", LM_EVAL_CASES)
def test_lm_eval_benchmark_end_to_end(tiny_model, nltk_dir, benchmark, module, metric, n, task_version):
    pytest.importorskip("lm_eval")
    import importlib

    mod = importlib.import_module(f"frpo.evals.{module}")
    cfg = {"benchmark": benchmark, "device": "cpu",
           "lm_eval": {"data_dir": str(FIXTURES), "nltk_data": nltk_dir, "batch_size": 4, "backend": "auto"},
           benchmark: {"max_gen_toks": 8} if benchmark != "mmlu" else {}}
    r = mod.evaluate(tiny_model, cfg)
    json.dumps(r)  # serialisable as is
    assert r["metric"] == metric and metric in r["metrics"]
    assert 0.0 <= r["value"] <= 1.0
    assert r["n"] == n
    assert r["lm_eval_version"] == "0.4.13"
    assert r["task_versions"][r["task"]] == task_version
    assert r["backend"] == "hf"  # no vLLM / no GPU here
    assert r["dataset"]["path"] == "json" and r["dataset"]["data_files"]
    g = r["generation"]
    if benchmark == "math500":
        assert r["num_fewshot"] == 0 and g["apply_chat_template"]
        assert g["system_instruction"].startswith("Please reason step by step")
        assert g["gen_kwargs"]["max_gen_toks"] == 8 and g["gen_kwargs"]["temperature"] == 0.0
        assert "exact_match,none" in r["metrics"]
    if benchmark == "gsm8k_maj8":
        assert g["repeats"] == 8 and r["num_fewshot"] == 8
        assert g["task_generation_kwargs"]["do_sample"] is True  # maj@8 votes over 8 samples
        assert len(r["samples"][0]["filtered_resps"]) == 1
    if benchmark == "mmlu":
        assert r["num_fewshot"] == 5 and g["gen_kwargs"] is None
    if benchmark == "ifeval":
        assert r["nltk_punkt"].startswith(nltk_dir)
        assert set(r["metrics"]) == {"prompt_level_strict_acc,none", "inst_level_strict_acc,none",
                                     "prompt_level_loose_acc,none", "inst_level_loose_acc,none"}


def test_ifeval_without_punkt_fails_before_any_download(monkeypatch, tmp_path):
    nltk = pytest.importorskip("nltk")
    from frpo.evals.lm_eval_tasks import ensure_punkt

    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    monkeypatch.delenv("NLTK_DATA", raising=False)
    with pytest.raises(RuntimeError, match="punkt_tab"):
        ensure_punkt(None)


def test_mbpp_plus_end_to_end(tiny_model, tmp_path):
    pytest.importorskip("evalplus")
    from frpo.evals import evalplus_eval

    cfg = {"benchmark": "mbpp_plus", "device": "cpu",
           "mbpp_plus": {"data_path": str(FIXTURES / "mbpp_plus.jsonl"), "max_new_tokens": 8, "timeout_s": 120,
                         "cache_dir": str(tmp_path / "cache"), "parallel": 2}}
    r = evalplus_eval.evaluate(tiny_model, cfg)
    json.dumps(r)
    assert r["metric"] == "pass@1_plus" and r["n"] == 3
    assert r["value"] == 0.0  # random weights write no working code
    assert r["backend"] == "transformers" and r["generation"]["temperature"] == 0.0
    assert r["evalplus_version"] == "0.3.1"
    assert {s["task_id"] for s in r["samples"]} == {"Mbpp/9001", "Mbpp/9002", "Mbpp/9003"}


class _PrefillFollowingBackend:
    """Test double for a model that continues EvalPlus's prefill with a task's canonical code and closes the fence
    (so the pipeline from prompt to score is checked with answers whose pass@1 is known: 1)."""

    name = "test-double"

    def __init__(self, problems):
        self.solutions = {p["prompt"].strip(): p["canonical_solution"] for p in problems}
        self.prompts = None

    def settings(self):
        return {"backend": self.name}

    def generate(self, prompts, max_new_tokens, temperature=0.0, n=1):
        self.prompts = prompts
        out = []
        for messages in prompts:
            user = messages[0]["content"]
            task_prompt = next(k for k in self.solutions if k in user)
            out.append([self.solutions[task_prompt] + "```\n\nThis function works."])
        return out


def test_evalplus_prefills_the_response_prefix_and_scores_the_continuation(tmp_path, monkeypatch):
    pytest.importorskip("evalplus")
    from frpo.evals import backend as backend_mod
    from frpo.evals import evalplus_eval

    problems = [json.loads(x) for x in (FIXTURES / "mbpp_plus.jsonl").read_text().splitlines() if x.strip()]
    double = _PrefillFollowingBackend(problems)
    monkeypatch.setattr(backend_mod, "get_backend", lambda *a, **k: double)
    cfg = {"benchmark": "mbpp_plus", "device": "cpu",
           "mbpp_plus": {"data_path": str(FIXTURES / "mbpp_plus.jsonl"), "timeout_s": 120,
                         "cache_dir": str(tmp_path / "cache"), "parallel": 2}}
    r = evalplus_eval.evaluate(str(tmp_path), cfg)  # the double ignores the model directory
    for messages in double.prompts:
        assert messages[-1] == {"role": "assistant", "content": evalplus_eval.ASSISTANT_PREFILL}
        assert messages[-1]["content"].endswith("```python\n")
    assert r["value"] == 1.0 and r["metrics"]["pass@1_base"] == 1.0 and r["n"] == 3
    assert all("```" not in s["solution"] and "This function works" not in s["solution"] for s in r["samples"])


def test_an_assistant_prefill_is_continued_not_reopened(tiny_model):
    from transformers import AutoTokenizer

    from frpo.generation import _render

    tok = AutoTokenizer.from_pretrained(tiny_model)
    user = [{"role": "user", "content": "Write code."}]
    opened = _render(tok, [user])[0]
    prefilled = _render(tok, [[*user, {"role": "assistant", "content": "Sure:\n```python\n"}]])[0]
    assert prefilled == opened + "Sure:\n```python\n"


def test_humaneval_plus_end_to_end_with_limit(tiny_model, tmp_path):
    pytest.importorskip("evalplus")
    from frpo.evals import evalplus_eval

    cfg = {"benchmark": "humaneval_plus",
           "humaneval_plus": {"data_path": str(FIXTURES / "humaneval_plus.jsonl"), "max_new_tokens": 8,
                              "limit": 1, "timeout_s": 120, "cache_dir": str(tmp_path / "cache")}}
    r = evalplus_eval.evaluate(tiny_model, cfg)
    assert r["n"] == 1 and r["dataset"]["limit"] == 1
    assert r["samples"][0]["solution"].startswith("def add_one")  # prompt prepended to a non-code answer


def _canonical_samples(path, out, override=None):
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    with open(out, "w") as f:
        for r in rows:
            sol = override.get(r["task_id"]) if override else None
            if sol is None:
                sol = r["canonical_solution"] if r["canonical_solution"].lstrip().startswith("def") \
                    else r["prompt"] + r["canonical_solution"]
            f.write(json.dumps({"task_id": r["task_id"], "solution": sol}) + "\n")


def test_evalplus_scoring_canonical_pass_and_hung_task_fails(tmp_path):
    pytest.importorskip("evalplus")
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
    pytest.importorskip("evalplus")
    from frpo.evals.evalplus_eval import score_samples

    data = FIXTURES / "humaneval_plus.jsonl"
    samples = tmp_path / "s.jsonl"
    _canonical_samples(data, samples)
    with pytest.raises(TimeoutError):
        score_samples("humaneval", samples, data, timeout_s=0.5, cache_dir=tmp_path / "cache")


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
        return types.SimpleNamespace(texts=["x = 1\n```\nprint(x)", "no stop here", "a\nif __name__ b\n```\n"][: len(prompts)])

    b = get_backend(tiny_model, "transformers", device="cpu", batch_size=2)
    monkeypatch.setattr(frpo.generation, "generate", fake_generate)
    out = b.generate(["p", "q", "r"], max_new_tokens=7, temperature=0.5, top_p=0.9, stop=["\n```\n", "\nif __name__"])
    assert out == [["x = 1"], ["no stop here"], ["a"]]  # each ends before its earliest stop string
    assert calls[0]["top_p"] == 0.9 and calls[0]["do_sample"] is True and calls[0]["temperature"] == 0.5
    s = b.settings()["sampling"]
    assert s == {"do_sample": True, "temperature": 0.5, "top_p": 0.9, "top_k": None, "min_p": 0.0,
                 "repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "max_new_tokens": 7,
                 "n": 1, "stop": ["\n```\n", "\nif __name__"]}


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
