"""Fine-tuning (frpo.sft.run_sft) and the forgetting tracker on two processes: real ``frpo launch --processes 2``
jobs (DDP over gloo on the CPU) against the same runs on one process.

Two launches, in one module-scoped fixture (each launch costs seconds of start-up): the first runs full and LoRA
fine-tuning to the end, then a third run that every process abandons at step 3 (``os._exit``, between checkpoint
2 and the end, after that step's tracker row is written); the second launch reruns that one, which resumes from
checkpoint 2. While the first launch runs, this process runs the single-process references. One optimiser step
sees the same global batch either way: one process with batch size 4, two processes with batch size 2 each.

What each process did comes from tests/distributed/sft_worker.py's records (writes, measurements, return)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed" / "sft_worker.py"
DDP = ROOT / "config" / "accelerate" / "ddp.yaml"
LAUNCH_TIMEOUT_S = 300
KL_COLUMNS = ("kl_per_token_sampled", "kl_per_sequence_sampled", "kl_safety_sampled", "kl_helpfulness_sampled")
REWARD_COLUMNS = tuple(f"{p}_reward_greedy{s}" for p in ("safety", "helpfulness")
                       for s in ("", "_ci_low", "_ci_high"))
STEPS, KILL_AT = 3, 3


def _spec(method: str, batch_size: int, every_steps: int) -> dict:
    return {
        "device": "cpu", "seed": 0,
        "dataset": {"path": "builtin:arithmetic", "format": "gsm8k", "split": "train", "max_examples": 16},
        "train": {"method": method, "learning_rate": 1e-2 if method == "lora" else 3e-3, "epochs": 1,
                  "max_steps": STEPS, "batch_size": batch_size, "max_length": 64, "save_steps": 2,
                  "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "track": "safety",
        "track_forgetting": {"every_steps": every_steps, "n_prompts": {"safety": 3, "helpfulness": 3},
                             "max_new_tokens": 8},
        "judges": {"safety": {"name": "hash_test_double"}, "helpfulness": {"name": "hash_test_double"}},
        "data": {"safety_prompts": "builtin:safety_prompts"},
    }


def _tiny_model(root: Path) -> Path:
    """A tiny Llama whose word vocabulary covers the fine-tuning rows and the probe prompts (few unknown words)."""
    from frpo.data import builtin, read_jsonl
    from frpo.tiny import save_tiny_model

    words = set()
    for r in read_jsonl(builtin("arithmetic"))[:40]:
        words.update(f"{r['question']} {r['answer']}".lower().split())
    for r in read_jsonl(builtin("safety_prompts")):
        words.update(r["prompt"].lower().split())
    return save_tiny_model(root / "tiny", sorted(words), hidden_size=32, num_heads=2, seed=0)


def _launch(plan: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "frpo.cli", "launch", "--processes", "2", "--config", str(DDP), "--",
           str(WORKER), str(plan)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(log, "w"), stderr=subprocess.STDOUT)


def _wait(proc: subprocess.Popen, log: Path) -> int:
    try:
        return proc.wait(timeout=LAUNCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"frpo launch ran past {LAUNCH_TIMEOUT_S} s (a hang?); its log ends:\n"
                    f"{log.read_text()[-4000:]}")


class Runs:
    """Where the fixture's runs are, and readers for what they left."""

    def __init__(self, root: Path, model_dir: Path):
        self.root, self.model_dir = root, model_dir
        # what the kill left, read before the rerun changes it
        self.killed_checkpoints: list[str] = []
        self.killed_steps: list[int] = []
        self.killed_out = False

    def out(self, name: str) -> Path:
        return self.root / "out" / name

    def ckpt(self, name: str) -> Path:
        return self.root / "ckpt" / name

    def events(self, name: str, rank: int) -> list[dict]:
        path = self.root / "records" / f"{name}.rank{rank}.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []

    def rows(self, name: str) -> list[dict]:
        from frpo.track import read_rows

        return read_rows(self.out(name) / "tracking.csv")

    def weights(self, name: str) -> dict:
        from safetensors.torch import load_file

        return load_file(self.out(name) / "model" / "model.safetensors")

    def summary(self, name: str) -> dict:
        return json.loads((self.out(name) / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from frpo.sft import run_sft
    from frpo.track import read_rows

    root = tmp_path_factory.mktemp("distributed_sft")
    r = Runs(root, _tiny_model(root))

    def scenario(name, spec, ckpt=None, kill_at=None):
        return {"name": name, "spec": spec, "model_dir": str(r.model_dir), "out": str(r.out(name)),
                "ckpt": str(r.ckpt(ckpt or name)), "kill_at": kill_at}

    def plan(path, *scenarios):
        path.write_text(json.dumps({"record_dir": str(root / "records"), "scenarios": list(scenarios)}))
        return path

    first = plan(root / "first.json", scenario("full2", _spec("full", 2, 1)),
                 scenario("lora2", _spec("lora", 2, 3)), scenario("killed", _spec("full", 2, 1), kill_at=KILL_AT))
    second = plan(root / "second.json", scenario("resumed", _spec("full", 2, 1), ckpt="killed"))

    proc = _launch(first, root / "first.log")
    # meanwhile the single-process references, here (the worker module registers the test judge)
    worker = importlib.util.spec_from_file_location("sft_worker", WORKER)
    worker.loader.exec_module(importlib.util.module_from_spec(worker))
    for name, spec in (("full1", _spec("full", 4, 1)), ("lora1", _spec("lora", 4, 3))):
        run_sft(spec, r.model_dir, r.out(name), r.ckpt(name))
    _wait(proc, root / "first.log")
    finished = all(any(e["event"] == "done" for e in r.events(n, rank))
                   for n in ("full2", "lora2") for rank in (0, 1))
    killed = all(any(e["event"] == "killed" for e in r.events("killed", rank)) for rank in (0, 1))
    assert finished and killed, f"the first launch did not run as planned; its log ends:\n" \
                                f"{(root / 'first.log').read_text()[-4000:]}"
    r.killed_checkpoints = sorted(p.name for p in r.ckpt("killed").glob("checkpoint-*"))
    r.killed_steps = [int(row["step"]) for row in read_rows(r.ckpt("killed") / "tracking.csv")]
    r.killed_out = r.out("killed").exists()
    proc = _launch(second, root / "second.log")
    assert _wait(proc, root / "second.log") == 0, (root / "second.log").read_text()[-4000:]
    return r


def _measurements(events):
    return [(e["step"], e["kl"]) for e in events if e["event"] == "measure"]


@pytest.mark.parametrize("name", ["full2", "lora2", "resumed"])
def test_every_rank_measures_the_same_but_only_the_main_one_writes(runs, name):
    main, other = runs.events(name, 0), runs.events(name, 1)
    assert [e for e in other if e["event"] == "write"] == []
    writes = [e["what"] for e in main if e["event"] == "write"]
    assert f"atomic_dir {runs.out(name)}" in writes
    assert any(w.startswith(f"csv {runs.ckpt('killed' if name == 'resumed' else name)}") for w in writes)
    # the same steps, generated and scored identically on both ranks (the forward passes stay in step)
    assert _measurements(main) and _measurements(other) == _measurements(main)
    # the other rank returned only once the main one had written the outputs
    done = [e for e in other if e["event"] == "done"]
    assert len(done) == 1 and done[0]["out_complete"] and done[0]["summary"]["processes"] == 2


@pytest.mark.parametrize(("one", "two"), [("full1", "full2"), ("lora1", "lora2")])
def test_the_tracker_rows_are_the_same_with_one_and_two_processes(runs, one, two):
    rows1, rows2 = runs.rows(one), runs.rows(two)
    assert [r["step"] for r in rows1] == [r["step"] for r in rows2]
    assert len(rows1) == (STEPS + 1 if one == "full1" else 2)
    # step 0: nothing trained yet, the very same numbers
    assert {k: v for k, v in rows1[0].items() if k != "seconds"} == {k: v for k, v in rows2[0].items()
                                                                       if k != "seconds"}
    for r1, r2 in zip(rows1[1:], rows2[1:], strict=True):
        assert float(r2["kl_per_token_sampled"]) > 1e-5, "training moved the model: the KL is not 0 == 0"
        for key in KL_COLUMNS + ("train_loss",):
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-4, abs=1e-9), (r1["step"], key)
        for key in REWARD_COLUMNS:  # the same greedy completions, so the same judge scores
            assert float(r2[key]) == pytest.approx(float(r1[key]), rel=1e-9), (r1["step"], key)
        assert r2["n_safety"] == r1["n_safety"] == "3"


@pytest.mark.parametrize(("one", "two"), [("full1", "full2"), ("lora1", "lora2")])
def test_two_processes_train_the_same_model_as_one(runs, one, two):
    from safetensors.torch import load_file

    w1, w2 = runs.weights(one), runs.weights(two)
    base = load_file(runs.model_dir / "model.safetensors")
    assert sorted(w2) == sorted(w1) == sorted(base)  # LoRA merged away: no adapter tensors, the base's names
    assert max((w2[k] - base[k]).abs().max().item() for k in base) > 1e-4, "fine-tuning changed the weights"
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=key)
    s1, s2 = runs.summary(one), runs.summary(two)
    assert s2["processes"] == 2 and s1["processes"] == 1 and s1["steps"] == s2["steps"] == STEPS
    assert s2["final_loss"] == pytest.approx(s1["final_loss"], rel=1e-4)
    assert sorted(p.name for p in runs.out(two).iterdir()) == ["model", "summary.json", "tracking.csv",
                                                                 "train_log.jsonl"]
    assert not (runs.ckpt(two) / "final-model").exists()  # the gathered copy is gone once the outputs exist


