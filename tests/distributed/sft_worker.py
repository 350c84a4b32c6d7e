"""Runs ``frpo.sft.run_sft`` scenarios in order, on every process of a ``frpo launch`` job (or on one plain
process): ``python sft_worker.py PLAN.json``. Used by tests/test_distributed_sft.py; not collected by pytest.

PLAN.json: ``{"record_dir": DIR, "scenarios": [{"name", "spec", "model_dir", "out", "ckpt", "kill_at"}]}``.
Each process appends to ``DIR/<name>.rank<R>.jsonl`` what it did (with the time ``t``), so that the test can
tell the ranks apart: ``{"event": "write", "what": ...}`` for every output it wrote (the ``atomic_dir`` of
run_sft, the tracker's CSV writes), ``{"event": "measure", "step", "kl"}`` for every tracker measurement,
``{"event": "done", "summary", "out_complete"}`` when run_sft returns. ``kill_at``: every process dies
(``os._exit``, as under a kill) right after the tracker's log hook at that step, once all of them got there (so
the main process has written that step's row): a job killed between two checkpoints.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from frpo import sft, track
from frpo.judges.base import _REGISTRY, register

RANK = int(os.environ.get("RANK", "0"))
KL = ("kl_per_token_sampled", "kl_per_sequence_sampled")


class HashJudge:
    """Test double: a score in [0, 1) from the text's hash, so any change in a greedy completion changes it."""

    name, version = "hash_test_double", "test"

    def score(self, prompts, responses):
        import hashlib

        return [int(hashlib.sha256(r.encode()).hexdigest()[:8], 16) / 2**32 for r in responses]


if "hash_test_double" not in _REGISTRY:
    register("hash_test_double")(lambda **kw: HashJudge())


def main(plan_path: str) -> None:
    plan = json.loads(Path(plan_path).read_text())
    record_dir = Path(plan["record_dir"])
    record_dir.mkdir(parents=True, exist_ok=True)
    current: dict = {}

    def record(**event) -> None:
        with open(record_dir / f"{current['name']}.rank{RANK}.jsonl", "a") as f:
            f.write(json.dumps({**event, "t": round(time.time(), 3)}) + "\n")

    real_atomic_dir, real_write = sft.atomic_dir, track.ForgettingTracker._write
    real_measure, real_on_log = track.ForgettingTracker.measure, track.ForgettingTracker.on_log

    def atomic_dir(final):
        record(event="write", what=f"atomic_dir {final}")
        return real_atomic_dir(final)

    def write(self, rows, mode="a"):
        record(event="write", what=f"csv {self.csv_path} {mode}")
        return real_write(self, rows, mode)

    def measure(self, model, step, train_loss=None, write=True):
        row = real_measure(self, model, step, train_loss, write)
        record(event="measure", step=step, kl=[row[k] for k in KL])
        return row

    def on_log(self, args, state, control, **kwargs):
        real_on_log(self, args, state, control, **kwargs)
        if current.get("kill_at") == state.global_step:
            if torch.distributed.is_initialized():
                torch.distributed.barrier()
            record(event="killed", step=state.global_step)
            os._exit(17)

    sft.atomic_dir, track.ForgettingTracker._write = atomic_dir, write
    track.ForgettingTracker.measure, track.ForgettingTracker.on_log = measure, on_log
    for scenario in plan["scenarios"]:
        current.clear()
        current.update(scenario)
        summary = sft.run_sft(scenario["spec"], scenario["model_dir"], scenario["out"], scenario["ckpt"])
        # out_complete: whether the outputs were all there when run_sft returned on this process
        record(event="done", summary=summary, out_complete=(Path(scenario["out"]) / "summary.json").is_file())


if __name__ == "__main__":
    main(sys.argv[1])
