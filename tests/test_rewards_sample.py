"""Sampled rewards of a model for the forgetting floor: `frpo sample-rewards` on a tiny model (the file's shape,
the judge's scores of the very completions sampled, a fixed seed repeating the file), `frpo collect rewards`
(one row per sample) and `frpo floor` reading the file, one probe at a time."""

from __future__ import annotations

import hashlib
import json

import pandas as pd
import pytest
import torch

from frpo.cli import main
from frpo.judges.base import _REGISTRY, register
from frpo.rewards_sample import probe_seed, sampling_options, summary_path
from frpo.tables import IDENTITY, rewards_table

N, PROMPTS = 3, {"safety": 2, "helpfulness": 3}


class HashJudge:
    """Test double: a score in [0, 1) from the response's hash, so different completions score differently."""

    name, version = "rewards_hash_test_double", "test"
    calls: list = []

    def score(self, prompts, responses):
        HashJudge.calls.append((list(prompts), list(responses)))
        return [score_of(r) for r in responses]


def score_of(text: str) -> float:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 2**32


if HashJudge.name not in _REGISTRY:
    register(HashJudge.name)(lambda **kw: HashJudge())


def _spec(seed: int = 0) -> dict:
    judge = {"name": HashJudge.name}
    return {"track": "safety", "device": "cpu", "seed": seed, "data": {"safety_prompts": "builtin:safety_prompts"},
            "judges": {"safety": judge, "helpfulness": judge},
            "track_forgetting": {"n_prompts": PROMPTS, "max_new_tokens": 8},
            "samples": {"n": N, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 5, "batch_size": 4}}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny Llama whose word vocabulary covers the probe prompts (so completions are words, not unknowns)."""
    from frpo.data import builtin, read_jsonl
    from frpo.tiny import save_tiny_model

    words = sorted({w for r in read_jsonl(builtin("safety_prompts")) for w in r["prompt"].lower().split()})
    return save_tiny_model(tmp_path_factory.mktemp("tiny"), words, hidden_size=32, num_heads=2, seed=0)


@pytest.fixture(scope="module")
def sampled(tiny, tmp_path_factory):
    """`frpo sample-rewards` run three times: seed 0 twice (into two files) and seed 1; the judge's calls of the
    first run."""
    root = tmp_path_factory.mktemp("rewards")
    runs = {}
    for name, seed in (("first", 0), ("again", 0), ("other", 1)):
        HashJudge.calls = []
        out = root / name / "rewards.jsonl"
        assert main(["sample-rewards", "--spec", json.dumps(_spec(seed)), "--model", str(tiny),
                     "--out", str(out)]) == 0
        runs[name] = {"out": out, "calls": HashJudge.calls}
    return runs


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_probe_prompt_with_n_rewards_from_the_judge_on_the_sampled_completions(tiny, sampled):
    from frpo.generation import generate
    from frpo.models import load_causal_lm
    from frpo.tracks import get_track

    lines = _lines(sampled["first"]["out"])
    probes = get_track("safety").probes(_spec())
    assert [(r["probe"], r["prompt_index"]) for r in lines] == [
        (p.name, i) for p in probes for i in range(PROMPTS[p.name])]
    assert [r["prompt"] for r in lines] == [q for p in probes for q in p.prompts]  # the tracker's prompts
    assert all(len(r["rewards"]) == N and all(0 <= x < 1 for x in r["rewards"]) for r in lines)
    # the judge saw each prompt n times, side by side, once per probe
    calls = sampled["first"]["calls"]
    assert [c[0] for c in calls] == [[q for q in p.prompts for _ in range(N)] for p in probes]
    # ... and scored samples drawn under the probe's seed: regenerate them independently
    model, tokenizer = load_causal_lm(tiny)
    for probe, (_, texts) in zip(probes, calls, strict=True):
        torch.manual_seed(probe_seed(0, probe.name))
        again = generate(model, tokenizer, [q for q in probe.prompts for _ in range(N)], max_new_tokens=5,
                         do_sample=True, batch_size=4)
        assert texts == again.texts
        ours = [x for r in lines if r["probe"] == probe.name for x in r["rewards"]]
        assert ours == [score_of(t) for t in texts]
    assert any(len(set(r["rewards"])) > 1 for r in lines)  # the n completions of a prompt are samples, not copies


def test_a_fixed_seed_repeats_the_file_and_the_summary_records_the_sampling(sampled):
    first, again, other = (sampled[k]["out"] for k in ("first", "again", "other"))
    assert first.read_text() == again.read_text()
    assert _lines(other) != _lines(first)  # another seed samples otherwise: the equality above is not vacuous
    summary = json.loads(summary_path(first).read_text())
    assert summary_path(first).name == "rewards.summary.json"
    assert summary["lines"] == sum(PROMPTS.values()) and summary["n"] == N and summary["seconds"] > 0
    for name, count in PROMPTS.items():
        probe = summary["probes"][name]
        assert (probe["prompts"], probe["samples"]) == (count, count * N)
        rewards = [x for r in _lines(first) if r["probe"] == name for x in r["rewards"]]
        assert probe["mean_reward"] == pytest.approx(sum(rewards) / len(rewards))
    generation = summary["generation"]
    assert generation["do_sample"] is True and generation["max_new_tokens"] == 5
    assert (generation["temperature"], generation["top_p"], generation["top_k"]) == (1.0, 1.0, 0)
    assert generation["repetition_penalty"] == 1.0  # nothing of the model's own generation config leaks in
    assert summary["dtype"] == "float32" and summary["samples"]["batch_size"] == 4


def test_collect_rewards_gives_one_row_per_sample_with_the_rl_runs_identity(sampled, tmp_path, capsys):
    out = tmp_path / "rewards.csv"
    inputs = [f"rl/frpo_lam0.5/seed0={sampled['first']['out']}", f"rl/grpo/seed1={sampled['other']['out']}"]
    assert main(["collect", "rewards", "--track", "safety", "--out", str(out), *inputs]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == 2 * N * sum(PROMPTS.values())
    table = pd.read_csv(out)
    assert list(table.columns) == IDENTITY + ["probe", "prompt_index", "sample", "reward"]
    frpo = table[table["run"] == "frpo_lam0.5"]
    assert set(frpo["lambda"]) == {0.5} and set(frpo["rl_seed"]) == {0} and set(frpo["stage"]) == {"rl"}
    assert set(table[table["run"] == "grpo"]["rl_seed"]) == {1}
    for line in _lines(sampled["first"]["out"]):
        rows = frpo[(frpo["probe"] == line["probe"]) & (frpo["prompt_index"] == line["prompt_index"])]
        assert rows["sample"].tolist() == list(range(N))
        assert rows["reward"].tolist() == pytest.approx(line["rewards"])


def test_floor_reads_one_probe_of_a_sample_rewards_file(sampled, tmp_path, capsys):
    path = sampled["first"]["out"]
    assert main(["floor", "--rewards", str(path), "--probe", "helpfulness", "--rho", "0.05"]) == 0
    out = json.loads(capsys.readouterr().out)
    lists = tmp_path / "lists.jsonl"  # the same rewards as plain lists: the same floor
    lists.write_text("".join(json.dumps(r["rewards"]) + "\n" for r in _lines(path) if r["probe"] == "helpfulness"))
    assert main(["floor", "--rewards", str(lists), "--rho", "0.05"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert out["probe"] == "helpfulness" and out["prompts"] == PROMPTS["helpfulness"] == plain["prompts"]
    assert out["floor"] == plain["floor"]
    with pytest.raises(SystemExit, match="holds the probes safety, helpfulness: pick one with --probe"):
        main(["floor", "--rewards", str(path), "--rho", "0.05"])
    with pytest.raises(SystemExit, match="has no probe 'math'"):
        main(["floor", "--rewards", str(path), "--probe", "math", "--rho", "0.05"])
    with pytest.raises(SystemExit, match="plain lists of rewards"):
        main(["floor", "--rewards", str(lists), "--probe", "safety", "--rho", "0.05"])


def test_bad_rewards_files_are_refused_naming_file_and_line(tmp_path):
    record = {"probe": "math", "prompt_index": 0, "prompt": "p", "rewards": [1.0, 0.0]}
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps(record) + "\n" + json.dumps([1.0, 0.0]) + "\n")
    with pytest.raises(SystemExit, match=r"mixed\.jsonl:2: mixes lists"):
        main(["floor", "--rewards", str(mixed), "--rho", "0.1"])
    twice = tmp_path / "twice.jsonl"  # two files concatenated: the same prompt twice
    twice.write_text((json.dumps(record) + "\n") * 2)
    with pytest.raises(SystemExit, match=r"twice\.jsonl:2: probe 'math' prompt_index 0 again \(first on line 1\)"):
        main(["floor", "--rewards", str(twice), "--rho", "0.1"])
    empty = tmp_path / "empty.jsonl"
    empty.write_text(json.dumps({**record, "rewards": []}) + "\n")
    with pytest.raises(SystemExit, match=r"empty\.jsonl:1: expected a non-empty list"):
        main(["floor", "--rewards", str(empty), "--rho", "0.1"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(record) + "\n" + json.dumps({**record, "prompt_index": 1, "rewards": [float("nan")]})
                   + "\n")
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: expected an object with probe"):
        rewards_table("math", [("rl/grpo/seed0", bad)])


def test_sampling_options_are_checked_naming_the_key():
    spec = _spec()
    assert sampling_options(spec)["n"] == N
    del spec["samples"]["max_new_tokens"]
    assert sampling_options(spec)["max_new_tokens"] == 8  # the tracker's length
    for key, value, match in (("n", 0, "samples.n"), ("n", 2.5, "samples.n"),
                              ("temperature", 0, "samples.temperature"), ("top_p", 1.5, "samples.top_p"),
                              ("seeds", 3, "unknown key.*seeds")):
        bad = _spec()
        bad["samples"][key] = value
        with pytest.raises(ValueError, match=match):
            sampling_options(bad)
