"""Workflow config validation: the JSON schema plus the checks a schema cannot express.

``workflow/rules/common.smk`` calls :func:`validate_config` before any job starts, so a bad config fails at DAG
construction with the key and the reason, not hours into a run. The stage specs handed to each rule are
built here too (:func:`stage_spec`), so the rules stay free of logic.
"""

from __future__ import annotations

import copy
import math
import os
import re
from itertools import product
from pathlib import Path

import yaml

from .data import SAFETY_PROMPT_FIELDS

__all__ = [
    "ConfigError", "eval_spec", "finetune_settings", "finetune_spec", "judges_spec", "prepare_spec", "rl_runs",
    "rl_spec", "run_beta", "validate_config", "warmup_spec",
]


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_config(config: dict, schema_path: str | Path, source: str = "config") -> dict:
    """Validate ``config`` against the schema at ``schema_path`` and the semantic rules; return it unchanged."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        lines = []
        for err in errors[:10]:
            if err.validator == "additionalProperties":
                known = sorted(err.schema.get("properties", {}))
                lines.append(f"{source}: {_key(err.path)}: {err.message} (known keys: {', '.join(known)})")
            else:
                lines.append(f"{source}: {_key(err.path)}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    _check_semantics(config, source)
    return config


#: The fields each data file must have (checked for every row at DAG start).
DATA_FIELDS = {
    "safety_prompts": SAFETY_PROMPT_FIELDS,
    "refusal_demos": {"prompt": str, "response": str},
    "judge_labelled": {"prompt": str, "response": str, "refusal": int, "split": str},
    "arithmetic": {"question": str, "answer": str, "final": float, "split": str},
    "alpaca": {"instruction": str, "input": str, "output": str},
}


def _check_data(config: dict, source: str) -> None:
    """Every data file exists and parses: a missing file or a bad row fails now, naming the file and the line."""
    from .data import DataError, read_jsonl, resolve

    for key, spec in config["data"].items():
        try:
            read_jsonl(resolve(spec), required=DATA_FIELDS[key])
        except (DataError, FileNotFoundError, ValueError) as err:
            raise ConfigError(f"{source}: data.{key}: {err}") from err


def _check_semantics(config: dict, source: str) -> None:
    _check_data(config, source)
    rl = config["rl"]
    for i, lam in enumerate(rl["lambdas"]):
        value = float(lam)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source}: rl.lambdas.{i}: λ must be > 0, got {lam!r}")
    if "frpo" in rl["algorithms"] and not rl["lambdas"] and not rl.get("lambda_star", {}).get("enabled"):
        raise ConfigError(f"{source}: rl.lambdas: FRPO needs at least one λ (or rl.lambda_star.enabled: true)")
    if rl.get("lambda_star", {}).get("enabled") and "grpo" not in rl["algorithms"]:
        raise ConfigError(f"{source}: rl.lambda_star: λ* is read off the GRPO run; add grpo to rl.algorithms")
    _check_beta(rl, source)
    if ("steps" in rl) == ("epochs" in rl):
        raise ConfigError(f"{source}: rl: give exactly one of rl.steps (optimiser steps) and rl.epochs (epochs over "
                          "the training prompts, as the paper states its schedule)")
    for i, lr in enumerate(config["finetune"]["learning_rates"]):
        if not float(lr) > 0:
            raise ConfigError(f"{source}: finetune.learning_rates.{i}: must be > 0, got {lr!r}")
    model = config["model"]
    source_kind = model["source"]
    if source_kind not in model and source_kind != "tiny":
        raise ConfigError(f"{source}: model.{source_kind}: missing (model.source is {source_kind!r})")
    if source_kind == "local" and not Path(model["local"]["path"]).is_dir():
        raise ConfigError(f"{source}: model.local.path: {model['local']['path']!r} is not a directory")
    from .judges import missing_env

    judges = {f"judges.{name}": config["judges"][name] for name in ("safety", "helpfulness")}
    judges.update(_eval_judges(config))
    _check_eval_data(config, source)
    for key, judge in judges.items():
        missing = missing_env(judge)
        if missing:
            raise ConfigError(
                f"{source}: {key}: judge {judge['name']!r} needs the environment variable(s) "
                f"{', '.join(missing)}, which are not set"
            )


def _check_beta(rl: dict, source: str) -> None:
    """A β map names a β for every configured run: ``grpo``, each λ of ``rl.lambdas``, and ``default`` for runs it
    does not list (λ*, whose value is only known after the GRPO run)."""
    beta = rl["beta"]
    if not isinstance(beta, dict):
        return
    for key in beta:
        if key not in ("grpo", "default"):
            try:
                float(key)
            except ValueError:
                raise ConfigError(f"{source}: rl.beta.{key}: a β map's keys are grpo, default or a λ of "
                                  "rl.lambdas") from None
            if key not in rl["lambdas"]:
                raise ConfigError(f"{source}: rl.beta.{key}: λ={key} is not in rl.lambdas {rl['lambdas']} "
                                  "(write the λ exactly as rl.lambdas does)")
    if "default" in beta:
        return
    needed = (["grpo"] if "grpo" in rl["algorithms"] else [])
    if "frpo" in rl["algorithms"]:
        needed += list(rl["lambdas"])
    missing = [k for k in needed if k not in beta]
    if missing:
        raise ConfigError(f"{source}: rl.beta: no β for {', '.join(missing)} (add them, or a default)")
    if "frpo" in rl["algorithms"] and rl.get("lambda_star", {}).get("enabled"):
        raise ConfigError(f"{source}: rl.beta: FRPO at λ* needs rl.beta.default (λ* is only known after GRPO)")


def run_beta(rl: dict, run: str) -> float:
    """β of one run: ``rl.beta`` itself, or its entry for the run (``grpo`` or the λ string), else its default."""
    beta = rl["beta"]
    if not isinstance(beta, dict):
        return float(beta)
    key = "grpo" if run == "grpo" else run[len("frpo_lam"):]
    if key in beta:
        return float(beta[key])
    if "default" in beta:
        return float(beta["default"])
    raise ConfigError(f"rl.beta: no β for run {run!r} and no default")


def _eval_judges(config: dict) -> dict:
    """``{config key: judge}`` of each listed judged benchmark, its section's judge or the default one."""
    from .evals import DEFAULT_JUDGES, eval_judge

    return {f"eval.{bench}.judge": eval_judge(config["eval"].get(bench, {}), bench)
            for bench in DEFAULT_JUDGES if bench in config["eval"]["benchmarks"]}


