"""The ``frpo`` command: the single entry point that every workflow rule calls.

Each stage subcommand takes ``--spec``, a JSON object holding exactly the part of the workflow config that the
stage reads (built by ``workflow/rules/common.smk``), plus its input and output paths. Passing the spec as a
rule parameter is what makes a config change rerun only the rules whose spec it touches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

__all__ = ["main"]


def _spec(text: str, flag: str = "--spec") -> dict:
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(f"{flag} is not valid JSON: {err}") from err
    if not isinstance(spec, dict):
        raise SystemExit(f"{flag} must be a JSON object")
    return spec


def _print(obj) -> int:
    """Print a stage's result as JSON, once: under `frpo launch` only the main process (RANK 0) prints."""
    if int(os.environ.get("RANK", "0")) == 0:
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


def _cmd_prepare_data(a):
    from .io import atomic_write_text
    from .tracks import get_track

    spec = _spec(a.spec)
    rows, info = get_track(spec["track"]).prepare(spec["key"], spec)
    if not rows:
        raise SystemExit(f"prepare-data: data.{spec['key']} of track {spec['track']!r} has no rows after preparing")
    atomic_write_text(a.out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    summary = {"track": spec["track"], "key": spec["key"], "source": spec["data"][spec["key"]], "rows": len(rows),
               **info}
    atomic_write_text(Path(a.out).with_suffix(".summary.json"), json.dumps(summary, indent=2) + "\n")
    return _print(summary)


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


def _cmd_collect(a):
    from . import tables
    from .io import atomic_file, labelled_paths

    build = {"tracking": tables.tracking_table, "rl-metrics": tables.rl_metrics_table, "evals": tables.evals_table,
             "rewards": tables.rewards_table}
    table = build[a.kind](a.track, labelled_paths(a.inputs))
    with atomic_file(a.out) as tmp:
        table.to_csv(tmp, index=False)
    return _print({"table": a.kind, "rows": len(table), "out": a.out})


def _concat_tables(paths: list[str]):
    import pandas as pd

    return pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)


def _cmd_figure(a):
    import importlib

    from .io import labelled_paths
    from .tracks import get_track

    figures = get_track(a.track).FIGURES
    if a.name not in figures:
        raise SystemExit(f"figure: track {a.track!r} has no figure or table {a.name!r} (known: {', '.join(figures)})")
    entry = figures[a.name]
    paths: dict[str, list[str]] = {}
    for label, path in labelled_paths(a.tables):
        paths.setdefault(label, []).append(str(path))
    # a table named several times (a figure over several experiments): one frame of all their rows, whose `track`
    # column tells the experiments apart
    given = {label: p[0] if len(p) == 1 else _concat_tables(p) for label, p in paths.items()}
    missing = [t for t in entry["tables"] if t not in given]
    if missing:
        raise SystemExit(f"figure {a.name}: missing table(s) {', '.join(missing)} (give them as NAME=CSV)")
    module, _, function = entry["draw"].partition(":")
    draw = getattr(importlib.import_module(module), function)
    outs = [a.out] if entry["kind"] == "figure" else [a.out, str(Path(a.out).with_suffix(".md"))]
    options = _spec(a.options, "--options") if a.options else {}
    draw(*[given[t] for t in entry["tables"]], *outs, **options)
    return _print({"figure": a.name, "track": a.track, "out": a.out})


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


