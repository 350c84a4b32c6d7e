# All of the workflow's Python lives here: config validation, wildcard constraints, paths and input functions.
# The stage specs and checks are in src/frpo/config.py, names of runs and models in src/frpo/runs.py, and what
# each track needs (data, rewards, probes, figures) in src/frpo/tracks/; all are unit-tested.
import json
import os

from frpo.compute import CONFIG_DIR_ENV, job, sft_stage
from frpo.config import (
    data_path,
    data_spec,
    drawn_figures,
    eval_spec,
    evaluated,
    figure_options,
    finetune_settings,
    finetune_spec,
    fits_classifier,
    ft_seeds,
    prepare_spec,
    prepared_data,
    rl_runs,
    rl_seeds,
    rl_spec,
    samples_spec,
    track_names,
    validate_config,
    view,
    warmup_spec,
)
from frpo.models import merge_mem_mb
from frpo.runs import RUN_RE, SEED_RE, SETTING_RE, TARGET_RE, Target
from frpo.tracks import get_track

def planning_only():
    """Whether snakemake was asked for a dry run (-n, --dry-run, --dryrun, or -n among other short flags: -np). The
    workflow does not know it yet while the Snakefile is read, so the command line is asked."""
    import sys

    for arg in sys.argv[1:]:
        if arg in ("--dry-run", "--dryrun") or (arg[:1] == "-" and arg[1:2] != "-" and arg[1:].isalpha()
                                                 and "n" in arg[1:]):
            return True
    return False


# A dry run plans without the local files and API keys a run needs (it warns about each); a run refuses to start.
validate_config(config, workflow.source_path("../schemas/config.schema.yaml"), source="config", root=workflow.basedir,
                plan_only=planning_only())

# `frpo launch --strategy NAME` reads config/accelerate/NAME.yaml of this repository (jobs inherit the variable)
os.environ.setdefault(CONFIG_DIR_ENV, os.path.join(workflow.basedir, "config", "accelerate"))
RESULTS = f"results/{config['name']}"
CKPT = f"{RESULTS}/.ckpt"  # training checkpoints: outside every declared output, so a rerun can resume
LOGS = f"logs/{config['name']}"
ENV = "../../envs/frpo.yaml"
TRACKS = track_names(config)  # the experiments: blocks under tracks, each an instance of a track module
VIEWS = {t: view(config, t) for t in TRACKS}


def module(track):
    """The track module (frpo.tracks) that experiment ``track`` is an instance of."""
    return get_track(VIEWS[track]["track"])


def drawn(track):
    """The figures and tables experiment ``track`` takes part in (frpo.config.drawn_figures)."""
    return drawn_figures(VIEWS[track])


def scope(track, name):
    """``experiment`` (drawn per experiment) or ``track`` (drawn once over every experiment of the track)."""
    return module(track).FIGURES[name].get("scope", "experiment")


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
    kind=names({VIEWS[t]["track"] for t in TRACKS}),
    figure=names({f for t in TRACKS for f, s in module(t).FIGURES.items() if s["kind"] == "figure"}),
    table=names({f for t in TRACKS for f, s in module(t).FIGURES.items() if s["kind"] == "table"}),


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


# Jobs that mostly start Python, load a model and generate a little (evaluations, LoRA merges, reward sampling):
# on the CPU one thread each, so that two run side by side on a 2-core machine (snakemake sets OMP_NUM_THREADS to a
# rule's threads, so declaring 2 would run them one at a time, or oversubscribe the cores under a larger --cores).
LIGHT_THREADS = 1 if config["device"] == "cpu" else 2


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
    return prepared_inputs(wildcards.track, module(wildcards.track).RL_DATA)


def finetune_data(wildcards):
    """Fine-tuning reads the RL prompts (probes) and its own data set."""
    from frpo.runs import parse_setting

    return prepared_inputs(wildcards.track, module(wildcards.track).RL_DATA,
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
    return [Target.ft(t.run.name, t.rl_seed, setting, fs) for t in rl_targets(track)
            for setting in finetune_settings(v, t.run.name, t.rl_seed) for fs in ft_seeds(v)]


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
    targets = [x for x in (Target("base"), *rl_targets(t), *ft_targets(t)) if evaluated(VIEWS[t], x)]
    return {f"{x.path}:{b}": f"{RESULTS}/{t}/eval/{x.path}/{b}.json" for x in targets for b in benches}


def rewards_inputs(wildcards):
    t = wildcards.track
    return {x.path: f"{RESULTS}/{t}/{x.path}/rewards.jsonl" for x in rl_targets(t)}


TABLE_INPUTS = {"rl_metrics": "rl_metrics.csv", "evals": "evals.csv", "tracking": "tracking.csv",
                "rewards": "rewards.csv"}


def figure_inputs(wildcards):
    """The tidy tables a figure or table reads (its entry in the track's FIGURES): the experiment's own, or for a
    figure drawn over a whole track, those of every experiment of the track that draws it."""
    name = wildcards.get("figure") or wildcards.get("table")
    if "kind" in wildcards.keys():
        tracks = [t for t in TRACKS if VIEWS[t]["track"] == wildcards.kind and name in drawn(t)]
        tables = get_track(wildcards.kind).FIGURES[name]["tables"]
        return {f"{table}@{t}": f"{RESULTS}/{t}/tables/{TABLE_INPUTS[table]}" for table in tables for t in tracks}
    tables = module(wildcards.track).FIGURES[name]["tables"]
    return {t: f"{RESULTS}/{wildcards.track}/tables/{TABLE_INPUTS[t]}" for t in tables}


def drawing(wildcards):
    """The experiment whose figure_options a figure or table job takes: its own, or for a figure drawn over a whole
    track, the first experiment that draws it (they agree: frpo.config checks it)."""
    name = wildcards.get("figure") or wildcards.get("table")
    if "kind" in wildcards.keys():
        return next(t for t in TRACKS if VIEWS[t]["track"] == wildcards.kind and name in drawn(t))
    return wildcards.track


def options_json(wildcards):
    """A figure or table's options (frpo.config.figure_options) as the JSON of `frpo figure --options`."""
    return spec_json(figure_options(VIEWS[drawing(wildcards)], wildcards.get("figure") or wildcards.get("table")))


def pairs(mapping):
    """{label: path} as LABEL=PATH arguments for the frpo CLI (``table@experiment`` labels as ``table``: the
    figure reads the tables of one name together)."""
    return " ".join(f"{label.split('@')[0]}={path}" for label, path in mapping.items())


def final_outputs(wildcards=None):
    out = []
    for t in TRACKS:
        for name in drawn(t):
            spec = module(t).FIGURES[name]
            ext = "png" if spec["kind"] == "figure" else "csv"
            where = f"{RESULTS}/figures/{VIEWS[t]['track']}" if scope(t, name) == "track" else f"{RESULTS}/{t}/figures"
            out.append(f"{where}/{name}.{ext}")
    return sorted(set(out), key=out.index)