def _check_eval_data(config: dict, source: str) -> None:
    """The local data files the listed benchmarks need are named and exist (HarmBench and StrongREJECT have no
    download path here: their CSVs are configured files)."""
    from .evals import strongreject_dataset

    ev, benches = config["eval"], config["eval"]["benchmarks"]
    files = {}
    if "harmbench" in benches:
        files["eval.harmbench.behaviors"] = ev.get("harmbench", {}).get("behaviors")
    if "strongreject" in benches:
        _, path, key = strongreject_dataset(ev.get("strongreject", {}))
        files[key] = path
    for key, path in files.items():
        if not path:
            raise ConfigError(f"{source}: {key}: missing (the path of a local CSV; see config/README.md)")
        if not Path(os.path.expanduser(str(path))).is_file():
            raise ConfigError(f"{source}: {key}: {str(path)!r} is not a file")


def rl_runs(config: dict, lambda_star: str | None = None) -> list[str]:
    """The RL run names: ``grpo`` and ``frpo_lam<λ>`` for each configured λ (and λ*, once known)."""
    rl = config["rl"]
    runs = ["grpo"] if "grpo" in rl["algorithms"] else []
    if "frpo" in rl["algorithms"]:
        lams = list(rl["lambdas"])
        if lambda_star is not None and lambda_star not in lams:
            lams.append(lambda_star)
        runs += [f"frpo_lam{lam}" for lam in lams]
    return runs


def finetune_settings(config: dict) -> list[str]:
    """The fine-tuning setting names: ``<dataset>-<method>-lr<lr>-ep<epochs>`` over the configured sweep."""
    ft = config["finetune"]
    return [
        f"{d}-{m}-lr{lr}-ep{ep}"
        for d, m, lr, ep in product(ft["datasets"], ft["methods"], ft["learning_rates"], ft["epochs"])
    ]


# ---------------------------------------------------------------------------------------------------------------
# Stage specs: the exact part of the config each rule passes to `frpo <stage> --spec` (and reruns on change).
# ---------------------------------------------------------------------------------------------------------------
_SETTING = re.compile(r"^(?P<dataset>[a-z0-9_]+)-(?P<method>full|lora)-lr(?P<lr>[0-9.eE+-]+)-ep(?P<epochs>[0-9]+)$")
_FORMATS = {"arithmetic": "gsm8k", "alpaca": "alpaca"}


