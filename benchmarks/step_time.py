"""Wall-clock cost of an FRPO training step against a GRPO training step (paper: "no extra computation").

Two comparisons, both printed on ONE JSON line on stdout (progress goes to stderr):

1. Full training step. One tiny random Llama (default hidden 256, 4 layers) inside one ``FRPOTrainer``, one
   fixed batch (default 8 prompts x 8 completions x 64 completion tokens) in the dict format that TRL's
   ``_generate_and_score_completions`` returns, plus the trainer's ``group_ids``. The batch is built
   synthetically (real toy prompts through the chat template, random completion tokens with a full mask, random
   0/1 rewards centred within each group, reference log-probs from the initial model), so every row has exactly
   the requested length: a randomly initialised model would stop at random places when sampling. A timed step is
   ``trainer._compute_loss`` (policy forward, objective, k3 KL) + backward + ``optimizer.step`` + ``zero_grad``.
   The objective is switched in place (``trainer.args.objective`` and ``trainer._objective``), and the weights
   and AdamW state are restored from one snapshot before every step, so both objectives always step from the same
   parameters on the same batch.
2. Objective only. ``frpo_loss`` against ``grpo_loss`` on a large random batch (default 512 groups x 8 rows x 1024
   tokens), forward + backward with respect to the per-token log-probs.

FRPO and GRPO steps are interleaved in one run (frpo, grpo, then grpo, frpo, ... alternating which goes first),
warm-up repeats are discarded and the median over repeats is reported. The quantity of interest is the ratio
frpo_s / grpo_s (target <= 1.03): absolute times depend on the machine, its load, the thread count and the
allocator state, all of which drift over a run, whereas two measurements taken side by side in the same process
share that drift, so their ratio is the stable, comparable number. ``paired_ratio`` is the median of the ratios of
the two steps timed next to each other, a second estimate that is even less sensitive to slow drift, and
``min_ratio`` the ratio of the fastest repeats, the least sensitive to other processes competing for the cores.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import torch


def log(*args) -> None:
    print(*args, file=sys.stderr, flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = p.add_argument_group("objective-only comparison (frpo_loss vs grpo_loss)")
    g.add_argument("--groups", type=int, default=512, help="number of prompt groups (default 512)")
    g.add_argument("--group-size", type=int, default=8, help="completions per group (default 8)")
    g.add_argument("--tokens", type=int, default=1024, help="completion tokens per row (default 1024)")
    g.add_argument("--repeats", type=int, default=20, help="timed repeats per objective (default 20)")
    g.add_argument("--warmup", type=int, default=2, help="discarded repeats per objective (default 2)")
    s = p.add_argument_group("full training-step comparison")
    s.add_argument("--prompts", type=int, default=8, help="prompts per batch (default 8)")
    s.add_argument("--completions", type=int, default=8, help="completions per prompt = num_generations (default 8)")
    s.add_argument("--completion-length", type=int, default=64, help="completion tokens per row (default 64)")
    s.add_argument("--hidden", type=int, default=256, help="hidden size of the tiny Llama (default 256)")
    s.add_argument("--layers", type=int, default=4, help="decoder layers of the tiny Llama (default 4)")
    s.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    s.add_argument("--beta", type=float, default=0.04, help="KL coefficient; > 0 adds the k3 KL term (default 0.04)")
    s.add_argument("--step-repeats", type=int, default=30, help="timed steps per objective (default 30)")
    s.add_argument("--step-warmup", type=int, default=2, help="discarded steps per objective (default 2)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-step", action="store_true", help="only run the objective-only comparison")
    p.add_argument("--skip-loss", action="store_true", help="only run the full-step comparison")
    return p.parse_args(argv)


def interleaved(fns: dict, repeats: int, warmup: int, before=None, verbose=True) -> dict[str, list[float]]:
    """Time each callable of ``fns`` (two of them) ``warmup + repeats`` times, alternating which goes first.

    ``before(name)`` runs untimed before each call (e.g. restoring a snapshot). Returns the kept times per name,
    in round order, so that times[a][k] and times[b][k] were taken next to each other.
    """
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + repeats):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            if before is not None:
                before(name)
            t0 = time.perf_counter()
            fns[name]()
            dt = time.perf_counter() - t0
            if r >= warmup:
                times[name].append(dt)
        if not verbose:
            continue
        if r >= warmup:
            log(f"  round {r - warmup + 1}/{repeats}: " + ", ".join(f"{n} {times[n][-1] * 1e3:.1f} ms" for n in names))
        else:
            log(f"  warm-up {r + 1}/{warmup}")
    return times


def summarise(times: dict[str, list[float]], prefix: str) -> dict:
    a, b = times["frpo"], times["grpo"]
    fa, fb = statistics.median(a), statistics.median(b)
    return {
        f"{prefix}frpo_s": round(fa, 6),
        f"{prefix}grpo_s": round(fb, 6),
        f"{prefix}ratio": round(fa / fb, 4),
        f"{prefix}paired_ratio": round(statistics.median(x / y for x, y in zip(a, b)), 4),
        f"{prefix}min_ratio": round(min(a) / min(b), 4),
    }


# ----------------------------------------------------------------------------------------------------------------
# 1. Full training step
# ----------------------------------------------------------------------------------------------------------------
def synthetic_batch(trainer, tokenizer, n_prompts: int, G: int, T: int, beta: float, gen: torch.Generator) -> dict:
    """One generation batch in the format of ``FRPOTrainer._generate_and_score_completions``'s output."""
    from frpo.toy import toy_dataset

    prompts = toy_dataset(repeats=math.ceil(n_prompts / 12) + 1)["prompt"][:n_prompts]
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in prompts
        for _ in range(G)  # RepeatSampler order: each prompt G times in a row
    ]
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)  # left padding
    B = n_prompts * G
    special = set(tokenizer.all_special_ids)
    allowed = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    completion_ids = allowed[torch.randint(len(allowed), (B, T), generator=gen)]
    rewards = torch.randint(0, 2, (n_prompts, G), generator=gen).float()
    advantages = (rewards - rewards.mean(dim=1, keepdim=True)).flatten()  # scale_rewards="none"
    batch = {
        "prompt_ids": enc["input_ids"],
        "prompt_mask": enc["attention_mask"],
        "completion_ids": completion_ids,
        "completion_mask": torch.ones(B, T, dtype=torch.long),
        "advantages": advantages,
        "num_items_in_batch": torch.tensor(B * T),
        "group_ids": torch.arange(B) // G,
    }
    # num_iterations == 1 and steps_per_generation == gradient_accumulation_steps: TRL sets no old_per_token_logps
    # (the loss uses logps.detach()), exactly as in a default run.
    if beta != 0.0:
        with torch.no_grad():
            ids = torch.cat([batch["prompt_ids"], completion_ids], dim=1)
            mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], dim=1)
            ref, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, T)
        batch["ref_per_token_logps"] = ref
    return batch


