"""The RL stage on several processes (tests/test_distributed_rl.py): run under ``frpo launch --processes 2`` as

    rl_worker.py MODEL_DIR WORK_DIR

it runs, in order and in one process group (each multi-process start costs ~10 s), every part below and leaves
what it saw under WORK_DIR for the test to compare. The last part fails on purpose, so the launch exits non-zero.

* ``frpo`` / ``grpo``: ``run_rl`` with deterministic generation (:func:`deterministic_generation`: a completion is
  a function of its prompt and its index within the group), so that the global batch is the same whatever the
  process count and the test can compare losses and gradients with the same runs on one process
  (:func:`run_reference`, in pytest). Groups, rewards, losses and the gradients after DDP's all-reduce are saved
  per process (:func:`recording`); an audit hook notes which process wrote into the output directory.
* ``sampled`` / ``cut``: real sampling; ``cut`` stops after step 1 and resumes to step 2 from its checkpoint,
  ``sampled`` runs both steps at once.
* ``tolerant``: a reward function raises on process 1 only, ``max_reward_failure_fraction=1.0``: training goes on.
* ``strict``: a judge raises on process 1 only, with the default fraction 0.0: every process must raise.

The judges are stand-ins registered for the duration (:func:`stand_in_judges`), scoring refusal keywords.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import sys
import time
import zlib
from pathlib import Path
from unittest import mock

G = 4
REFUSAL = ("sorry", "cannot", "refuse")
REPLY = ("sure", "here", "is", "a", "plan", "ok", "yes", "maybe")


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


# -- the judges --------------------------------------------------------------------------------------------------
class KeywordJudge:
    """1 when the response refuses (``refusal=True``) or does not refuse (``refusal=False``), else 0."""

    version = "keywords-1"

    def __init__(self, refusal: bool = True, fail_on_rank: int | None = None):
        self.name = "test_refusal" if refusal else "test_helpful"
        self.refusal, self.fail_on_rank = refusal, fail_on_rank

    def score(self, prompts, responses):
        if self.fail_on_rank == rank():
            from frpo.judges.base import JudgeHTTPError

            raise JudgeHTTPError(f"fake judge: HTTP 503 on process {rank()}")
        return [float(any(w in r.lower().split() for w in REFUSAL) == self.refusal) for r in responses]


def keyword_reward(task: str, text: str) -> float:
    """What the safety track's two reward functions give one row with these judges (the other one gives None)."""
    return KeywordJudge(refusal=task == "safety").score([""], [text])[0]


@contextlib.contextmanager
def stand_in_judges():
    from frpo.judges.base import _REGISTRY, JudgeSpec

    specs = {name: JudgeSpec(name=name, factory=lambda name=name, **o: KeywordJudge(name == "test_refusal", **o),
                             env=(), doc="test stand-in")
             for name in ("test_refusal", "test_helpful")}
    with mock.patch.dict(_REGISTRY, specs):
        yield


