"""The ``frpo`` command: the single entry point that every workflow rule calls.

Each stage subcommand takes ``--spec``, a JSON object holding exactly the part of the workflow config that the
stage reads (built by ``workflow/rules/common.smk``), plus its input and output paths. Passing the spec as a
rule parameter is what makes a config change rerun only the rules whose spec it touches.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["main"]


def _spec(text: str) -> dict:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"--spec is not valid JSON: {err}") from err
    if not isinstance(spec, dict):
        raise SystemExit("--spec must be a JSON object")
    return spec


def _print(obj) -> int:
    print(json.dumps(obj))
    return 0


def _cmd_prepare_model(a):
    from .models import prepare_base_model

    spec = _spec(a.spec)
    texts: list[str] = []
    if spec["model"]["source"] == "tiny":  # the tiny word tokenizer is built over every text the demo uses
        from .data import read_jsonl, resolve

        for path in spec["vocab_files"]:
            texts += [v for row in read_jsonl(resolve(path)) for v in row.values() if isinstance(v, str)]
    return _print({"model": str(prepare_base_model(spec["model"], a.out, texts))})


def _cmd_fit_judge(a):
    from .judges.minilm import fit_refusal_judge
    from .data import resolve

    return _print(fit_refusal_judge(resolve(a.labelled), a.out))


def _cmd_sft(a):
    from .sft import run_sft

    return _print(run_sft(_spec(a.spec), a.model, a.out, a.ckpt))


def _cmd_rl(a):
    from .rl import run_rl

    return _print(run_rl(_spec(a.spec), a.model, a.out, a.ckpt))


def _cmd_lambda_select(a):
    from .rl import select_lambda_star

    from .io import atomic_write_text

    result = select_lambda_star(a.metrics, a.rho, a.last_k)
    atomic_write_text(a.out, json.dumps(result, indent=2) + "\n")
    return _print(result)


def _cmd_merge(a):
    from .models import merge_lora

    return _print({"merged": str(merge_lora(a.base, a.adapter, a.out))})


def _cmd_evaluate(a):
    from .evals import run_eval

    result = run_eval(a.bench, a.model, _spec(a.spec), a.out)
    return _print({k: result[k] for k in ("benchmark", "metric", "value", "n", "seconds")})


def _cmd_collect_tracking(a):
    import pandas as pd

    frames = []
    from .io import labelled_paths

    for label, path in labelled_paths(a.inputs):
        run, _, setting = label.partition("/")
        frames.append(pd.read_csv(path).assign(run=run, setting=setting))
    table = pd.concat(frames)
    table = table[["run", "setting", *[c for c in table.columns if c not in ("run", "setting")]]]
    from .io import atomic_file

    with atomic_file(a.out) as tmp:
        table.to_csv(tmp, index=False)
    return _print({"rows": len(table), "out": a.out})


def _cmd_figure(a):
    from . import figures

    if a.kind == "lambda-landscape":
        figures.lambda_landscape(a.tracking, a.out)
    elif a.kind == "rl-curves":
        figures.rl_curves(a.metrics, a.out)
    else:
        figures.final_table(a.tracking, a.evals, a.out, Path(a.out).with_suffix(".md"))
    return _print({"figure": a.kind, "out": a.out})


def _cmd_lambda_star(a):
    from .objective import lambda_star, optimal_lambda

    result: dict = {"rho": a.rho}
    if a.std is not None:
        result["lambda_star"] = lambda_star(a.std, a.rho)
    if a.rewards is not None:
        rows = [json.loads(line) for line in Path(a.rewards).read_text().splitlines() if line.strip()]
        result["optimal_lambda"] = optimal_lambda(rows, a.rho)
    if len(result) == 1:
        raise SystemExit("lambda-star: give --std, --rewards, or both")
    return _print(result)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frpo", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name, func, help_text, *args):
        p = sub.add_parser(name, help=help_text)
        for flag, kwargs in args:
            p.add_argument(flag, **kwargs)
        p.set_defaults(func=func)
        return p

    spec = ("--spec", {"required": True, "help": "JSON object: this stage's part of the workflow config"})
    out = ("--out", {"required": True, "help": "output path (written atomically)"})
    model = ("--model", {"required": True, "help": "input model directory"})
    ckpt = ("--ckpt", {"required": True, "help": "checkpoint directory (kept outside the outputs; resumed from)"})
    add("prepare-model", _cmd_prepare_model, "materialise the base model as plain safetensors", spec, out)
    add("fit-judge", _cmd_fit_judge, "fit the MiniLM refusal classifier and report its validation accuracy",
        ("--labelled", {"required": True, "help": "labelled responses (builtin:NAME or a path)"}), out)
    add("sft", _cmd_sft, "supervised fine-tuning (warm-up or downstream, with forgetting tracking)",
        spec, model, out, ckpt)
    add("rl", _cmd_rl, "RL training, GRPO or FRPO", spec, model, out, ckpt)
    add("lambda-select", _cmd_lambda_select, "λ* from a run's final within-group reward std (Remark 3.3)",
        ("--metrics", {"required": True}), ("--rho", {"type": float, "required": True}),
        ("--last-k", {"type": int, "default": 5}), out)
    add("merge", _cmd_merge, "merge a LoRA adapter into its base model",
        ("--base", {"required": True}), ("--adapter", {"required": True}), out)
    add("evaluate", _cmd_evaluate, "run one benchmark on one model",
        ("--bench", {"required": True}), spec, model, out)
    add("collect-tracking", _cmd_collect_tracking, "concatenate tracking CSVs into one tidy table", out,
        ("inputs", {"nargs": "+", "metavar": "RUN/SETTING=CSV"}))
    add("figure", _cmd_figure, "draw a figure or table",
        ("kind", {"choices": ["lambda-landscape", "rl-curves", "table"]}), out,
        ("--tracking", {"help": "the tidy tracking table written by collect-tracking"}),
        ("--metrics", {"nargs": "*", "default": [], "metavar": "RUN=JSONL"}),
        ("--evals", {"nargs": "*", "default": [], "metavar": "MODEL:BENCH=JSON"}))
    add("lambda-star", _cmd_lambda_star, "choose λ from the reward std and a KL budget ρ (Remark 3.3)",
        ("--rho", {"type": float, "required": True, "help": "KL budget ρ > 0"}),
        ("--std", {"type": float, "help": "within-prompt reward std: λ* = std/sqrt(2ρ)"}),
        ("--rewards", {"help": "JSONL file, one list of sampled rewards per prompt: numeric optimum"}))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
