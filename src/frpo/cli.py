"""The ``frpo`` command: the single entry point of the project (later stages add subcommands here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

__all__ = ["main"]


def _set_override(config: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to a nested dict; the value is parsed as YAML (numbers, booleans, lists)."""
    key, sep, raw = assignment.partition("=")
    if not sep or not key:
        raise SystemExit(f"--set expects KEY=VALUE (e.g. trainer.frpo_lambda=0.5), got {assignment!r}")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SystemExit(f"--set {assignment!r}: {part!r} is not a mapping in the config")
    node[leaf] = yaml.safe_load(raw)


def load_config(path: str | Path, overrides: list[str] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise SystemExit(f"{path}: invalid YAML: {err}") from err
    if not isinstance(config, dict):
        raise SystemExit(f"{path}: the top level must be a mapping, got {type(config).__name__}")
    for assignment in overrides:
        _set_override(config, assignment)
    return config


def _cmd_train(args: argparse.Namespace) -> int:
    from .rl import run_rl

    summary = run_rl(load_config(args.config, args.set), args.out)
    print(json.dumps(summary))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    """GRPO and FRPO on the toy refusal task with the tiny local model, same seed, then a comparison table."""
    from .rl import run_rl

    base = load_config(args.config, args.set)
    runs = {"grpo": {"objective": "grpo"}}
    for lam in args.lambdas:
        runs[f"frpo_lam{lam:g}"] = {"objective": "frpo", "frpo_lambda": lam}
    summaries = {}
    for name, trainer_overrides in runs.items():
        config = {**base, "trainer": {**base.get("trainer", {}), **trainer_overrides}}
        print(f"== {name}", flush=True)
        summaries[name] = run_rl(config, Path(args.out) / name)
    print(f"\n{'run':<16}{'reward (first step)':>22}{'reward (last step)':>21}{'KL (last step)':>17}")
    for name, s in summaries.items():
        kl = "-" if s["last_kl"] is None else f"{s['last_kl']:.4f}"
        print(f"{name:<16}{s['first_reward']:>22.3f}{s['last_reward']:>21.3f}{kl:>17}")
    (Path(args.out) / "summary.json").write_text(json.dumps(summaries, indent=2) + "\n")
    print(f"\nper-step metrics: {args.out}/<run>/metrics.jsonl")
    return 0


def _cmd_lambda_star(args: argparse.Namespace) -> int:
    from .objective import lambda_star, optimal_lambda

    result = {"rho": args.rho}
    if args.std is not None:
        result["lambda_star"] = lambda_star(args.std, args.rho)
    if args.rewards is not None:
        path = Path(args.rewards)
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        result["optimal_lambda"] = optimal_lambda(rows, args.rho)
    if len(result) == 1:
        raise SystemExit("lambda-star: give --std, --rewards, or both")
    print(json.dumps(result))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="frpo", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="RL training (GRPO or FRPO) from a YAML run config")
    train.add_argument("--config", required=True, help="YAML run config (model, data, trainer)")
    train.add_argument("--out", required=True, help="output directory")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.set_defaults(func=_cmd_train)

    demo = sub.add_parser("demo", help="GRPO vs FRPO on the toy task with a tiny local model (CPU, ~1 min)")
    demo.add_argument("--config", default=str(_default_demo_config()), help="base run config")
    demo.add_argument("--out", default="results/demo_toy", help="output directory")
    demo.add_argument("--lambdas", type=float, nargs="+", default=[0.2, 1.0], help="FRPO λ values to run")
    demo.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    demo.set_defaults(func=_cmd_demo)

    lam = sub.add_parser("lambda-star", help="choose λ from the reward std and a KL budget ρ (Remark 3.3)")
    lam.add_argument("--rho", type=float, required=True, help="KL budget ρ > 0")
    lam.add_argument("--std", type=float, help="within-prompt reward std: λ* = std/sqrt(2ρ)")
    lam.add_argument("--rewards", help="JSONL file, one list of sampled rewards per prompt: numeric optimum")
    lam.set_defaults(func=_cmd_lambda_star)
    return parser


def _default_demo_config() -> Path:
    return Path(__file__).parent / "configs" / "toy_demo.yaml"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