def bench_step(a: argparse.Namespace) -> dict:
    from transformers import AutoTokenizer

    from frpo.objective import OBJECTIVES
    from frpo.tiny import save_tiny_model
    from frpo.toy import VOCAB, toy_dataset, toy_reward
    from frpo.trainer import FRPOConfig, FRPOTrainer

    G, T, n_prompts = a.completions, a.completion_length, a.prompts
    B = n_prompts * G
    tmp = tempfile.TemporaryDirectory(prefix="frpo_step_time_")
    model_dir = str(
        save_tiny_model(
            tmp.name, VOCAB, hidden_size=a.hidden, num_layers=a.layers, num_heads=a.heads,
            max_position_embeddings=max(256, 2 * (T + 64)), seed=a.seed,
        )
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    config = FRPOConfig(
        output_dir=f"{tmp.name}/out",
        per_device_train_batch_size=B,
        num_generations=G,
        max_completion_length=T,
        max_steps=1,
        learning_rate=1e-5,
        beta=a.beta,
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        seed=a.seed,
        objective="frpo",
    )
    trainer = FRPOTrainer(
        model=model_dir, reward_funcs=toy_reward, args=config, train_dataset=toy_dataset(),
        processing_class=tokenizer,
    )
    model = trainer.model
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    trainer.create_optimizer()
    optimizer = trainer.optimizer

    gen = torch.Generator().manual_seed(a.seed)
    batch = synthetic_batch(trainer, tokenizer, n_prompts, G, T, a.beta, gen)
    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"step: tiny Llama hidden={a.hidden} layers={a.layers} ({n_params / 1e6:.2f}M params), batch {n_prompts} "
        f"prompts x {G} completions, prompt {batch['prompt_ids'].shape[1]} + completion {T} tokens, beta={a.beta}"
    )

    def set_objective(name: str) -> None:
        trainer.args.objective = name
        trainer._objective = OBJECTIVES[name]

    def step() -> None:
        loss = trainer._compute_loss(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    # One untimed step creates the AdamW state; then snapshot weights and optimizer state together. Every timed
    # step starts from this snapshot, whichever objective it uses.
    step()
    params = [p for p in model.parameters()]
    snap_params = [p.detach().clone() for p in params]
    snap_state = {id(p): {k: (v.clone() if torch.is_tensor(v) else v) for k, v in st.items()}
                  for p, st in optimizer.state.items()}

    @torch.no_grad()
    def restore(name: str) -> None:
        for p, s in zip(params, snap_params):
            p.copy_(s)
        for p, st in optimizer.state.items():
            for k, v in snap_state[id(p)].items():
                if torch.is_tensor(v):
                    st[k].copy_(v)
                else:
                    st[k] = v
        set_objective(name)
        for m in trainer._metrics.values():  # keep the metric lists from growing over the run
            m.clear()

    # Same starting point check: both objectives give finite losses on the batch.
    losses = {}
    for name in ("frpo", "grpo"):
        restore(name)
        with torch.no_grad():
            losses[name] = float(trainer._compute_loss(model, batch))
    log(f"step: losses at the snapshot: {losses}")

    log(f"step: timing {a.step_warmup} warm-up + {a.step_repeats} timed steps per objective, interleaved")
    times = interleaved({"frpo": step, "grpo": step}, a.step_repeats, a.step_warmup, before=restore)
    out = summarise(times, "")

    # Where the time goes: the objective alone (forward + backward w.r.t. logps) on this step's [B, T] shape.
    obj_times = loss_only_times(n_prompts, G, T, repeats=50, warmup=5, seed=a.seed, full_mask=True, quiet=True)
    obj = summarise(obj_times, "step_objective_")
    out.update({k: v for k, v in obj.items() if not k.endswith(("paired_ratio", "min_ratio"))})
    out["step_objective_extra_share"] = round(
        (obj["step_objective_frpo_s"] - obj["step_objective_grpo_s"]) / out["grpo_s"], 5
    )
    out.update(
        step_model={"hidden": a.hidden, "layers": a.layers, "heads": a.heads, "params": n_params},
        step_batch={
            "prompts": n_prompts, "completions_per_prompt": G, "rows": B,
            "prompt_tokens": int(batch["prompt_ids"].shape[1]), "completion_tokens": T,
            "synthetic": True, "beta": a.beta,
        },
        step_repeats=a.step_repeats, step_warmup=a.step_warmup,
        step_losses={k: round(v, 6) for k, v in losses.items()},
    )
    tmp.cleanup()
    return out


# ----------------------------------------------------------------------------------------------------------------
# 2. Objective only
# ----------------------------------------------------------------------------------------------------------------
def loss_only_times(n_groups, G, T, repeats, warmup, seed, full_mask=False, quiet=False) -> dict[str, list[float]]:
    from frpo.objective import frpo_loss, grpo_loss

    gen = torch.Generator().manual_seed(seed)
    B = n_groups * G
    old = -torch.rand(B, T, generator=gen) * 5  # log-probs in (-5, 0]
    logps = (old + 0.1 * torch.randn(B, T, generator=gen)).clamp(max=0.0).requires_grad_(True)
    if full_mask:
        mask = torch.ones(B, T, dtype=torch.bool)
    else:  # ragged completions, lengths in [T/2, T]
        lengths = torch.randint(max(1, T // 2), T + 1, (B,), generator=gen)
        mask = torch.arange(T)[None, :] < lengths[:, None]
    rewards = torch.randint(0, 2, (n_groups, G), generator=gen).float()
    adv = (rewards - rewards.mean(dim=1, keepdim=True)).flatten()
    gids = torch.arange(B) // G

    def run(fn, **kw):
        def go():
            fn(logps, old, adv, mask, gids, **kw).backward()
            logps.grad = None
        return go

    fns = {"frpo": run(frpo_loss, lam=0.2, epsilon=0.2), "grpo": run(grpo_loss, epsilon=0.2)}
    return interleaved(fns, repeats, warmup, verbose=not quiet)


def bench_loss(a: argparse.Namespace) -> dict:
    B = a.groups * a.group_size
    gib = B * a.tokens * 4 / 2**30
    log(f"loss only: {a.groups} groups x {a.group_size} rows x {a.tokens} tokens = {B * a.tokens / 1e6:.1f}M tokens "
        f"({gib:.3f} GiB per float32 tensor), {a.warmup} warm-up + {a.repeats} timed repeats per objective")
    times = loss_only_times(a.groups, a.group_size, a.tokens, a.repeats, a.warmup, a.seed)
    out = summarise(times, "loss_only_")
    out["loss_only_shape"] = {"groups": a.groups, "group_size": a.group_size, "tokens": a.tokens, "rows": B,
                              "mask": "ragged, lengths in [T/2, T]", "dtype": "float32"}
    out["loss_only_repeats"] = a.repeats
    out["loss_only_warmup"] = a.warmup
    return out


def main(argv=None) -> None:
    a = parse_args(argv)
    warnings.filterwarnings("ignore")
    if a.threads is not None:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    t_start = time.perf_counter()
    load_before = os.getloadavg()[0]
    result: dict = {}
    if not a.skip_step:
        result.update(bench_step(a))
    if not a.skip_loss:
        result.update(bench_loss(a))
    head = {k: result.pop(k) for k in ("frpo_s", "grpo_s", "ratio") if k in result}
    import transformers
    import trl

    meta = {
        "torch": torch.__version__, "trl": trl.__version__, "transformers": transformers.__version__,
        "python": platform.python_version(), "device": "cpu", "threads": torch.get_num_threads(),
        "seed": a.seed, "total_s": round(time.perf_counter() - t_start, 2),
        # 1-minute load average before/after: a value above the thread count means other processes competed.
        "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }
    print(json.dumps({**head, **result, **meta}), flush=True)


if __name__ == "__main__":
    main()