def spec(run: str, objective: str = "frpo", steps: int = 2, safety_judge: dict | None = None) -> dict:
    return {
        "track": "safety", "run": run, "objective": objective, "frpo_lambda": 0.5, "seed": 0, "device": "cpu",
        "rl": {"steps": steps, "prompts_per_step": 4, "num_generations": G, "max_completion_length": 6,
               "learning_rate": 1e-2, "beta": 0.05, "save_steps": 1, "jackknife": True, "baseline": True,
               "lora": {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"]}},
        "judges": {"safety": safety_judge or {"name": "test_refusal"}, "helpfulness": {"name": "test_helpful"}},
        "data": {"safety_prompts": "builtin:safety_prompts"},
    }


# -- deterministic generation and what a run saw -----------------------------------------------------------------
def completion_for(prompt_ids: list[int], index: int, word_ids: list[int], eos: int, max_len: int) -> list[int]:
    """Completion ``index`` of the group of ``prompt_ids``: a fixed function of both."""
    rng = random.Random(zlib.crc32(repr((list(prompt_ids), index)).encode()))
    ids = [rng.choice(word_ids) for _ in range(rng.randint(1, max_len))]
    return ids + [eos] if len(ids) < max_len and rng.random() < 0.5 else ids


@contextlib.contextmanager
def deterministic_generation():
    """Replace the sampling of completions by :func:`completion_for` (the index of a row within its group is the
    number of earlier rows of the same prompt on this process, modulo G)."""
    from frpo.trainer import FRPOTrainer

    def generate(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False):
        tok = self.processing_class
        word_ids = [tok.convert_tokens_to_ids(w) for w in REFUSAL + REPLY]
        seen: dict[tuple, int] = {}
        out = []
        for ids in prompt_ids:
            k = seen.get(tuple(ids), 0)
            seen[tuple(ids)] = k + 1
            out.append(completion_for(ids, k % num_generations, word_ids, tok.eos_token_id,
                                      self.max_completion_length))
        return out, None

    with mock.patch.object(FRPOTrainer, "_generate_single_turn", generate):
        yield


@contextlib.contextmanager
def recording(store: dict):
    """Record into ``store``: per generation batch the rows of this process (prompt, task, prompt and completion
    ids, group id, advantage) and the gathered rewards; per optimiser step the loss of this process and the
    gradients after DDP's all-reduce and the clipping (just before the optimiser step)."""
    from transformers import TrainerCallback

    from frpo.trainer import FRPOTrainer

    store.update(batches=[], losses=[], grads=[])
    generate_and_score, compute_loss, init = (FRPOTrainer._generate_and_score_completions,
                                              FRPOTrainer._compute_loss, FRPOTrainer.__init__)

    def record_batch(self, inputs):
        out = generate_and_score(self, inputs)
        pm, cm = out["prompt_mask"].bool(), out["completion_mask"].bool()
        store["batches"].append({
            "process_index": self.accelerator.process_index,
            "prompts": [str(x["prompt"]) for x in inputs], "tasks": [x["task"] for x in inputs],
            "prompt_ids": [p[m].tolist() for p, m in zip(out["prompt_ids"], pm, strict=True)],
            "completion_ids": [c[m].tolist() for c, m in zip(out["completion_ids"], cm, strict=True)],
            "texts": self.processing_class.batch_decode(
                [c[m] for c, m in zip(out["completion_ids"], cm, strict=True)], skip_special_tokens=True),
            "group_ids": out["group_ids"].tolist(), "advantages": out["advantages"].tolist(),
            "gathered_rewards": self._last_rewards_per_func.tolist(),
        })
        return out

    def record_loss(self, model, inputs):
        loss = compute_loss(self, model, inputs)
        store["losses"].append(loss.item())
        return loss

    class Grads(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
            store["grads"].append({n: p.grad.detach().clone() for n, p in model.named_parameters()
                                   if p.requires_grad and p.grad is not None})

    def init_with_callback(self, *a, **kw):
        init(self, *a, **kw)
        self.add_callback(Grads())

    with (mock.patch.object(FRPOTrainer, "_generate_and_score_completions", record_batch),
          mock.patch.object(FRPOTrainer, "_compute_loss", record_loss),
          mock.patch.object(FRPOTrainer, "__init__", init_with_callback)):
        yield store


def run_recorded(model_dir, work: Path, run: str, objective: str, steps: int, tag: str) -> dict:
    """``run_rl`` of ``run`` with deterministic generation, its records saved to ``work/records/{tag}.pt``."""
    import torch

    from frpo.rl import run_rl

    store: dict = {}
    with stand_in_judges(), deterministic_generation(), recording(store):
        summary = run_rl(spec(run, objective, steps), model_dir, work / "out" / run, work / "ckpt" / run)
    (work / "records").mkdir(parents=True, exist_ok=True)
    torch.save(store, work / "records" / f"{tag}.pt")
    return summary


def run_reference(model_dir, work: Path) -> None:
    """The ``frpo`` and ``grpo`` parts on this one process (what the 2-process parts are compared with)."""
    run_recorded(model_dir, work, "frpo", "frpo", 2, "frpo_1proc")
    run_recorded(model_dir, work, "grpo", "grpo", 2, "grpo_1proc")


# -- who writes into the output directory ------------------------------------------------------------------------
def audit_writes(root: Path, events: list) -> None:
    """Note every file opened for writing, directory made, renamed or removed under ``root`` by this process."""
    root = str(root)
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def hook(event, args):
        if event == "open":
            path, mode, flags = args
            if not (isinstance(mode, str) and any(c in mode for c in "wax+")) and not (flags or 0) & writing:
                return
        elif event in ("os.mkdir", "os.rename", "os.replace", "shutil.rmtree", "os.remove"):
            path = args[0]
        else:
            return
        if isinstance(path, (str, os.PathLike)) and os.fspath(path).startswith(root):
            events.append([event, os.fspath(path)])

    sys.addaudithook(hook)


def wait_for_files(paths: list[Path], deadline_s: float = 60.0) -> None:
    """Wait until every process has written its file (so that the launcher, which stops the other processes once
    one exits with an error, cannot stop one before it has written)."""
    end = time.monotonic() + deadline_s
    while not all(p.exists() for p in paths) and time.monotonic() < end:
        time.sleep(0.1)


def tolerant(model_dir, work: Path) -> None:
    """A reward function that raises on process 1, next to one that returns None for half the rows (no failure),
    with ``max_reward_failure_fraction=1.0``: one step completes and logs how many completions failed."""
    from transformers import AutoTokenizer

    from frpo.toy import toy_dataset, toy_reward
    from frpo.trainer import FRPOConfig, FRPOTrainer

    def harmful_only(prompts, completions, task, **kw):
        rewards = toy_reward(prompts, completions, task)
        return [r if t == "safety" else None for r, t in zip(rewards, task, strict=True)]

    def flaky(prompts, completions, task, **kw):
        if rank() == 1:
            raise ConnectionError("judge API unreachable from process 1")
        return toy_reward(prompts, completions, task)

    config = FRPOConfig(output_dir=str(work / "ckpt" / "tolerant"), per_device_train_batch_size=2 * G,
                        num_generations=G, max_completion_length=4, max_steps=1, beta=0.0, use_cpu=True,
                        report_to=[], save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0,
                        max_reward_failure_fraction=1.0)
    trainer = FRPOTrainer(model=str(model_dir), reward_funcs=[harmful_only, flaky], args=config,
                          train_dataset=toy_dataset(), processing_class=AutoTokenizer.from_pretrained(model_dir))
    trainer.train()
    logged = [h for h in trainer.state.log_history if "frpo/reward_failures" in h]
    (work / f"tolerant_rank{rank()}.json").write_text(json.dumps(
        {"global_step": trainer.state.global_step, "reward_failures": logged[0]["frpo/reward_failures"],
         "loss": logged[0]["loss"]}))


def strict(model_dir, work: Path) -> None:
    """The safety judge raises on process 1 only; the default max_reward_failure_fraction (0.0)."""
    from frpo.rl import run_rl

    errors = work / "errors"
    errors.mkdir(exist_ok=True)
    flaky = {"name": "test_refusal", "options": {"fail_on_rank": 1}}
    try:
        with stand_in_judges():
            run_rl(spec("strict", safety_judge=flaky), model_dir, work / "out" / "strict",
                   work / "ckpt" / "strict")
    except Exception as exc:
        (errors / f"rank{rank()}.txt").write_text(f"{type(exc).__name__}: {exc}")
        wait_for_files([errors / f"rank{r}.txt" for r in range(int(os.environ["WORLD_SIZE"]))])
        raise
    (errors / f"rank{rank()}.txt").write_text("completed")


def part(name: str, start=time.monotonic()) -> None:
    print(f"rl_worker process {rank()}: {name} at {time.monotonic() - start:.1f} s", file=sys.stderr, flush=True)


def main(model_dir: str, work: str) -> None:
    from frpo.rl import run_rl

    work = Path(work)
    events: list = []
    audit_writes(work / "out", events)  # the frpo part's output directory and its temporary twin
    part("frpo")
    run_recorded(model_dir, work, "frpo", "frpo", 2, f"frpo_rank{rank()}")
    (work / f"audit_rank{rank()}.json").write_text(json.dumps(events))
    part("grpo")
    run_recorded(model_dir, work, "grpo", "grpo", 2, f"grpo_rank{rank()}")
    with stand_in_judges():
        part("sampled")
        run_rl(spec("sampled"), model_dir, work / "out" / "sampled", work / "ckpt" / "sampled")
        part("cut")
        run_rl(spec("cut", steps=1), model_dir, work / "out" / "cut_step1", work / "ckpt" / "cut")
        part("cut, resumed")
        run_rl(spec("cut"), model_dir, work / "out" / "cut", work / "ckpt" / "cut")
    part("tolerant")
    tolerant(model_dir, work)
    (work / f"done_rank{rank()}").write_text("ok")
    part("strict")
    strict(model_dir, work)


if __name__ == "__main__":
    main(*sys.argv[1:3])
