"""The RL stage on two processes (DDP over gloo on the CPU, started by ``frpo launch``), against one process.

One launch of tests/distributed/rl_worker.py runs every multi-process part (see its docstring); the one-process
reference runs in this process. Generation is made deterministic in both (a completion is a function of its
prompt and its index within the group), so the global batch of an optimiser step is the same whatever the
process count, and the loss and the gradient after DDP's all-reduce must be too.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "distributed"))

import rl_worker  # noqa: E402

G = rl_worker.G
LAUNCH_TIMEOUT_S = 300
#: logged values that are times, not results
TIMES = {"step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    from frpo.data import builtin, read_jsonl
    from frpo.tiny import save_tiny_model
    from frpo.toy import VOCAB

    root = tmp_path_factory.mktemp("distributed_rl")
    words = list(VOCAB) + [r["prompt"].lower() for r in read_jsonl(builtin("safety_prompts"))]
    model = save_tiny_model(root / "model", words, hidden_size=32, num_heads=2, seed=0)
    work, ref = root / "two", root / "one"
    work.mkdir()
    cmd = [sys.executable, "-m", "frpo.cli", "launch", "--processes", "2", "--config",
           str(REPO / "config" / "accelerate" / "ddp.yaml"), "--", str(REPO / "tests" / "distributed" /
                                                                     "rl_worker.py"), str(model), str(work)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    log = root / "launch.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rl_worker.run_reference(model, ref)  # meanwhile: the launch spends most of its time starting up
            rc = proc.wait(timeout=LAUNCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:  # a process waiting forever in a collective
            pytest.fail(f"the 2-process launch hung: no exit in {LAUNCH_TIMEOUT_S} s\n{log.read_text()[-6000:]}")
        finally:
            if proc.poll() is None:  # SIGTERM: torchrun passes it on to its workers (each in a session of its own)
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
    return SimpleNamespace(work=work, ref=ref, model=model, rc=rc, log=log.read_text()[-6000:])


def _done(runs) -> None:
    """Every part before the failing one ran to its end on both processes."""
    for r in (0, 1):
        assert (runs.work / f"done_rank{r}").is_file(), f"process {r} did not get through the parts:\n{runs.log}"


def _records(directory: Path, tag: str) -> dict:
    return torch.load(directory / "records" / f"{tag}.pt", weights_only=False)


def test_groups_are_whole_identified_and_the_same_global_batch_on_every_process(runs):
    from transformers import AutoTokenizer

    _done(runs)
    tok = AutoTokenizer.from_pretrained(runs.model)
    word_ids = [tok.convert_tokens_to_ids(w) for w in rl_worker.REFUSAL + rl_worker.REPLY]
    ranks = [_records(runs.work, f"frpo_rank{r}")["batches"] for r in (0, 1)]
    one = _records(runs.ref, "frpo_1proc")["batches"]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == 2  # one generation batch per optimiser step
    for step, (b0, b1, b) in enumerate(zip(ranks[0], ranks[1], one, strict=True)):
        assert [b0["process_index"], b1["process_index"]] == [0, 1]
        ids_per_rank = []
        for batch in (b0, b1):
            n_local = len(batch["group_ids"])
            assert n_local == 2 * G
            rewards = torch.tensor(batch["gathered_rewards"]).nansum(dim=1)  # one reward function per row's task
            start = batch["process_index"] * n_local
            for j in range(n_local):  # the gathered rewards are this process's rows, at its offset
                assert rewards[start + j] == rl_worker.keyword_reward(batch["tasks"][j], batch["texts"][j])
            gids = torch.tensor(batch["group_ids"])
            local = rewards[start:start + n_local]
            for g in gids.unique().tolist():
                rows = (gids == g).nonzero().flatten().tolist()
                assert len(rows) == G, f"step {step}: group {g} has {len(rows)} rows on one process"
                assert len({batch["prompts"][i] for i in rows}) == 1, f"group {g} mixes prompts"
                prompt_ids = batch["prompt_ids"][rows[0]]
                expected = sorted(rl_worker.completion_for(prompt_ids, k, word_ids, tok.eos_token_id, 6)
                                  for k in range(G))
                assert sorted(batch["completion_ids"][i] for i in rows) == expected  # the G completions
                # TRL's advantages (reward minus the mean of its group in the gathered batch) agree with group_ids
                adv = torch.tensor(batch["advantages"])[rows]
                assert torch.allclose(adv, local[rows] - local[rows].mean(), atol=1e-6)
            ids_per_rank.append(set(gids.tolist()))
        assert not ids_per_rank[0] & ids_per_rank[1], "a group id is used on both processes"
        assert ids_per_rank[0] | ids_per_rank[1] == set(range(4))
        # the global batch is the one process's batch, row for row
        assert b0["prompts"] + b1["prompts"] == b["prompts"]
        assert b0["completion_ids"] + b1["completion_ids"] == b["completion_ids"]
        assert b0["advantages"] + b1["advantages"] == pytest.approx(b["advantages"], abs=1e-6)


@pytest.mark.parametrize("objective", ["frpo", "grpo"])
def test_loss_and_gradients_equal_those_of_one_process(runs, objective):
    _done(runs)
    two = [_records(runs.work, f"{objective}_rank{r}") for r in (0, 1)]
    one = _records(runs.ref, f"{objective}_1proc")
    assert len(one["losses"]) == len(one["grads"]) == 2
    assert one["losses"][1] != 0  # (GRPO's first loss is 0: centred advantages, ratio 1)
    for step in range(2):
        # each process averages over its half of the groups; the two halves are the same size
        assert (two[0]["losses"][step] + two[1]["losses"][step]) / 2 == pytest.approx(one["losses"][step],
                                                                                      abs=1e-6)
        g0, g1, g = two[0]["grads"][step], two[1]["grads"][step], one["grads"][step]
        assert set(g0) == set(g) and len(g) == 8  # LoRA A and B of q_proj and v_proj in two layers
        assert max(t.abs().max().item() for t in g.values()) > 1e-4  # a real gradient, not zeros
        for name in g:
            assert torch.equal(g0[name], g1[name]), f"{name}: DDP left the processes with different gradients"
            assert torch.allclose(g0[name], g[name], rtol=1e-4, atol=1e-7), (
                f"{objective} step {step + 1} {name}: max |Δ| {(g0[name] - g[name]).abs().max().item():.3g}")


def test_a_reward_function_failing_on_one_process_stops_every_process(runs):
    _done(runs)
    assert runs.rc != 0
    messages = {r: (runs.work / "errors" / f"rank{r}.txt").read_text() for r in (0, 1)}
    for r, message in messages.items():
        assert message.startswith("RewardFailureError: reward function 'safety' raised on 8 of 16 completions "
                                  "(process 1) during step 1"), f"process {r}: {message}"
        assert "max_reward_failure_fraction=0.0" in message
    assert "JudgeHTTPError: fake judge: HTTP 503 on process 1" in messages[1]  # the failing process's own error
    assert not (runs.work / "out" / "strict").exists()


def test_reward_failures_within_the_allowed_fraction_train_on_and_none_is_no_failure(runs):
    _done(runs)
    for r in (0, 1):
        out = json.loads((runs.work / f"tolerant_rank{r}.json").read_text())
        # process 1's 8 rows failed; process 0's rows that one function left None are no failures
        assert out["global_step"] == 1 and out["reward_failures"] == 8.0 and math.isfinite(out["loss"])
    # the safety track's two reward functions each return None for the other task's rows: still no failure
    rows = [json.loads(line) for line in (runs.work / "out" / "frpo" / "metrics.jsonl").read_text().splitlines()]
    assert [row["frpo/reward_failures"] for row in rows] == [0.0, 0.0]


def test_only_the_main_process_writes_the_outputs(runs):
    _done(runs)
    audit = [json.loads((runs.work / f"audit_rank{r}.json").read_text()) for r in (0, 1)]
    assert audit[1] == [], f"process 1 wrote into the output directory: {audit[1]}"
    partial = str(runs.work / "out" / ".frpo.partial")
    opened = {Path(path).name for event, path in audit[0] if event == "open" and path.startswith(partial)}
    assert {"metrics.jsonl", "summary.json", "adapter_config.json"} <= opened
    assert ["os.rename", partial] in audit[0]
    out = runs.work / "out" / "frpo"
    assert sorted(p.name for p in out.iterdir()) == ["adapter", "metrics.jsonl", "summary.json"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert not Path(partial).exists()
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["per_device_train_batch_size"] == 2 * G
    # the group-shuffle state is per process by design
    ckpt = runs.work / "ckpt" / "frpo" / "checkpoint-2"
    assert sorted(p.name for p in ckpt.glob("frpo_group_shuffle_*.pth")) == [
        "frpo_group_shuffle_0.pth", "frpo_group_shuffle_1.pth"]


def test_a_run_stopped_after_step_one_and_resumed_ends_as_an_uninterrupted_one(runs):
    from safetensors.torch import load_file

    _done(runs)
    out = runs.work / "out"
    summary = json.loads((out / "cut" / "summary.json").read_text())
    assert summary["resumed_from"] == str(runs.work / "ckpt" / "cut" / "checkpoint-1")

    def weights(run):
        return load_file(str(out / run / "adapter" / "adapter_model.safetensors"))

    def metrics(run):
        rows = [json.loads(line) for line in (out / run / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in row.items() if k not in TIMES | {"run"}} for row in rows]

    resumed, uninterrupted, after_one = weights("cut"), weights("sampled"), weights("cut_step1")
    assert resumed.keys() == uninterrupted.keys()
    for name in resumed:
        assert torch.equal(resumed[name], uninterrupted[name]), name
    assert any(not torch.equal(after_one[n], resumed[n]) for n in resumed)  # step 2 did change the adapter
    assert metrics("cut") == metrics("sampled")
    assert [row["step"] for row in metrics("cut")] == [1, 2]


# -- the guard itself, on one process: each kind of reward function --------------------------------------------
class _RewardModel(torch.nn.Module):
    """A reward model as TRL calls it (``model(**inputs).logits``); it fails while ``broken`` is set."""

    config = SimpleNamespace(_name_or_path="tiny-rm")

    def __init__(self):
        super().__init__()
        self.broken = False
        self.head = torch.nn.Linear(1, 1)

    def forward(self, input_ids, **kwargs):
        if self.broken:
            raise RuntimeError("CUDA out of memory (pretend)")
        return SimpleNamespace(logits=self.head(input_ids[:, :1].float()))


def test_each_kind_of_reward_function_fails_into_counted_rows_not_an_exception(tmp_path):
    from transformers import AutoTokenizer

    from conftest import make_config
    from frpo.tiny import save_tiny_model
    from frpo.toy import VOCAB, toy_dataset
    from frpo.trainer import FRPOConfig, FRPOTrainer, RewardFailureError

    broken: set[str] = set()

    def harmful_only(prompts, completions, task, **kw):
        return [1.0 if t == "safety" else None for t in task]

    def sync_judge(prompts, **kw):
        if "sync_judge" in broken:
            raise TimeoutError("judge API timed out")
        return [0.5] * len(prompts)

    async def async_judge(prompts, **kw):
        await asyncio.sleep(0)
        if "async_judge" in broken:
            raise ConnectionError("judge API unreachable")
        return [0.25] * len(prompts)

    def short(prompts, **kw):
        return [0.0] * (len(prompts) - ("short" in broken))

    model_dir = save_tiny_model(tmp_path / "model", VOCAB, hidden_size=16, num_heads=2, seed=0)
    tok = AutoTokenizer.from_pretrained(model_dir)
    rm = _RewardModel()
    trainer = FRPOTrainer(model=str(model_dir), reward_funcs=[harmful_only, sync_judge, async_judge, short, rm],
                          reward_processing_classes=[None, None, None, None, tok],
                          args=make_config(tmp_path, max_steps=1), train_dataset=toy_dataset(),
                          processing_class=tok)
    assert trainer.reward_func_names == ["harmful_only", "sync_judge", "async_judge", "short", "tiny-rm"]
    trainer.model.train()  # the failures are logged under the mode the model is in
    tasks = ["safety", "normal"] * G
    inputs = [{"prompt": "p", "task": t} for t in tasks]

    def rewards():
        return trainer._calculate_rewards(inputs, ["p"] * len(tasks), ["sorry"] * len(tasks), [[1]] * len(tasks))

    failures = trainer._metrics["train"]["frpo/reward_failures"]
    out = rewards()
    assert failures == [0.0]  # harmful_only's None rows are TRL's "not mine to score", not failures
    assert torch.isnan(out[:, 0]).tolist() == [t == "normal" for t in tasks]
    assert not torch.isnan(out[:, 1:]).any()

    trainer.args.max_reward_failure_fraction = 1.0
    for name in ("sync_judge", "async_judge", "short", "rm"):
        broken.clear()
        broken.add(name)
        rm.broken = name == "rm"
        out = rewards()
        assert torch.isnan(out).all(), name  # every row failed: no advantage for any of them
        assert failures[-1] == len(tasks)

    trainer.args.max_reward_failure_fraction = 0.0
    broken.clear()
    rm.broken = True
    with pytest.raises(RewardFailureError, match=r"reward function 'tiny-rm' raised on 8 of 8 completions "
                                                 r"\(process 0\).*RuntimeError: CUDA out of memory \(pretend\)"):
        rewards()
    rm.broken = False
    broken.add("short")
    with pytest.raises(RewardFailureError, match=r"'short'.*ValueError: returned 7 rewards for 8 completions"):
        rewards()
    with pytest.raises(ValueError, match=r"max_reward_failure_fraction=1.5 must lie in \[0, 1\]"):
        FRPOConfig(output_dir=str(tmp_path), num_generations=G, per_device_train_batch_size=G, use_cpu=True,
                   max_reward_failure_fraction=1.5)