def test_a_killed_two_process_run_resumes_to_the_uninterrupted_result(runs):
    # the kill came after step 3's row and before its checkpoint
    assert runs.killed_checkpoints == ["checkpoint-2"] and runs.killed_steps == [0, 1, 2, 3]
    assert not runs.killed_out
    assert runs.summary("resumed")["resumed_from"].endswith("checkpoint-2")
    main = runs.events("resumed", 0)
    writes = [e["what"] for e in main if e["event"] == "write"]
    assert writes[0] == f"csv {runs.ckpt('killed') / 'tracking.csv'} w"  # truncated to the checkpoint first
    assert [step for step, _ in _measurements(main)] == [3]  # and step 3 measured again
    resumed, uninterrupted = runs.rows("resumed"), runs.rows("full2")
    assert [r["step"] for r in resumed] == [r["step"] for r in uninterrupted] == ["0", "1", "2", "3"]
    assert resumed[0]["train_loss"] == uninterrupted[0]["train_loss"] == ""  # no loss before the first step
    for a, b in zip(resumed[1:], uninterrupted[1:], strict=True):
        for key in KL_COLUMNS + REWARD_COLUMNS + ("train_loss",):
            assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-6, abs=1e-12), (a["step"], key)
    w, ref = runs.weights("resumed"), runs.weights("full2")
    for key in ref:
        torch.testing.assert_close(w[key], ref[key], rtol=1e-6, atol=1e-7, msg=key)
