# All of the workflow's Python lives here: config validation, wildcard constraints, paths and input functions.
# The stage specs and checks are in src/frpo/config.py, names of runs and models in src/frpo/runs.py, and what
# each track needs (data, rewards, probes, figures) in src/frpo/tracks/; all are unit-tested.
import json
import os

from frpo.compute import CONFIG_DIR_ENV, job, sft_stage
from frpo.config import (
    data_path,
    data_spec,
    eval_spec,
    finetune_settings,
    finetune_spec,
    fits_classifier,
    ft_seeds,
    prepare_spec,
    prepared_data,
    rl_runs,
    rl_seeds,
    rl_spec,
    track_names,
    validate_config,
    view,
    warmup_spec,
)
from frpo.models import merge_mem_mb
from frpo.runs import RUN_RE, SEED_RE, SETTING_RE, TARGET_RE, Target
from frpo.tracks import get_track

validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), source="config", root=workflow.basedir)

# `frpo launch --strategy NAME` reads config/accelerate/NAME.yaml of this repository (jobs inherit the variable)
os.environ.setdefault(CONFIG_DIR_ENV, os.path.join(workflow.basedir, "config", "accelerate"))
RESULTS = f"results/{config['name']}"
CKPT = f"{RESULTS}/.ckpt"  # training checkpoints: outside every declared output, so a rerun can resume
LOGS = f"logs/{config['name']}"
ENV = "../../envs/frpo.yaml"
TRACKS = track_names(config)
VIEWS = {t: view(config, t) for t in TRACKS}


def names(items):
    return "|".join(sorted(items)) or "(?!)"


wildcard_constraints:
    track=names(TRACKS),
    run=RUN_RE,
    seed=SEED_RE,
    ft_seed=SEED_RE,
    setting=SETTING_RE,
    target=TARGET_RE,  # the model an evaluation reads (eval.smk)
    key=names({k for t in TRACKS for k in prepared_data(VIEWS[t])}),
    figure=names({f for t in TRACKS for f, s in get_track(t).FIGURES.items() if s["kind"] == "figure"}),
    table=names({f for t in TRACKS for f, s in get_track(t).FIGURES.items() if s["kind"] == "table"}),


def V(wildcards):
    """The config of the track a job belongs to (frpo.config.view)."""
    return VIEWS[wildcards.track]


def parent(path):
    """The directory a stage writes into, derived from one of its declared outputs."""
    return os.path.dirname(path)


def spec_json(spec):
    return json.dumps(spec, sort_keys=True)


def on_gpu(wildcards=None):
    return 1 if config["device"] == "cuda" else 0


def training_job(kind):
    """The frpo.compute.Job of a training rule's job: ``kind`` is rl, warmup or finetune; the job's size is its
    track's model.size and its stage the method it trains with (compute.sizes in the config)."""

    def of(wildcards):
        v = V(wildcards)
        if kind == "rl":
            return job(v, "rl")
        if kind == "warmup":
            return job(v, sft_stage(v["warmup"]["train"]["method"]))
        from frpo.runs import parse_setting

        return job(v, sft_stage(parse_setting(wildcards.setting).method))

    return of


def job_resources(kind):
    """A training rule's resources, each looked up from its job (frpo.compute.Job.resources): GPUs, nodes,
    tasks, CPUs per GPU, memory and runtime (doubled on the retry)."""
    of = training_job(kind)
    keys = ("gpu", "gres", "nodes", "tasks", "cpus_per_task", "cpus_per_gpu", "mem_mb", "runtime")
    return {key: (lambda w, attempt, key=key: of(w).resources(attempt)[key]) for key in keys}


def launcher(kind):
    """The command prefix of a training rule: empty for one process, ``frpo launch ... --`` for several."""
    of = training_job(kind)
    return lambda w: of(w).launcher()


def classifier(track):
    """The fitted demo refusal classifier of a track, when its config fits one (else None)."""
    return f"{RESULTS}/{track}/judges/refusal_classifier.json" if fits_classifier(VIEWS[track]) else None