def _floor_rewards(path: str, probe: str | None) -> list[list[float]]:
    """One list of sampled rewards per prompt from ``path``: lines that are lists of numbers, or lines of
    ``frpo sample-rewards`` (``{"probe", "prompt_index", "rewards", ...}``), of which ``probe`` picks one probe's
    (required when the file has several). Errors name the file and line."""
    from .io import json_lines

    lists, records = [], []
    try:
        lines = list(json_lines(path))
    except ValueError as err:
        raise SystemExit(f"floor: {err}") from err
    for i, row in lines:
        values = row.get("rewards") if isinstance(row, dict) else row
        if not isinstance(values, list) or not values or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise SystemExit(f"floor: {path}:{i}: expected a non-empty list of numbers (one prompt's rewards) or "
                             'an object whose "rewards" is one (frpo sample-rewards)')
        (records if isinstance(row, dict) else lists).append((i, row))
        if lists and records:
            raise SystemExit(f"floor: {path}:{i}: mixes lists of rewards with sample-rewards objects")
    if lists:
        if probe is not None:
            raise SystemExit(f"floor: {path}: --probe {probe}: the file holds plain lists of rewards, not probes")
        return [row for _, row in lists]
    probes = list(dict.fromkeys(str(row.get("probe")) for _, row in records))
    if probe is None and len(probes) > 1:
        raise SystemExit(f"floor: {path} holds the probes {', '.join(probes)}: pick one with --probe")
    if probe is not None and probe not in probes:
        raise SystemExit(f"floor: {path} has no probe {probe!r} (it holds: {', '.join(probes) or 'no lines'})")
    chosen = probe if probe is not None else (probes[0] if probes else None)
    seen: dict = {}
    for i, row in records:
        if str(row.get("probe")) != chosen or "prompt_index" not in row:
            continue
        if row["prompt_index"] in seen:  # two files concatenated, say: their prompts would be pooled silently
            raise SystemExit(f"floor: {path}:{i}: probe {chosen!r} prompt_index {row['prompt_index']} again "
                             f"(first on line {seen[row['prompt_index']]})")
        seen[row["prompt_index"]] = i
    return [row["rewards"] for _, row in records if str(row.get("probe")) == chosen]


def _cmd_floor(a):
    from .floor import floor_band, floor_curve

    rows = _floor_rewards(a.rewards, a.probe)
    if not rows:
        raise SystemExit(f"floor: {a.rewards}: no prompts")
    opts = {"jackknife": not a.no_jackknife}
    curve = floor_band(rows, a.rho, n_boot=a.n_boot, **opts) if a.n_boot else floor_curve(rows, a.rho, **opts)
    return _print({"rewards": a.rewards, "probe": a.probe, "prompts": len(rows), "jackknife": opts["jackknife"],
                   "floor": curve})


def _cmd_sample_rewards(a):
    from .rewards_sample import sample_rewards

    summary = sample_rewards(_spec(a.spec), a.model, a.out)
    return _print({k: summary[k] for k in ("track", "rewards", "lines", "n", "seconds")})


def _cmd_cost(a):
    import yaml

    from .config import ConfigError, validate_config
    from .cost import cost_rows, cost_table

    # A plan, as snakemake -n makes one: what this machine lacks (the paper's local files, an API key) is a warning
    # on stderr, since a user asks what a run costs before putting them in place; a wrong config is one line.
    try:
        config = validate_config(yaml.safe_load(Path(a.config).read_text()),
                                 Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml",
                                 source=a.config, plan_only=True)
    except (ConfigError, OSError, yaml.YAMLError) as err:
        raise SystemExit(f"frpo cost: {err}") from None
    if a.json:
        return _print(cost_rows(config))
    print(cost_table(config), end="")
    return 0


