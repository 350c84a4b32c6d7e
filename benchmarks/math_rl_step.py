"""The math track's RL step, measured through the pipeline's own code: ``frpo.rl.run_rl`` with the math track's
prompts and rewards (``frpo.tracks.math``), on a Llama-architecture model built locally with the shape asked for
(random weights and a word tokenizer over the built-in problems: no hub), then the verifier's throughput.

Prints one JSON line: the seconds of each optimiser step (generation, rewards, loss and update; the first one
includes warm-up), the peak accelerator memory, the parameter count, and the verifier's answers per second.
The model's rewards mean nothing (random weights); the times and memory are what the sizes cost.

    python benchmarks/math_rl_step.py --device cuda --hidden 896 --layers 24 --heads 14 --intermediate 4864
    python benchmarks/math_rl_step.py --device cpu --hidden 64 --layers 2 --heads 4 --steps 2   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--hidden", type=int, default=896)
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--heads", type=int, default=14)
    p.add_argument("--intermediate", type=int, default=4864)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--prompts-per-step", type=int, default=8)
    p.add_argument("--num-generations", type=int, default=8)
    p.add_argument("--max-completion-length", type=int, default=256)
    p.add_argument("--workers", type=int, default=4, help="verifier worker processes")
    p.add_argument("--verifier-items", type=int, default=2048)
    args = p.parse_args(argv)

    import torch

    from frpo.data import builtin, read_jsonl
    from frpo.math_grading import Verifier
    from frpo.rl import run_rl
    from frpo.tiny import save_tiny_model
    from frpo.trainer import FRPOTrainer
    from frpo.tracks import get_track

    work = Path(tempfile.mkdtemp(prefix="frpo_math_rl_"))
    problems = read_jsonl(builtin("math_problems"))
    words = [r["problem"] + " " + r["solution"] for r in problems]
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    save_tiny_model(work / "model", words, dtype=dtype, hidden_size=args.hidden, num_layers=args.layers,
                    num_heads=args.heads, intermediate_size=args.intermediate, max_position_embeddings=4096)
    (work / "math500.jsonl").write_text("")
    rows, _ = get_track("math").prepare("math_problems", {"data": {"math_problems": "builtin:math_problems",
                                                                   "math500": str(work / "math500.jsonl")}})
    (work / "problems.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {
        "track": "math", "run": "frpo_lam2", "objective": "frpo", "frpo_lambda": 2.0, "seed": 0,
        "device": args.device, "precision": "bf16-mixed" if args.device == "cuda" else "fp32",
        "rl": {"steps": args.steps, "prompts_per_step": args.prompts_per_step,
               "num_generations": args.num_generations, "max_completion_length": args.max_completion_length,
               "temperature": 1.0, "top_p": 1.0, "learning_rate": 6e-6, "beta": 1e-4, "lambda_scale": "max_lambda_1",
               "lr_scheduler_type": "cosine", "warmup_ratio": 0.1, "save_steps": 10_000, "max_grad_norm": 0.5,
               "lora": {"r": 64, "alpha": 128, "dropout": 0.0,
                        "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "gate_proj",
                                           "down_proj"]}},
        "judges": {}, "reward": {"timeout_s": 3.0, "workers": args.workers},
        "data": {"math_problems": str(work / "problems.jsonl")},
    }
    step_seconds: list[float] = []
    original = FRPOTrainer.training_step

    def timed(self, *a, **kw):  # a whole optimiser step: generation, rewards, loss, backward
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = original(self, *a, **kw)
        if args.device == "cuda":
            torch.cuda.synchronize()
        step_seconds.append(time.perf_counter() - start)
        return out

    FRPOTrainer.training_step = timed
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    summary = run_rl(spec, work / "model", work / "out", work / "ckpt")
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else None
    n_params = sum(t.numel() for t in __import__("safetensors.torch", fromlist=["load_file"])
                   .load_file(str(next((work / "model").glob("*.safetensors")))).values())
    metrics = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]

    golds = [r["answer"] for r in rows]
    completions = [f"so the answer is $\\boxed{{{g}}}$" if i % 2 else "$\\boxed{-1}$" for i, g in enumerate(golds)]
    reps = -(-args.verifier_items // len(golds))
    completions, golds = (completions * reps)[: args.verifier_items], (golds * reps)[: args.verifier_items]
    with Verifier(timeout_s=3.0, workers=args.workers) as verifier:
        verifier.correct(completions[:64], golds[:64])  # start the workers
        start = time.perf_counter()
        scores = verifier.correct(completions, golds)
        seconds = time.perf_counter() - start
    print(json.dumps({
        "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "model": {"hidden": args.hidden, "layers": args.layers, "heads": args.heads,
                  "intermediate": args.intermediate, "parameters": n_params, "dtype": str(dtype)},
        "batch": {"prompts_per_step": args.prompts_per_step, "num_generations": args.num_generations,
                  "max_completion_length": args.max_completion_length, "lora_r": 64},
        "steps": summary["steps"], "step_seconds": [round(s, 3) for s in step_seconds],
        "median_step_seconds_after_first": round(statistics.median(step_seconds[1:]), 3) if len(step_seconds) > 1
        else None,
        "mean_completion_length": [m.get("completions/mean_length") for m in metrics],
        "peak_memory_gib": round(peak, 2) if peak is not None else None,
        "verifier": {"items": len(scores), "seconds": round(seconds, 3), "items_per_s": round(len(scores) / seconds),
                     "workers": args.workers, "correct_fraction": sum(scores) / len(scores)},
        "generation": "transformers (vLLM is not installed: no gpu extra yet)",
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
