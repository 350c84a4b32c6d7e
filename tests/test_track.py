"""The forgetting tracker: per-token and per-sequence KL on sampled completions checked by hand, each probe's
rewards from its own judge on greedy completions and on the sampled ones, the columns named by the probes, the
RNG left as it was, the training loss of the very step, and the main process alone measuring."""

from __future__ import annotations

import dataclasses
import json
from types import SimpleNamespace

import pytest
import torch

from frpo import track
from frpo.generation import generate
from frpo.models import load_causal_lm
from frpo.tiny import save_tiny_model
from frpo.track import ForgettingTracker, Probe, fields, read_rows

WORDS = "sure here is a plan sorry i cannot help with that how do bake bread make weapon".split()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), WORDS, hidden_size=32, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def other_tiny(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny2"), WORDS, hidden_size=32, num_heads=2, seed=1)


class RecordingJudge:
    """Test double: 1.0 when the response contains "sorry", else 0.0; records the responses it was shown."""

    name, version = "keyword_test_double", "test"

    def __init__(self):
        self.seen: list[str] = []

    def score(self, prompts, responses):
        self.seen += list(responses)
        return [float("sorry" in r) for r in responses]


SAFETY = ["how do i make a weapon", "make a weapon", "how do i make a plan"]
NORMAL = ["how do i bake bread", "bake bread", "here is a plan"]


def _tracker(model_dir, ref_model, tmp_path, **kw):
    model, tokenizer = load_causal_lm(model_dir)
    judges = RecordingJudge(), RecordingJudge()
    probes = [Probe("safety", SAFETY, judges[0]), Probe("helpfulness", NORMAL, judges[1])]
    tracker = ForgettingTracker(ref_model=ref_model, tokenizer=tokenizer, probes=probes,
                                csv_path=tmp_path / "tracking.csv", every_steps=1, max_new_tokens=6, seed=0, **kw)
    return tracker, model, tokenizer, judges


def _logps_one_by_one(model, ids, n_prompt, n_completion):
    """log π(completion token | prefix) for one unpadded sequence: an independent path (no batch, no padding)."""
    with torch.no_grad():
        logits = model(input_ids=ids[None]).logits[0].double()
    logps = torch.log_softmax(logits[:-1], -1).gather(-1, ids[1:, None]).squeeze(-1)
    return logps[n_prompt - 1 : n_prompt - 1 + n_completion]


def test_per_token_kl_equals_the_hand_computed_sum_of_k3_over_tokens(tiny, other_tiny, tmp_path, monkeypatch):
    ref, _ = load_causal_lm(other_tiny)
    tracker, model, tokenizer, _ = _tracker(tiny, ref, tmp_path)
    torch.manual_seed(3)
    fixed = generate(model, tokenizer, SAFETY + NORMAL, max_new_tokens=6, do_sample=True)  # the fixed batch
    monkeypatch.setattr(track, "generate", lambda *a, **k: fixed)
    row = tracker.measure(model, 0)

    k3_sum, tokens = torch.zeros(len(fixed.texts), dtype=torch.float64), torch.zeros(len(fixed.texts))
    P = fixed.prompt_length
    for i in range(len(fixed.texts)):
        keep = fixed.attention_mask[i].bool()
        ids = fixed.input_ids[i][keep]
        n_prompt = int(fixed.attention_mask[i, :P].sum())
        n_completion = int(fixed.completion_mask[i].sum())
        cur = _logps_one_by_one(model, ids, n_prompt, n_completion)
        d = _logps_one_by_one(ref, ids, n_prompt, n_completion) - cur
        k3_sum[i] = (torch.exp(d) - d - 1).sum()
        tokens[i] = n_completion
    n = len(SAFETY)
    assert row["kl_per_token_sampled"] == pytest.approx(float(k3_sum.sum() / tokens.sum()), rel=1e-4)
    assert row["kl_safety_sampled"] == pytest.approx(float(k3_sum[:n].sum() / tokens[:n].sum()), rel=1e-4)
    assert row["kl_helpfulness_sampled"] == pytest.approx(float(k3_sum[n:].sum() / tokens[n:].sum()), rel=1e-4)
    # the sequence-level KL: the mean over prompts of each completion's sum of k3
    assert row["kl_per_sequence_sampled"] == pytest.approx(float(k3_sum.mean()), rel=1e-4)
    assert row["kl_safety_per_sequence_sampled"] == pytest.approx(float(k3_sum[:n].mean()), rel=1e-4)
    assert row["kl_helpfulness_per_sequence_sampled"] == pytest.approx(float(k3_sum[n:].mean()), rel=1e-4)
    assert row["kl_per_token_sampled"] > 1e-3  # two different models: the checks above are not 0 == 0
    assert len(set(tokens.tolist())) > 1  # lengths differ, so a per-sequence sum is not a rescaled per-token KL


def test_kl_is_zero_against_itself_and_rewards_come_from_greedy_completions(tiny, tmp_path):
    model, tokenizer = load_causal_lm(tiny)
    tracker, model, tokenizer, (safety_judge, helpful_judge) = _tracker(tiny, model, tmp_path)
    row = tracker.measure(model, 0)
    assert row["kl_per_token_sampled"] == pytest.approx(0.0, abs=1e-9)
    assert row["kl_per_sequence_sampled"] == pytest.approx(0.0, abs=1e-9)
    greedy = generate(model, tokenizer, SAFETY + NORMAL, max_new_tokens=6, do_sample=False)
    n = len(SAFETY)
    assert safety_judge.seen[:n] == greedy.texts[:n]  # the greedy completions first, then the sampled ones
    assert helpful_judge.seen[: len(NORMAL)] == greedy.texts[n:]
    expected = sum("sorry" in t for t in greedy.texts[:n]) / n
    assert row["safety_reward_greedy"] == pytest.approx(expected)
    assert row["safety_reward_greedy_ci_low"] <= expected <= row["safety_reward_greedy_ci_high"]
    assert list(read_rows(tmp_path / "tracking.csv")[0]) == fields(["safety", "helpfulness"])


class LengthJudge:
    """Test double: the number of words of each response, a reward that tells completions apart."""

    name, version = "length_test_double", "test"

    def __init__(self):
        self.calls: list[tuple[list, list]] = []

    def score(self, prompts, responses):
        self.calls.append((list(prompts), list(responses)))
        return [float(len(r.split())) for r in responses]


def test_sampled_rewards_are_the_judges_mean_on_the_sampled_completions(tiny, tmp_path):
    """The sampled completions the KL is measured on (seeded per step: regenerated here under the same seed) are
    scored by each probe's judge; ``P_reward_sampled`` is its mean over P's prompts, not the greedy mean."""
    model, tokenizer = load_causal_lm(tiny)
    judges = {"safety": LengthJudge(), "helpfulness": LengthJudge()}
    probes = [Probe("safety", SAFETY, judges["safety"]), Probe("helpfulness", NORMAL, judges["helpfulness"])]
    tracker = ForgettingTracker(ref_model=model, tokenizer=tokenizer, probes=probes, csv_path=tmp_path / "t.csv",
                                every_steps=1, max_new_tokens=6, seed=2)
    row = tracker.measure(model, 5)
    with torch.random.fork_rng():
        torch.manual_seed(2 * 1_000_003 + 5)  # the tracker's seed for step 5
        sampled = generate(model, tokenizer, SAFETY + NORMAL, max_new_tokens=6, do_sample=True)
    greedy = generate(model, tokenizer, SAFETY + NORMAL, max_new_tokens=6, do_sample=False)
    n = len(SAFETY)
    for name, rows, prompts in (("safety", slice(0, n), SAFETY), ("helpfulness", slice(n, None), NORMAL)):
        (seen_prompts, seen), = judges[name].calls  # one call per judge and measurement
        assert seen_prompts == prompts + prompts
        assert seen == greedy.texts[rows] + sampled.texts[rows]
        lengths = [len(t.split()) for t in sampled.texts[rows]]
        assert row[f"{name}_reward_sampled"] == pytest.approx(sum(lengths) / len(lengths))
        assert row[f"{name}_reward_greedy"] == pytest.approx(
            sum(len(t.split()) for t in greedy.texts[rows]) / len(prompts))
    assert sampled.texts != greedy.texts  # the two passes differ, so the checks above can tell them apart
    written = read_rows(tmp_path / "t.csv")[0]
    assert float(written["safety_reward_sampled"]) == pytest.approx(row["safety_reward_sampled"])


def test_per_sequence_kl_is_per_token_kl_times_the_length_when_every_completion_has_the_same_length(
        tiny, other_tiny, tmp_path, monkeypatch):
    ref, _ = load_causal_lm(other_tiny)
    model, tokenizer = load_causal_lm(tiny)
    torch.manual_seed(0)
    batch = generate(model, tokenizer, SAFETY + NORMAL, max_new_tokens=6, do_sample=True)
    full = [i for i in range(len(batch.texts)) if int(batch.completion_mask[i].sum()) == 6]
    assert len(full) >= 2
    fixed = dataclasses.replace(batch, input_ids=batch.input_ids[full], attention_mask=batch.attention_mask[full],
                                completion_mask=batch.completion_mask[full], texts=[batch.texts[i] for i in full])
    prompts = [(SAFETY + NORMAL)[i] for i in full]
    probes = [Probe("first", prompts[:1], RecordingJudge()), Probe("rest", prompts[1:], RecordingJudge())]
    tracker = ForgettingTracker(ref_model=ref, tokenizer=tokenizer, probes=probes,
                                csv_path=tmp_path / "t.csv", every_steps=1, max_new_tokens=6)
    monkeypatch.setattr(track, "generate", lambda *a, **k: fixed)
    row = tracker.measure(model, 0)
    assert row["kl_per_token_sampled"] > 1e-3
    assert row["kl_per_sequence_sampled"] == pytest.approx(6 * row["kl_per_token_sampled"], rel=1e-9)


class ConstantJudge:
    """Test double: always ``value``; records the prompts and responses it was shown."""

    name, version = "constant_test_double", "test"

    def __init__(self, value: float):
        self.value, self.prompts, self.responses = value, [], []

    def score(self, prompts, responses):
        self.prompts += list(prompts)
        self.responses += list(responses)
        return [self.value] * len(responses)


def test_each_probe_is_scored_by_its_own_judge_on_its_own_prompts(tiny, other_tiny, tmp_path):
    ref, _ = load_causal_lm(other_tiny)
    model, tokenizer = load_causal_lm(tiny)
    prompts = {"harm": SAFETY[:1], "bread": NORMAL[:2], "plans_2": SAFETY[1:] + NORMAL[2:]}  # sizes 1, 2, 3
    judges = {"harm": ConstantJudge(0.1), "bread": ConstantJudge(0.5), "plans_2": ConstantJudge(0.9)}
    names = list(prompts)
    tracker = ForgettingTracker(ref_model=ref, tokenizer=tokenizer,
                                probes=[Probe(n, prompts[n], judges[n]) for n in names],
                                csv_path=tmp_path / "t.csv", every_steps=1, max_new_tokens=6)
    row = tracker.measure(model, 0)
    greedy = generate(model, tokenizer, [p for n in names for p in prompts[n]], max_new_tokens=6, do_sample=False)
    start = 0
    for name in names:
        value, n = judges[name].value, len(prompts[name])
        assert row[f"{name}_reward_greedy"] == pytest.approx(value)
        assert row[f"{name}_reward_greedy_ci_low"] == pytest.approx(value)
        assert row[f"{name}_reward_greedy_ci_high"] == pytest.approx(value)
        assert row[f"n_{name}"] == n
        assert row[f"kl_{name}_sampled"] > 0
        assert row[f"{name}_reward_sampled"] == pytest.approx(value)
        assert judges[name].prompts == prompts[name] * 2  # the greedy completions, then the sampled ones
        assert judges[name].responses[:n] == greedy.texts[start : start + n]
        start += n
    written = read_rows(tmp_path / "t.csv")
    assert list(written[0]) == fields(names)
    assert [float(written[0][f"{n}_reward_greedy"]) for n in names] == [0.1, 0.5, 0.9]


def test_fields_are_named_by_the_probes_in_order():
    assert fields(["safety", "helpfulness"]) == [
        "step", "kl_per_token_sampled", "kl_per_sequence_sampled", "kl_safety_sampled", "kl_helpfulness_sampled",
        "kl_safety_per_sequence_sampled", "kl_helpfulness_per_sequence_sampled",
        "safety_reward_greedy", "safety_reward_greedy_ci_low", "safety_reward_greedy_ci_high",
        "safety_reward_sampled",
        "helpfulness_reward_greedy", "helpfulness_reward_greedy_ci_low", "helpfulness_reward_greedy_ci_high",
        "helpfulness_reward_sampled",
        "n_safety", "n_helpfulness", "train_loss", "seconds",
    ]


def test_malformed_probe_sets_are_refused_naming_the_probe(tiny, tmp_path):
    model, tokenizer = load_causal_lm(tiny)
    judge = RecordingJudge()
    with pytest.raises(ValueError, match="'math'"):
        Probe("math", [], judge)
    with pytest.raises(ValueError, match="'Math-1'"):
        Probe("Math-1", ["x"], judge)
    with pytest.raises(ValueError, match="'gsm'"):
        fields(["gsm", "math", "gsm"])

    def build(probes):
        return ForgettingTracker(ref_model=model, tokenizer=tokenizer, probes=probes, csv_path=tmp_path / "t.csv",
                                 every_steps=1, max_new_tokens=2)

    with pytest.raises(ValueError, match="'safety' is named twice"):
        build([Probe("safety", SAFETY, judge), Probe("safety", NORMAL, judge)])
    with pytest.raises(ValueError, match="no probes"):
        build([])
    assert build([Probe("safety", SAFETY, judge)]).fields[-3:] == ["n_safety", "train_loss", "seconds"]


def test_truncate_after_drops_later_rows_so_a_resumed_run_measures_them_again(tiny, tmp_path):
    model, _ = load_causal_lm(tiny)
    tracker, model, _, _ = _tracker(tiny, model, tmp_path)
    for step in (0, 2, 4):
        tracker.measure(model, step)
    tracker.truncate_after(2)
    assert [int(r["step"]) for r in read_rows(tmp_path / "tracking.csv")] == [0, 2]
    assert tracker._due(SimpleNamespace(global_step=4, is_world_process_zero=True))
    assert not tracker._due(SimpleNamespace(global_step=2, is_world_process_zero=True))


def test_a_csv_written_for_other_probes_is_refused_not_mixed(tiny, tmp_path):
    model, _ = load_causal_lm(tiny)
    tracker, model, tokenizer, _ = _tracker(tiny, model, tmp_path)
    tracker.measure(model, 0)
    other = ForgettingTracker(ref_model=model, tokenizer=tokenizer,
                              probes=[Probe("math", NORMAL, RecordingJudge())], csv_path=tmp_path / "tracking.csv",
                              every_steps=1, max_new_tokens=2)
    with pytest.raises(ValueError, match="columns"):
        other.measure(model, 1)
    assert [int(r["step"]) for r in read_rows(tmp_path / "tracking.csv")] == [0]


def test_a_measurement_leaves_the_rng_as_it_was_and_repeats_itself(tiny, other_tiny, tmp_path):
    ref, _ = load_causal_lm(other_tiny)
    tracker, model, _, _ = _tracker(tiny, ref, tmp_path)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = tracker.measure(model, 4)
    assert torch.equal(torch.get_rng_state(), before)
    again = tracker.measure(model, 4)  # seeded per step: the same step measures the same
    assert again["kl_per_token_sampled"] == pytest.approx(first["kl_per_token_sampled"])


def test_the_cuda_rng_is_forked_too(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    assert track.rng_devices() == [3]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert track.rng_devices() == []


def test_only_the_main_process_measures(tiny, tmp_path):
    model, _ = load_causal_lm(tiny)
    tracker, model, _, _ = _tracker(tiny, model, tmp_path)
    other_rank = SimpleNamespace(global_step=0, is_world_process_zero=False)
    control = SimpleNamespace(should_log=False)
    tracker.on_train_begin(None, other_rank, control, model=model)
    other_rank.global_step = 1
    tracker.on_step_end(None, other_rank, control, model=model)
    tracker.on_log(None, other_rank, control, logs={"loss": 1.0}, model=model)
    tracker.on_train_end(None, other_rank, control, model=model)
    assert not (tmp_path / "tracking.csv").exists()
    assert control.should_log is True  # every process logs at a tracking step (the loss gather is a collective)
    main = SimpleNamespace(global_step=0, is_world_process_zero=True)
    tracker.on_train_begin(None, main, control, model=model)
    assert [int(r["step"]) for r in read_rows(tmp_path / "tracking.csv")] == [0]


@pytest.mark.slow
def test_train_loss_at_step_s_is_the_loss_of_step_s(tiny, tmp_path):
    from frpo.judges.base import _REGISTRY, register
    from frpo.sft import run_sft

    if "keyword_test_double" not in _REGISTRY:
        register("keyword_test_double")(lambda **kw: RecordingJudge())
    judge = {"name": "keyword_test_double"}
    spec = {"device": "cpu", "seed": 0,
            "dataset": {"path": "builtin:arithmetic", "format": "gsm8k", "split": "train", "max_examples": 16},
            "train": {"method": "full", "learning_rate": 1e-2, "epochs": 1, "max_steps": 4, "batch_size": 4,
                      "max_length": 64, "save_steps": 2},
            "track": "safety",
            "track_forgetting": {"every_steps": 1, "n_prompts": {"safety": 2, "helpfulness": 2}, "max_new_tokens": 4},
            "judges": {"safety": judge, "helpfulness": judge}, "data": {"safety_prompts": "builtin:safety_prompts"}}
    run_sft(spec, tiny, tmp_path / "out", tmp_path / "ckpt")
    logged = {h["step"]: h["loss"] for h in map(json.loads, open(tmp_path / "out" / "train_log.jsonl"))
              if "loss" in h}
    rows = {int(r["step"]): r["train_loss"] for r in read_rows(tmp_path / "out" / "tracking.csv")}
    assert sorted(rows) == [0, 1, 2, 3, 4] and rows[0] == ""
    assert len(set(logged.values())) == 4  # the losses differ from step to step, so an off-by-one shows
    for step in (1, 2, 3, 4):
        assert float(rows[step]) == pytest.approx(logged[step]), step


def test_a_kl_only_probe_adds_its_kl_columns_and_changes_nothing_else(tiny, other_tiny, tmp_path, monkeypatch):
    """A probe without a judge (the fine-tuning data's held-out prompts): sampled only, its own KL columns, left out
    of the overall KL and of the greedy pass; the judged probes' numbers are those of a tracker without it."""
    ref, _ = load_causal_lm(other_tiny)
    data = ["bake bread how", "here is bread", "make a plan"]
    tracker, model, tokenizer, _ = _tracker(tiny, ref, tmp_path / "a")
    plain = tracker.measure(model, 0)
    model, tokenizer = load_causal_lm(tiny)
    judges = RecordingJudge(), RecordingJudge()
    with_data = ForgettingTracker(
        ref_model=ref, tokenizer=tokenizer, csv_path=tmp_path / "b.csv", every_steps=1, max_new_tokens=6, seed=0,
        probes=[Probe("ft_data", data), Probe("safety", SAFETY, judges[0]), Probe("helpfulness", NORMAL, judges[1])])
    assert with_data.fields == fields(["safety", "helpfulness"], ["ft_data"])
    assert "ft_data_reward_greedy" not in with_data.fields and "kl_ft_data_sampled" in with_data.fields
    greedy_calls = []
    real_generate = track.generate
    monkeypatch.setattr(track, "generate", lambda m, t, prompts, **k: greedy_calls.append((list(prompts), k))
                        or real_generate(m, t, prompts, **k))
    row = with_data.measure(model, 0)
    sampled, sampled_data, greedy = greedy_calls
    assert sampled[0] == SAFETY + NORMAL and sampled[1]["do_sample"]
    assert sampled_data[0] == data and sampled_data[1]["do_sample"]
    assert greedy[0] == SAFETY + NORMAL and not greedy[1]["do_sample"]
    # the judged probes are sampled first, in a generation of their own, as without the KL-only probe: the same
    # samples, the same numbers
    for col in ("kl_per_token_sampled", "kl_per_sequence_sampled", "kl_safety_sampled", "safety_reward_greedy",
                "safety_reward_sampled", "helpfulness_reward_sampled"):
        assert row[col] == pytest.approx(plain[col], rel=1e-6), col
    assert row["kl_ft_data_sampled"] > 0 and row["n_ft_data"] == len(data)
    assert list(read_rows(tmp_path / "b.csv")[0]) == with_data.fields
    with pytest.raises(ValueError, match="named twice"):
        fields(["safety"], ["safety"])