def judges_spec(config: dict, classifier_path: str | None) -> dict:
    """The judges section with the fitted demo classifier filled in where a MiniLM judge uses it."""
    judges = {k: copy.deepcopy(v) for k, v in config["judges"].items() if k != "fit_refusal_judge"}
    for judge in judges.values():
        _with_classifier(judge, config, classifier_path)
    return judges


def _with_classifier(judge: dict, config: dict, classifier_path: str | None) -> None:
    """Point a MiniLM judge (in place) at the fitted demo classifier, when the config fits one."""
    if config["judges"]["fit_refusal_judge"] and judge["name"].startswith("minilm_"):
        judge.setdefault("options", {})["classifier_path"] = classifier_path


def prepare_spec(config: dict) -> dict:
    return {"model": config["model"], "vocab_files": sorted(config["data"].values())}


def _training(config: dict) -> dict:
    """What every training stage's spec carries: the device, the seed and (when the config sets it) the
    precision, which otherwise follows the device (frpo.training.precision)."""
    out = {"device": config["device"], "seed": config["seed"]}
    if "precision" in config:
        out["precision"] = config["precision"]
    return out


def warmup_spec(config: dict) -> dict:
    return {
        **_training(config),
        "dataset": {"path": config["data"]["refusal_demos"], "format": "chat"},
        "train": config["warmup"]["train"],
    }


def rl_spec(config: dict, run: str, classifier_path: str | None) -> dict:
    rl = {k: v for k, v in config["rl"].items() if k not in ("algorithms", "lambdas", "lambda_star")}
    rl["beta"] = run_beta(config["rl"], run)  # the run's own β: editing another run's β leaves this one alone
    objective, lam = ("grpo", None) if run == "grpo" else ("frpo", float(run[len("frpo_lam"):]))
    return {
        "run": run, "objective": objective, "frpo_lambda": lam, **_training(config),
        "rl": rl, "judges": judges_spec(config, classifier_path),
        "data": {"safety_prompts": config["data"]["safety_prompts"]},
    }


def finetune_spec(config: dict, setting: str, classifier_path: str | None) -> dict:
    match = _SETTING.match(setting)
    if not match:
        raise ConfigError(f"fine-tuning setting {setting!r} is not <dataset>-<full|lora>-lr<lr>-ep<epochs>")
    ft = config["finetune"]
    train = {k: ft[k] for k in ("batch_size", "max_length", "save_steps", "gradient_accumulation_steps",
                                "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_steps") if k in ft}
    train.update(method=match["method"], learning_rate=float(match["lr"]), epochs=int(match["epochs"]))
    if match["method"] == "lora":
        train["lora"] = ft["lora"]
    dataset = match["dataset"]
    return {
        **_training(config),
        "dataset": {"path": config["data"][dataset], "format": _FORMATS[dataset], "split": "train",
                    "max_examples": ft.get("max_examples")},
        "train": train, "track": ft["track"], "judges": judges_spec(config, classifier_path),
        "data": {"safety_prompts": config["data"]["safety_prompts"]},
    }


#: eval sections passed through to the benchmark modules (see frpo/evals/*.py for the keys each reads)
EVAL_SECTIONS = ("harmbench", "strongreject", "lm_eval", "math500", "gsm8k_maj8", "mmlu", "ifeval", "evalplus",
                 "mbpp_plus", "humaneval_plus")


def eval_spec(config: dict, classifier_path: str | None) -> dict:
    ev = config["eval"]
    spec = {
        "device": config["device"], "data": config["data"], "judges": judges_spec(config, classifier_path),
        "max_prompts": ev.get("max_prompts"), "generation": ev["generation"],
        "judge_cache_dir": ev.get("judge_cache_dir", f"results/{config['name']}/judge_cache"),
    }
    for section in EVAL_SECTIONS:
        if section in ev:
            spec[section] = copy.deepcopy(ev[section])
    for section in ("harmbench", "strongreject"):  # the demo classifier, where an eval judge uses it
        if spec.get(section, {}).get("judge"):
            _with_classifier(spec[section]["judge"], config, classifier_path)
    return spec
