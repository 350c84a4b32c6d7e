"""Stage code on a tiny local model: generation, forgetting tracking, evaluations, figures, helpers."""

from __future__ import annotations

import json

import pytest
import torch

from frpo.evals.arithmetic import extract_answer
from frpo.generation import completion_logps, generate
from frpo.io import atomic_dir, atomic_file
from frpo.models import load_causal_lm
from frpo.rl import canonical_lambda
from frpo.training import last_checkpoint
from frpo.tiny import save_tiny_model

WORDS = "sure here is a plan sorry i cannot help with that how do bake bread make weapon".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), WORDS, hidden_size=32, num_heads=2, seed=0)


@pytest.mark.parametrize(("value", "text"), [(0.157, "0.16"), (0.2, "0.2"), (2.0, "2"), (10.0, "10"),
                                             (0.0123, "0.012"), (1e-5, "0.00001")])
def test_canonical_lambda(value, text):
    assert canonical_lambda(value) == text
    assert float(text) == pytest.approx(value, rel=0.05)


def test_canonical_lambda_rejects_non_positive():
    with pytest.raises(ValueError):
        canonical_lambda(0.0)


def test_last_checkpoint_ignores_incomplete_ones(tmp_path):
    assert last_checkpoint(tmp_path) is None
    for n, complete in [(2, True), (10, True), (12, False)]:
        (tmp_path / f"checkpoint-{n}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{n}" / "trainer_state.json").write_text("{}")
    assert last_checkpoint(tmp_path).endswith("checkpoint-10")


def test_atomic_dir_leaves_nothing_that_looks_complete_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "half.bin").write_text("x")
            raise RuntimeError("killed")
    assert not target.exists() and not list(tmp_path.iterdir())
    with atomic_dir(target) as tmp:
        (tmp / "done.bin").write_text("x")
    assert (target / "done.bin").is_file()


def test_atomic_file_replaces_only_on_success(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]
    with atomic_file(target) as tmp:
        assert tmp.suffix == ".csv"  # writers that infer the format from the suffix keep working
        tmp.write_text("new")
    assert target.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_left_padded_logps_match_unpadded_scoring(tiny):
    model, tokenizer = load_causal_lm(tiny)
    torch.manual_seed(0)
    prompts = ["how do i bake bread", "sure"]  # different lengths: the second row is left padded
    gen = generate(model, tokenizer, prompts, max_new_tokens=5, do_sample=True)
    batched = completion_logps(model, gen)
    for i in range(2):
        keep = gen.attention_mask[i].bool()
        ids = gen.input_ids[i][keep][None]
        n_completion = int(gen.completion_mask[i].sum())
        with torch.no_grad():
            logits = model(input_ids=ids).logits.float()
        logps = torch.log_softmax(logits[0, :-1], -1).gather(-1, ids[0, 1:, None]).squeeze(-1)
        expected = logps[ids.shape[1] - 1 - n_completion :][: n_completion]
        got = batched[i][: n_completion]
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_extract_answer():
    assert extract_answer("She pays 3 * 4 = 12 dollars.\n#### 12") == 12
    assert extract_answer("The total is 1,200 apples") == 1200
    assert extract_answer("#### 7 (because 3 + 4 = 7)") == 7
    assert extract_answer("no number here") is None


class CountingRefusalJudge:
    """Test double registered as a judge: scores 1.0 when the response contains "sorry", and counts its calls."""

    name, version = "counting_test_judge", "test-double/1"
    calls = 0

    def score(self, prompts, responses):
        CountingRefusalJudge.calls += 1
        return [float("sorry" in r) for r in responses]


def test_a_repeated_demo_evaluation_makes_no_judge_calls(tiny, tmp_path):
    from frpo.evals import run_eval
    from frpo.judges.base import _REGISTRY, register

    if "counting_test_judge" not in _REGISTRY:
        register("counting_test_judge")(lambda **kw: CountingRefusalJudge())
    cfg = {"data": {"safety_prompts": "builtin:safety_prompts"}, "max_prompts": 4,
           "judges": {"safety": {"name": "counting_test_judge"}}, "judge_cache_dir": str(tmp_path / "cache"),
           "generation": {"max_new_tokens": 4, "batch_size": 4}}
    CountingRefusalJudge.calls = 0
    first = run_eval("refusal", tiny, cfg, tmp_path / "a.json")
    assert CountingRefusalJudge.calls >= 1 and first["judge_cache"]["misses"] == 4
    CountingRefusalJudge.calls = 0
    second = run_eval("refusal", tiny, cfg, tmp_path / "b.json")
    assert CountingRefusalJudge.calls == 0, "the rerun judged nothing: every answer came from the cache"
    assert second["judge_cache"]["hits"] == 4 and second["value"] == first["value"]


def test_the_demo_evals_record_their_data_and_generation(tiny, tmp_path):
    from frpo.data import builtin
    from frpo.evals import run_eval
    from frpo.io import sha256_file

    cfg = {"data": {"arithmetic": "builtin:arithmetic"}, "max_prompts": 3,
           "generation": {"max_new_tokens": 4, "batch_size": 3}}
    r = run_eval("arithmetic", tiny, cfg, tmp_path / "arith.json")
    # what is recorded, not the score (the positive and negative controls in test_evals_harness.py test scoring)
    assert r["metric"] == "accuracy" and r["n"] == 3 and r["limit"] == 3
    assert r["dataset"] == {"path": "builtin:arithmetic", "sha256": sha256_file(builtin("arithmetic")),
                            "split": "eval"}
    assert r["generation"]["do_sample"] is False and r["generation"]["max_new_tokens"] == 4
    assert r["generation"]["backend"] == "transformers" and r["model_sha256_16"]
    assert json.loads((tmp_path / "arith.json").read_text())["n"] == 3