def _cmd_launch(a):
    from .launch import launch

    command = a.command_line[1:] if a.command_line[:1] == ["--"] else a.command_line
    return launch(command, a.processes, a.strategy, a.nodes, a.on_node)


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
    add("prepare-data", _cmd_prepare_data, "materialise one data key of a track (hub download, filters) as JSONL",
        spec, out)
    add("fit-judge", _cmd_fit_judge, "fit the MiniLM refusal classifier and report its validation accuracy",
        ("--labelled", {"required": True, "help": "labelled responses (builtin:NAME or a path)"}), out)
    add("sft", _cmd_sft, "supervised fine-tuning (warm-up or downstream, with forgetting tracking)",
        spec, model, out, ckpt)
    add("rl", _cmd_rl, "RL training, GRPO or FRPO", spec, model, out, ckpt)
    add("lambda-select", _cmd_lambda_select, "λ* from a run's final within-group reward std (Remark 3.3)",
        ("--metrics", {"required": True, "nargs": "+", "help": "the GRPO run's metrics.jsonl, one per seed"}),
        ("--rho", {"type": float, "required": True}),
        ("--last-k", {"type": int, "default": 5}), out)
    add("merge", _cmd_merge, "merge a LoRA adapter into its base model",
        ("--base", {"required": True}), ("--adapter", {"required": True}), out)
    add("evaluate", _cmd_evaluate, "run one benchmark on one model",
        ("--bench", {"required": True}), spec, model, out)
    track = ("--track", {"required": True, "help": "the track (frpo.tracks)"})
    add("collect", _cmd_collect, "gather a track's results into one tidy table (frpo.tables)",
        ("kind", {"choices": ["tracking", "rl-metrics", "evals", "rewards"]}), track, out,
        ("inputs", {"nargs": "+", "metavar": "TARGET=PATH"}))
    add("figure", _cmd_figure, "draw one of a track's figures or tables from its tidy tables",
        ("name", {"help": "a figure or table of the track (its FIGURES)"}), track, out,
        ("--options", {"help": "JSON object: keyword arguments of the figure's function (the config's "
                               "figure_options.<name>)"}),
        ("tables", {"nargs": "+", "metavar": "TABLE=CSV"}))
    add("lambda-star", _cmd_lambda_star, "choose λ from the reward std and a KL budget ρ (Remark 3.3)",
        ("--rho", {"type": float, "required": True, "help": "KL budget ρ > 0"}),
        ("--std", {"type": float, "help": "within-prompt reward std: λ* = std/sqrt(2ρ)"}),
        ("--rewards", {"help": "JSONL file, one list of sampled rewards per prompt: numeric optimum"}))
    add("floor", _cmd_floor, "the forgetting floor: the lowest mean reward of any model within KL ρ (frpo.floor)",
        ("--rewards", {"required": True, "help": "JSONL, one list of rewards sampled from the model per prompt, "
                                                 "or the file frpo sample-rewards writes"}),
        ("--probe", {"help": "the probe whose prompts to read from a sample-rewards file (required when it has "
                             "several)"}),
        ("--rho", {"type": float, "nargs": "+", "required": True, "help": "KL budgets ρ > 0 (sequence level)"}),
        ("--n-boot", {"type": int, "default": 0, "help": "bootstrap resamples for a 95%% band (0: none)"}),
        ("--no-jackknife", {"action": "store_true", "help": "the plug-in estimate (biased high at few samples)"}))
    add("sample-rewards", _cmd_sample_rewards,
        "sample completions of each probe's held-out prompts from a model and score them (the floor's input)",
        spec, model, out)
    add("cost", _cmd_cost, "jobs and GPU-hours the DAG of a config declares, per track and stage (frpo.cost)",
        ("--config", {"required": True, "help": "a workflow config, e.g. config/paper.yaml"}),
        ("--json", {"action": "store_true", "help": "JSON rows instead of a Markdown table"}))
    add("launch", _cmd_launch, "run a stage on several processes with accelerate (DDP, DeepSpeed ZeRO or FSDP)",
        ("--processes", {"type": int, "required": True, "help": "processes in all (GPUs x nodes)"}),
        ("--nodes", {"type": int, "default": 1, "help": "nodes of the SLURM allocation"}),
        ("--on-node", {"action": "store_true", "help": argparse.SUPPRESS}),
        ("command_line", {"nargs": argparse.REMAINDER, "metavar": "-- COMMAND",
                          "help": "frpo <stage> ... or a .py script"})
    ).add_argument("--strategy", "--config", dest="strategy", required=True,
                   help="ddp, zero2, zero3, fsdp (config/accelerate/<name>.yaml) or an accelerate config file")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .launch import die_with_launcher

    die_with_launcher()  # a process of `frpo launch` never outlives its launcher
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