def classifier_input(wildcards):
    return [classifier(wildcards.track)] if classifier(wildcards.track) else []


def ref_model(track):
    """π_ref: the warm-up model when the track's warm-up stage is on, else its base model."""
    return f"{RESULTS}/{track}/warmup/model" if VIEWS[track]["warmup"]["enabled"] else f"{RESULTS}/{track}/models/base"


def prepared_inputs(track, *keys):
    """The prepared files (prepare_data) among a track's data ``keys``; keys read as configured are no input."""
    v = VIEWS[track]
    return [data_path(v, key) for key in keys if key in prepared_data(v)]


def stage_data(wildcards):
    """The prepared data a training stage of the track reads: its RL prompts (also the tracker's probes)."""
    return prepared_inputs(wildcards.track, get_track(wildcards.track).RL_DATA)


def finetune_data(wildcards):
    """Fine-tuning reads the RL prompts (probes) and its own data set."""
    from frpo.runs import parse_setting

    return prepared_inputs(wildcards.track, get_track(wildcards.track).RL_DATA,
                           parse_setting(wildcards.setting).dataset)


def lambda_star(track):
    """The canonical λ* string of a track, once its lambda_select checkpoint has run (None when not configured)."""
    if not VIEWS[track]["rl"].get("lambda_star", {}).get("enabled"):
        return None
    with open(checkpoints.lambda_select.get(track=track).output[0]) as f:
        return json.load(f)["lambda"]


def rl_targets(track):
    return [Target.rl(run, seed) for run in rl_runs(VIEWS[track], lambda_star(track)) for seed in rl_seeds(VIEWS[track])]


def ft_targets(track):
    v = VIEWS[track]
    return [Target.ft(t.run.name, t.rl_seed, setting, fs)
            for t in rl_targets(track) for setting in finetune_settings(v) for fs in ft_seeds(v)]


def model_dir(track, target):
    """The model directory of a target (frpo.runs.Target)."""
    if target.stage == "base":
        return ref_model(track)
    if target.stage == "rl":
        return f"{RESULTS}/{track}/models/{target.run.name}/seed{target.rl_seed}"
    return f"{RESULTS}/{track}/{target.path}/model"


def eval_model(wildcards):
    from frpo.runs import parse_target

    return model_dir(wildcards.track, parse_target(wildcards.target))


def rl_metrics_inputs(wildcards):
    t = wildcards.track
    return {x.path: f"{RESULTS}/{t}/{x.path}/metrics.jsonl" for x in rl_targets(t)}


def tracking_inputs(wildcards):
    t = wildcards.track
    return {x.path: f"{RESULTS}/{t}/{x.path}/tracking.csv" for x in ft_targets(t)}


def eval_inputs(wildcards):
    t = wildcards.track
    benches = VIEWS[t]["eval"]["benchmarks"]
    targets = [Target("base"), *rl_targets(t), *ft_targets(t)]
    return {f"{x.path}:{b}": f"{RESULTS}/{t}/eval/{x.path}/{b}.json" for x in targets for b in benches}


TABLE_INPUTS = {"rl_metrics": "rl_metrics.csv", "evals": "evals.csv", "tracking": "tracking.csv"}


def figure_inputs(wildcards):
    """The tidy tables a figure or table of the track reads (its entry in the track's FIGURES)."""
    name = wildcards.get("figure") or wildcards.get("table")
    tables = get_track(wildcards.track).FIGURES[name]["tables"]
    return {t: f"{RESULTS}/{wildcards.track}/tables/{TABLE_INPUTS[t]}" for t in tables}


def pairs(mapping):
    """{label: path} as LABEL=PATH arguments for the frpo CLI."""
    return " ".join(f"{label}={path}" for label, path in mapping.items())


def final_outputs(wildcards=None):
    out = []
    for t in TRACKS:
        for name, spec in get_track(t).FIGURES.items():
            ext = "png" if spec["kind"] == "figure" else "csv"
            out.append(f"{RESULTS}/{t}/figures/{name}.{ext}")
    return out
