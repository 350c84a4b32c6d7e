# All of the workflow's Python lives here: config validation, wildcard constraints, paths and input functions.
# The stage specs and checks themselves are in src/frpo/config.py, where they are unit-tested.
import json
import os

from frpo.config import (
    eval_spec,
    finetune_settings,
    finetune_spec,
    prepare_spec,
    rl_runs,
    rl_spec,
    validate_config,
    warmup_spec,
)
from frpo.models import merge_mem_mb

validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), source="config")

RESULTS = f"results/{config['name']}"
CKPT = f"{RESULTS}/.ckpt"  # training checkpoints: outside every declared output, so a rerun can resume
LOGS = f"logs/{config['name']}"
ENV = "../../envs/frpo.yaml"


RUN_RE = r"grpo|frpo_lam[0-9]+(\.[0-9]+)?"  # λ as the schema's $defs/lambda allows it
SETTING_RE = r"[a-z0-9_]+-(full|lora)-lr[0-9.eE+-]+-ep[0-9]+"


wildcard_constraints:
    run=RUN_RE,
    setting=SETTING_RE,
    target=rf"ref|rl/({RUN_RE})|ft/({RUN_RE})/{SETTING_RE}",  # the model an evaluation reads (eval.smk)


def parent(path):
    """The directory a stage writes into, derived from one of its declared outputs."""
    return os.path.dirname(path)


def spec_json(spec):
    return json.dumps(spec, sort_keys=True)


def classifier():
    """The fitted demo refusal classifier, when the config fits one (else None)."""
    return f"{RESULTS}/judges/refusal_classifier.json" if config["judges"]["fit_refusal_judge"] else None


def classifier_input(wildcards=None):
    return [classifier()] if classifier() else []


def ref_model():
    """π_ref: the warm-up model when the warm-up stage is on, else the base model."""
    return f"{RESULTS}/warmup/model" if config["warmup"]["enabled"] else f"{RESULTS}/models/base"


def lambda_star():
    """The canonical λ* string, once the lambda_select checkpoint has run (None when λ* is not configured)."""
    if not config["rl"].get("lambda_star", {}).get("enabled"):
        return None
    with open(checkpoints.lambda_select.get().output[0]) as f:
        return json.load(f)["lambda"]


def all_runs():
    return rl_runs(config, lambda_star())


def ft_targets():
    return [(run, setting) for run in all_runs() for setting in finetune_settings(config)]


def tracking_inputs(wildcards=None):
    return {f"{run}/{setting}": f"{RESULTS}/ft/{run}/{setting}/tracking.csv" for run, setting in ft_targets()}


def eval_inputs(wildcards=None):
    benches = config["eval"]["benchmarks"]
    out = {f"ref:{b}": f"{RESULTS}/eval/ref/{b}.json" for b in benches}
    for run in all_runs():
        out.update({f"{run}:{b}": f"{RESULTS}/eval/rl/{run}/{b}.json" for b in benches})
    for run, setting in ft_targets():
        out.update({f"{run}/{setting}:{b}": f"{RESULTS}/eval/ft/{run}/{setting}/{b}.json" for b in benches})
    return out


def eval_model(wildcards):
    """The model directory an eval target names: ref, rl/<run> or ft/<run>/<setting>."""
    kind, _, rest = wildcards.target.partition("/")
    if kind == "ref":
        return ref_model()
    if kind == "rl":
        return f"{RESULTS}/models/{rest}"
    return f"{RESULTS}/ft/{rest}/model"


def rl_metrics_inputs(wildcards=None):
    return {run: f"{RESULTS}/rl/{run}/metrics.jsonl" for run in all_runs()}


def pairs(mapping):
    """{label: path} as LABEL=PATH arguments for the frpo CLI."""
    return " ".join(f"{label}={path}" for label, path in mapping.items())


def final_outputs(wildcards=None):
    figures = f"{RESULTS}/figures"
    return [
        f"{figures}/fig_lambda_landscape.png",
        f"{figures}/fig_rl_curves.png",
        f"{figures}/table_final.csv",
    ]
