"""Workflow config validation: the JSON schema plus the checks a schema cannot express.

``workflow/rules/common.smk`` calls :func:`validate_config` before any job starts, so a bad config fails at DAG
construction with the key and the reason, not hours into a run. The stage specs handed to each rule are
built here too (:func:`stage_spec`), so the rules stay free of logic.
"""

from __future__ import annotations

import copy
import math
import sys
from itertools import product
from pathlib import Path

import yaml

from .runs import LAMBDA_RE, parse_run, parse_setting, run_name, setting_name
from .tracks import TRACKS, get_track

__all__ = [
    "ConfigError", "data_path", "data_spec", "drawn_figures", "eval_spec", "evaluated", "experiment_block",
    "figure_options", "finetune_settings",
    "finetune_spec", "finetune_sweeps", "ft_seeds", "samples_rewards", "samples_spec", "sweep_settings", "track_kind",
    "judges_spec", "prepare_spec", "prepared_data", "rl_runs", "rl_seeds", "rl_spec", "run_beta", "run_value",
    "track_names", "validate_config", "view", "warmup_spec",
]


class ConfigError(ValueError):
    """A configuration problem, with the offending key in the message."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def validate_config(config: dict, schema_path: str | Path, source: str = "config",
                    root: str | Path | None = None, plan_only: bool = False) -> dict:
    """Validate ``config`` against the schema at ``schema_path`` and the semantic rules; return it unchanged.
    ``root``: the repository, whose config/accelerate/ holds the distributed strategies (default: the one the
    schema lies in). ``plan_only`` (a dry run): what is absent from this machine rather than wrong in the config (a
    local data file, an API key in the environment) is printed as a warning instead of refused, so that a plan
    can be made before the files and keys are in place; every other check is the same."""
    import jsonschema

    schema = yaml.safe_load(Path(schema_path).read_text())
    # λ appears in run names: the schema's pattern is the one frpo.runs parses back
    schema["$defs"]["lambda"]["pattern"] = rf"^(?:{LAMBDA_RE})\Z"  # \Z: "$" would allow a trailing newline
    # training stages and distributed strategies: the names frpo.compute places jobs by
    from .compute import STAGES, STRATEGIES

    schema["properties"]["compute"]["properties"]["sizes"]["additionalProperties"]["propertyNames"]["enum"] = \
        list(STAGES)
    schema["$defs"]["job"]["properties"]["strategy"]["enum"] = list(STRATEGIES)
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(_resolved(config, source)),
                    key=lambda e: (len(e.path), list(map(str, e.path))))
    if errors:
        lines = []
        for err in errors[:10]:
            if err.validator == "additionalProperties":
                known = sorted(err.schema.get("properties", {}))
                lines.append(f"{source}: {_key(err.path)}: {err.message} (known keys: {', '.join(known)})")
            else:
                lines.append(f"{source}: {_key(err.path)}: {err.message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines))
    absent: list[str] = []
    _check_semantics(config, source, Path(root) if root else Path(schema_path).resolve().parents[2],
                     absent.append if plan_only else None)
    for message in absent:
        print(f"frpo: planning only; a run would stop here: {message}", file=sys.stderr)
    return config


def _resolved(config: dict, source: str) -> dict:
    """``config`` with every experiment block's ``extends`` resolved (what the schema checks), when its blocks are
    mappings (else as it is, for the schema to refuse)."""
    blocks = config.get("tracks") if isinstance(config, dict) else None
    if not isinstance(blocks, dict) or not all(isinstance(b, dict) for b in blocks.values()):
        return config
    for name, block in blocks.items():
        if "extends" in block and not isinstance(block["extends"], str):
            raise ConfigError(f"{source}: tracks.{name}.extends: the name of another block under tracks, got "
                              f"{block['extends']!r}")
    return {**config, "tracks": {name: experiment_block(config, name, source) for name in blocks}}


def track_names(config: dict) -> list[str]:
    """The experiments a config runs (its ``tracks:`` blocks), in the order it lists them."""
    return list(config["tracks"])


def _merge(base: dict, over: dict) -> dict:
    """``over`` deep-merged onto ``base``: mappings merge key by key, anything else (lists included) replaces."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def experiment_block(config: dict, name: str, source: str = "config") -> dict:
    """Block ``name`` of ``config["tracks"]`` with its ``extends`` chain resolved: each ``extends: OTHER`` block is
    deep-merged onto OTHER's resolved block (mappings merge key by key; lists and values replace), so a variant
    (another model, another sweep) writes only what differs. Unknown or circular ``extends`` are refused. ``kind``
    is always set: given, inherited, or the name of the block the chain starts from."""
    blocks = config["tracks"]
    chain, at = [], name
    while at is not None:
        if at in chain:
            raise ConfigError(f"{source}: tracks.{name}.extends: circular ({' -> '.join([*chain, at])})")
        if at not in blocks:
            raise ConfigError(f"{source}: tracks.{chain[-1]}.extends: no block {at!r} under tracks "
                              f"(known: {', '.join(blocks)})")
        chain.append(at)
        at = blocks[at].get("extends")
    out: dict = {"kind": chain[-1]}  # a block's track defaults to the name of the block its chain starts from
    for block in reversed(chain):
        out = _merge(out, {k: v for k, v in blocks[block].items() if k != "extends"})
    return out


def track_kind(config: dict, name: str) -> str:
    """The track (module of :mod:`frpo.tracks`) that experiment ``name`` is an instance of: its ``kind``, else
    its name."""
    return experiment_block(config, name).get("kind", name)


def view(config: dict, track: str) -> dict:
    """Experiment ``track`` of ``config`` (a block under ``tracks:``) as one flat section: the shared keys (name,
    device, seed, precision, compute, logging), the block with its ``extends`` resolved, ``experiment`` (the
    block's name, which names its results directory and its rows in the tidy tables), ``track`` (the track
    module it is an instance of: ``kind``, default its name) and ``results`` (its results directory)."""
    out = {k: config[k] for k in ("name", "device", "seed", "precision", "compute", "logging") if k in config}
    block = experiment_block(config, track)
    out.update(block)
    out.pop("kind", None)
    out["experiment"] = track
    out["track"] = block.get("kind", track)
    out["results"] = f"results/{config['name']}/{track}"
    out.setdefault("warmup", {"enabled": False})
    out.setdefault("judges", {})
    return out


def prepared_data(view: dict) -> list[str]:
    """The data keys of a track that the ``prepare_data`` rule materialises (hub downloads, filters)."""
    track = get_track(view["track"])
    return [k for k, src in view["data"].items() if track.prepared(k, str(src))]


def data_path(view: dict, key: str) -> str:
    """Where the stages read data key ``key``: its prepared file, or the configured source."""
    if key in prepared_data(view):
        return f"{view['results']}/data/{key}.jsonl"
    return str(view["data"][key])


def _check_data(view: dict, where: str, source: str, absent=None) -> None:
    """The track's data keys are all given and known; every local file exists and parses (a missing file or a bad
    row fails now, naming the file and the line). ``hub:`` sources are downloaded and checked by prepare_data."""
    from .data import DataError, read_jsonl, resolve

    track = get_track(view["track"])
    data = view["data"]
    for key in data:
        if key not in track.DATA:
            raise ConfigError(f"{source}: {where}.data.{key}: not a data key of track {view['track']!r} "
                              f"(known: {', '.join(track.DATA)})")
    for key, spec in track.DATA.items():
        if key not in data:
            if spec.get("optional"):
                continue
            raise ConfigError(f"{source}: {where}.data.{key}: missing (track {view['track']!r} needs it)")
        src = str(data[key])
        if src.startswith("hub:"):
            if not spec.get("hub"):
                raise ConfigError(f"{source}: {where}.data.{key}: a hub source is not supported for this key")
            if src[len("hub:"):] not in track.HUB_SOURCES:
                raise ConfigError(f"{source}: {where}.data.{key}: unknown hub source {src!r} (known: "
                                  f"{', '.join('hub:' + h for h in track.HUB_SOURCES)})")
            continue
        if src.endswith(".parquet") and track.prepared(key, src):  # prepare_data converts it, naming bad rows
            if not Path(src).is_file():
                _absent(f"{source}: {where}.data.{key}: {src!r} is not a file", absent)
            continue
        try:
            read_jsonl(resolve(src), required=spec["fields"])
        except FileNotFoundError as err:
            _absent(f"{source}: {where}.data.{key}: {err}", absent)
        except (DataError, ValueError) as err:
            raise ConfigError(f"{source}: {where}.data.{key}: {err}") from err


def _check_data_prompts(v: dict, where: str, source: str) -> None:
    """``finetune.track.data_prompts`` measures the KL on held-out (``eval``) rows of each fine-tuning set: every
    local set the sweeps train on has some (a prepared set's split is made when it is prepared)."""
    from .data import read_jsonl, resolve

    for dataset in dict.fromkeys(d for sweep in finetune_sweeps(v) for d in sweep["datasets"]):
        if dataset in prepared_data(v):
            continue
        try:
            rows = read_jsonl(resolve(str(v["data"][dataset])))
        except FileNotFoundError:
            continue  # reported by the data check
        if not any(r.get("split") == "eval" for r in rows):
            raise ConfigError(f"{source}: {where}.finetune.track.data_prompts: data.{dataset} "
                              f"({v['data'][dataset]}) has no row with split 'eval' to measure the KL on")


def _check_track(config: dict, name: str, source: str, absent=None) -> None:
    from .evals import check_eval_config

    where = f"tracks.{name}"
    kind = track_kind(config, name)
    if kind not in TRACKS:
        key = f"{where}.kind" if kind != name else where
        raise ConfigError(f"{source}: {key}: unknown track {kind!r} (known: {', '.join(sorted(TRACKS))}; a block "
                          "named otherwise says which with kind: <track>)")
    v = view(config, name)
    track = get_track(kind)
    _check_data(v, where, source, absent)
    rl = v["rl"]
    for i, lam in enumerate(rl["lambdas"]):
        value = float(lam)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{source}: {where}.rl.lambdas.{i}: λ must be > 0, got {lam!r}")
    if "frpo" in rl["algorithms"] and not rl["lambdas"] and not rl.get("lambda_star", {}).get("enabled"):
        raise ConfigError(f"{source}: {where}.rl.lambdas: FRPO needs at least one λ (or rl.lambda_star.enabled: true)")
    if rl.get("lambda_star", {}).get("enabled") and "grpo" not in rl["algorithms"]:
        raise ConfigError(f"{source}: {where}.rl.lambda_star: λ* is read off the GRPO run; add grpo to rl.algorithms")
    for key in PER_RUN_KEYS:
        if key in rl:
            _check_per_run(rl, key, f"{where}.rl", source)
    if "scale_rewards" in rl:  # FRPO's e^{-A/λ} needs advantages on the reward's scale
        for run in rl_runs(v):
            scaling = run_value(rl, "scale_rewards", run)
            if parse_run(run).algorithm == "frpo" and scaling != "none":
                raise ConfigError(f"{source}: {where}.rl.scale_rewards: {run} would scale its advantages by the "
                                  f"{scaling}'s reward std; FRPO needs centred, unscaled advantages (none)")
    if ("steps" in rl) == ("epochs" in rl):
        raise ConfigError(f"{source}: {where}.rl: give exactly one of rl.steps (optimiser steps) and rl.epochs "
                          "(epochs over the training prompts, as the paper states its schedule)")
    _check_batches(v, where, source)
    ft = v["finetune"]
    _check_sweeps(v, where, source)
    for dataset in ft.get("recipes", {}):
        if dataset not in track.FINETUNE:
            raise ConfigError(f"{source}: {where}.finetune.recipes.{dataset}: not a fine-tuning set of track "
                              f"{kind!r} (known: {', '.join(track.FINETUNE)})")
    for fig in v.get("figures", []):
        if fig not in track.FIGURES:
            raise ConfigError(f"{source}: {where}.figures: {fig!r} is not a figure or table of track {kind!r} "
                              f"(known: {', '.join(track.FIGURES)})")
    _check_eval_models(v, where, source)
    _check_figure_options(v, where, source)
    if name == "figures":
        raise ConfigError(f"{source}: {where}: the name 'figures' is reserved (results/<name>/figures/ holds the "
                          "figures drawn over several experiments)")
    for fig in drawn_figures(v):
        if "rewards" in track.FIGURES[fig]["tables"] and "floor" not in v:
            raise ConfigError(f"{source}: {where}.floor: missing ({fig} reads the RL models' sampled rewards; give "
                              "floor: {samples, max_new_tokens}, or leave the figure out of figures)")
    if "floor" in v and not (ft.get("track") or {}).get("n_prompts"):
        raise ConfigError(f"{source}: {where}.floor: the floor samples the tracker's probes; set finetune.track")
    probes = (ft.get("track") or {}).get("n_prompts", {})
    for probe in probes:
        if probe not in track.PROBES:
            raise ConfigError(f"{source}: {where}.finetune.track.n_prompts.{probe}: not a probe of track {kind!r} "
                              f"(its probes: {', '.join(track.PROBES)})")
    if probes and set(probes) != set(track.PROBES):
        missing = [p for p in track.PROBES if p not in probes]
        raise ConfigError(f"{source}: {where}.finetune.track.n_prompts: missing {', '.join(missing)} (the tracker "
                          f"measures every probe of track {kind!r})")
    if (ft.get("track") or {}).get("data_prompts"):
        _check_data_prompts(v, where, source)
    if v["warmup"]["enabled"] and not getattr(track, "WARMUP_DATA", None):
        raise ConfigError(f"{source}: {where}.warmup.enabled: track {kind!r} has no warm-up data")
    if v["warmup"]["enabled"] and track.WARMUP_DATA[0] not in v["data"]:
        raise ConfigError(f"{source}: {where}.data.{track.WARMUP_DATA[0]}: missing (the warm-up trains on it)")
    if v["warmup"]["enabled"] and "train" not in v["warmup"]:
        raise ConfigError(f"{source}: {where}.warmup.train: missing (the warm-up is enabled)")
    model = v["model"]
    source_kind = model["source"]
    if source_kind not in model and source_kind != "tiny":
        raise ConfigError(f"{source}: {where}.model.{source_kind}: missing (model.source is {source_kind!r})")
    if source_kind == "local" and not Path(model["local"]["path"]).is_dir():
        raise ConfigError(f"{source}: {where}.model.local.path: {model['local']['path']!r} is not a directory")
    if v["judges"].get("fit_refusal_judge") and "judge_labelled" not in v["data"]:
        raise ConfigError(f"{source}: {where}.judges.fit_refusal_judge: no data.judge_labelled to fit the demo's "
                          "refusal classifier on")
    track.check(v, source)
    # the benchmarks check their own sections: names, data files, judges and their credentials (frpo.evals)
    check_eval_config(v["eval"], where, source, absent)
    from .judges import missing_env

    judges = {f"{where}.judges.{k}": j for k, j in v["judges"].items() if k != "fit_refusal_judge"}
    for key, judge in judges.items():
        missing = missing_env(judge)
        if missing:
            _absent(f"{source}: {key}: judge {judge['name']!r} needs the environment variable(s) "
                    f"{', '.join(missing)}, which are not set", absent)


def _check_batches(v: dict, where: str, source: str) -> None:
    """The global batch of every training job is what the config says, whatever its process count
    (frpo.compute.job): RL's prompts_per_step spreads over micro-batches × processes in whole groups, and an SFT
    stage's gradient accumulation (written for one process) is divided among its processes."""
    from .compute import job, sft_stage

    rl = v["rl"]
    shards = rl.get("gradient_accumulation_steps", 1) * job(v, "rl").processes
    if rl["prompts_per_step"] % shards:
        raise ConfigError(f"{source}: {where}.rl.prompts_per_step: {rl['prompts_per_step']} is not a multiple of "
                          f"gradient_accumulation_steps × processes = {shards} (compute.sizes."
                          f"{v['model'].get('size')}.rl): every micro-batch of every process holds whole groups")
    methods = dict.fromkeys(parse_setting(s).method for s in finetune_settings(v))
    sft = [("finetune", v["finetune"], m) for m in methods]
    if v["warmup"]["enabled"] and "train" in v["warmup"]:  # (a warm-up without train is refused below)
        sft.append(("warmup.train", v["warmup"]["train"], v["warmup"]["train"]["method"]))
    for key, section, method in sft:
        n = job(v, sft_stage(method)).processes
        if section.get("gradient_accumulation_steps", 1) % n:
            raise ConfigError(f"{source}: {where}.{key}.gradient_accumulation_steps: "
                              f"{section.get('gradient_accumulation_steps', 1)} (written for one process) is not a "
                              f"multiple of the {n} processes of compute.sizes.{v['model'].get('size')}."
                              f"{sft_stage(method)}: the global batch would change")


def per_process_accumulation(section: dict, processes: int) -> int:
    """An SFT section's gradient accumulation on ``processes`` processes: the configured (one-process) value
    divided among them, so the global batch (batch_size × accumulation × processes) stays the configured one."""
    return section.get("gradient_accumulation_steps", 1) // processes


def _check_semantics(config: dict, source: str, root: Path, absent=None) -> None:
    """``root``: the repository (the schema's workflow/schemas/ lies in it), where config/accelerate/ is.
    ``absent``: None (refuse what is absent from this machine), or a callable that is handed each such problem."""
    from .compute import check_compute

    check_compute(config, source, root)
    for name in config["tracks"]:
        _check_track(config, name, source, absent)
    _check_shared_figure_options(config, source)


def _check_shared_figure_options(config: dict, source: str) -> None:
    """A figure drawn once over every experiment of a track (scope ``track``) is drawn with one set of options:
    the experiments that draw it agree on its ``figure_options``."""
    seen: dict[tuple[str, str], tuple[str, dict]] = {}
    for name in config["tracks"]:
        v = view(config, name)
        figures = get_track(v["track"]).FIGURES
        for fig in drawn_figures(v):
            if figures[fig].get("scope") != "track":
                continue
            options = figure_options(v, fig)
            first = seen.setdefault((v["track"], fig), (name, options))
            if first[1] != options:
                raise ConfigError(f"{source}: tracks.{name}.figure_options.{fig}: differs from tracks.{first[0]}'s, "
                                  f"but {fig} is drawn once over every experiment of track {v['track']!r}")


def _absent(message: str, absent) -> None:
    """A file or an environment variable this machine lacks: refused, or handed to ``absent`` (a dry run)."""
    if absent is None:
        raise ConfigError(message)
    absent(message)


#: rl keys that take one value for every run or a map {grpo, <λ as in rl.lambdas>, default} (the public launchers
#: give each run its own β, the math grid its own learning rate)
PER_RUN_KEYS = ("beta", "learning_rate", "max_grad_norm", "weight_decay", "scale_rewards")
#: the per-run keys whose values are words, not numbers
PER_RUN_TEXT_KEYS = ("scale_rewards",)


def _check_per_run(rl: dict, name: str, where: str, source: str) -> None:
    """A per-run map names a value for every configured run: ``grpo``, each λ of ``rl.lambdas``, and ``default``
    for runs it does not list (λ*, whose value is only known after the GRPO run)."""
    value = rl[name]
    if not isinstance(value, dict):
        return
    for key in value:
        if key not in ("grpo", "default"):
            try:
                float(key)
            except ValueError:
                raise ConfigError(f"{source}: {where}.{name}.{key}: a per-run map's keys are grpo, default or a λ "
                                  "of rl.lambdas") from None
            if key not in rl["lambdas"]:
                raise ConfigError(f"{source}: {where}.{name}.{key}: λ={key} is not in rl.lambdas {rl['lambdas']} "
                                  "(write the λ exactly as rl.lambdas does)")
    if "default" in value:
        return
    needed = (["grpo"] if "grpo" in rl["algorithms"] else [])
    if "frpo" in rl["algorithms"]:
        needed += list(rl["lambdas"])
    missing = [k for k in needed if k not in value]
    if missing:
        raise ConfigError(f"{source}: {where}.{name}: no value for {', '.join(missing)} (add them, or a default)")
    if "frpo" in rl["algorithms"] and rl.get("lambda_star", {}).get("enabled"):
        raise ConfigError(f"{source}: {where}.{name}: FRPO at λ* needs {name}.default (λ* is only known after GRPO)")


def run_value(rl: dict, name: str, run: str):
    """``rl[name]`` of one run: the value itself, or its entry for the run (``grpo`` or the λ string), else its
    default; a number as a float (the text keys, :data:`PER_RUN_TEXT_KEYS`, as written)."""
    value = rl[name]
    as_value = str if name in PER_RUN_TEXT_KEYS else float
    if not isinstance(value, dict):
        return as_value(value)
    parsed = parse_run(run)
    key = "grpo" if parsed.algorithm == "grpo" else parsed.lambda_text
    if key in value:
        return as_value(value[key])
    if "default" in value:
        return as_value(value["default"])
    raise ConfigError(f"rl.{name}: no value for run {run!r} and no default")


def run_beta(rl: dict, run: str) -> float:
    """β of one run (:func:`run_value` of ``beta``)."""
    return run_value(rl, "beta", run)


def rl_runs(view: dict, lambda_star: str | None = None) -> list[str]:
    """The RL run names: ``grpo`` and ``frpo_lam<λ>`` for each configured λ (and λ*, once known)."""
    rl = view["rl"]
    runs = [run_name("grpo")] if "grpo" in rl["algorithms"] else []
    if "frpo" in rl["algorithms"]:
        lams = list(rl["lambdas"])
        if lambda_star is not None and lambda_star not in lams:
            lams.append(lambda_star)
        runs += [run_name("frpo", lam) for lam in lams]
    return runs


def _seeds(section: dict, view: dict) -> list[int]:
    """``seeds`` of a section: a list, or a count n meaning seeds 0 .. n−1; default the config's seed."""
    seeds = section.get("seeds", [view["seed"]])
    return list(range(seeds)) if isinstance(seeds, int) else list(seeds)


def rl_seeds(view: dict) -> list[int]:
    """The seeds of every RL run (``rl.seeds``: a list, or a count n for 0 .. n−1; default: the config's seed)."""
    return _seeds(view["rl"], view)


def ft_seeds(view: dict) -> list[int]:
    """The seeds of every fine-tuning run (``finetune.seeds``, as ``rl.seeds``; default: the config's seed)."""
    return _seeds(view["finetune"], view)


def finetune_sweeps(view: dict) -> list[dict]:
    """The fine-tuning sweeps: ``finetune.sweeps``, or the one sweep that ``finetune``'s own datasets, methods,
    learning_rates and epochs describe (over every RL run)."""
    ft = view["finetune"]
    if "sweeps" in ft:
        return [dict(s) for s in ft["sweeps"]]
    return [{k: ft[k] for k in ("datasets", "methods", "learning_rates", "epochs")}]


def sweep_settings(sweep: dict) -> list[str]:
    """The settings of one sweep: its grid, or ``sample.n`` of them drawn with ``sample.seed`` (without
    replacement; the draw is listed in grid order, so it does not depend on the order of the draw)."""
    grid = [setting_name(d, m, lr, ep) for d, m, lr, ep in product(sweep["datasets"], sweep["methods"],
                                                                   sweep["learning_rates"], sweep["epochs"])]
    sample = sweep.get("sample")
    if not sample or sample["n"] >= len(grid):
        return grid
    import random

    picked = set(random.Random(sample["seed"]).sample(range(len(grid)), sample["n"]))
    return [s for i, s in enumerate(grid) if i in picked]


def finetune_settings(view: dict, run: str | None = None, rl_seed: int | None = None) -> list[str]:
    """The fine-tuning setting names (``<dataset>-<method>-lr<lr>-ep<epochs>``) of RL run ``run`` with seed
    ``rl_seed``: the union of the sweeps that cover it, each setting once, in sweep order. With no run, every
    setting of every sweep."""
    out: dict[str, None] = {}
    for sweep in finetune_sweeps(view):
        if run is not None and "runs" in sweep and run not in sweep["runs"]:
            continue
        if rl_seed is not None and "rl_seeds" in sweep and rl_seed not in sweep["rl_seeds"]:
            continue
        out.update(dict.fromkeys(sweep_settings(sweep)))
    return list(out)


def _check_sweeps(v: dict, where: str, source: str) -> None:
    """Each sweep names fine-tuning sets of the track that the config provides, learning rates > 0, RL runs and
    seeds the config trains, and a sample no larger than its grid."""
    track = get_track(v["track"])
    runs, seeds = rl_runs(v), rl_seeds(v)
    lam_star = v["rl"].get("lambda_star", {}).get("enabled")
    in_sweeps = "sweeps" in v["finetune"]
    for i, sweep in enumerate(finetune_sweeps(v)):
        key = f"{where}.finetune.sweeps.{i}" if in_sweeps else f"{where}.finetune"
        for j, dataset in enumerate(sweep["datasets"]):
            if dataset not in track.FINETUNE:
                raise ConfigError(f"{source}: {key}.datasets.{j}: {dataset!r} is not a fine-tuning set of track "
                                  f"{v['track']!r} (known: {', '.join(track.FINETUNE)})")
            if dataset not in v["data"]:
                raise ConfigError(f"{source}: {key}.datasets.{j}: {dataset!r} has no source under data.{dataset}")
        for j, lr in enumerate(sweep["learning_rates"]):
            if not float(lr) > 0:
                raise ConfigError(f"{source}: {key}.learning_rates.{j}: must be > 0, got {lr!r}")
        for j, run in enumerate(sweep.get("runs", [])):
            if run not in runs and not (lam_star and run.startswith("frpo_lam")):
                raise ConfigError(f"{source}: {key}.runs.{j}: {run!r} is not an RL run of this config (its runs: "
                                  f"{', '.join(runs)})")
        for j, seed in enumerate(sweep.get("rl_seeds", [])):
            if seed not in seeds:
                raise ConfigError(f"{source}: {key}.rl_seeds.{j}: {seed} is not in rl.seeds {seeds}")
        grid = (len(sweep["datasets"]) * len(sweep["methods"]) * len(sweep["learning_rates"])
                * len(sweep["epochs"]))
        if "sample" in sweep and sweep["sample"]["n"] > grid:
            raise ConfigError(f"{source}: {key}.sample.n: {sweep['sample']['n']} settings from a grid of {grid}")


def _check_eval_models(v: dict, where: str, source: str) -> None:
    """``eval.runs`` names RL runs of the config, ``eval.settings`` fine-tuning settings of its sweeps."""
    ev = v["eval"]
    runs, settings = rl_runs(v), finetune_settings(v)
    for i, run in enumerate(ev.get("runs", [])):
        if run not in runs:
            raise ConfigError(f"{source}: {where}.eval.runs.{i}: {run!r} is not an RL run of this config (its runs: "
                              f"{', '.join(runs)})")
    for i, setting in enumerate(ev.get("settings", [])):
        if setting not in settings:
            raise ConfigError(f"{source}: {where}.eval.settings.{i}: {setting!r} is not a fine-tuning setting of "
                              f"this config's sweeps")


def drawn_figures(view: dict) -> list[str]:
    """The figures and tables an experiment draws: its ``figures``, default every one of its track's."""
    return list(view.get("figures", get_track(view["track"]).FIGURES))


def figure_options(view: dict, name: str) -> dict:
    """The keyword arguments experiment ``view`` gives figure or table ``name``'s function (its
    ``figure_options.<name>``; none by default)."""
    return dict((view.get("figure_options") or {}).get(name) or {})


def _check_figure_options(v: dict, where: str, source: str) -> None:
    """Every ``figure_options`` key is a figure or table of the track, and every option a keyword its function
    takes (other than its tables and outputs)."""
    import importlib
    import inspect

    figures = get_track(v["track"]).FIGURES
    for name, options in (v.get("figure_options") or {}).items():
        key = f"{where}.figure_options.{name}"
        if name not in figures:
            raise ConfigError(f"{source}: {key}: not a figure or table of track {v['track']!r} (known: "
                              f"{', '.join(figures)})")
        module, _, function = figures[name]["draw"].partition(":")
        params = inspect.signature(getattr(importlib.import_module(module), function)).parameters
        positional = len(figures[name]["tables"]) + (1 if figures[name]["kind"] == "figure" else 2)
        allowed = [p for i, (p, spec) in enumerate(params.items())
                   if i >= positional and spec.kind in (spec.POSITIONAL_OR_KEYWORD, spec.KEYWORD_ONLY)
                   and p != "track"]
        for option in options or {}:
            if option not in allowed:
                raise ConfigError(f"{source}: {key}.{option}: not an option of {figures[name]['draw']} (its "
                                  f"options: {', '.join(allowed)})")


def samples_rewards(view: dict) -> bool:
    """Whether a figure the experiment draws reads its RL models' sampled rewards (rule ``sample_rewards``)."""
    figures = get_track(view["track"]).FIGURES
    return any("rewards" in figures[f]["tables"] for f in drawn_figures(view))


def evaluated(view: dict, target) -> bool:
    """Whether the evaluations cover model ``target`` (a :class:`frpo.runs.Target`): π_ref always; an RL model
    when its run is in ``eval.runs`` (default all); a fine-tuned one when, besides, its setting is in
    ``eval.settings`` (default all)."""
    ev = view["eval"]
    if target.stage == "base":
        return True
    if "runs" in ev and target.run.name not in ev["runs"]:
        return False
    return target.stage == "rl" or "settings" not in ev or target.setting.name in ev["settings"]


# ---------------------------------------------------------------------------------------------------------------
# Stage specs: the exact part of one track's config each rule passes to `frpo <stage> --spec` (and reruns on
# change). Each takes a track's view (:func:`view`).
# ---------------------------------------------------------------------------------------------------------------


def judges_spec(view: dict, classifier_path: str | None) -> dict:
    """The judges section with the fitted demo classifier filled in where a judge reads one."""
    return {k: _with_classifier(v, view, classifier_path) for k, v in view["judges"].items()
            if k != "fit_refusal_judge"}


def _with_classifier(judge, view: dict, classifier_path: str | None) -> dict:
    """A judge's config entry as a dict, pointed at the fitted demo classifier when the config fits one and the
    judge reads one (frpo.judges.with_fitted_classifier)."""
    from .judges import with_fitted_classifier

    if fits_classifier(view):
        return with_fitted_classifier(judge, classifier_path)
    return copy.deepcopy(judge if isinstance(judge, dict) else {"name": judge})


def fits_classifier(view: dict) -> bool:
    return bool(view["judges"].get("fit_refusal_judge"))


def prepare_spec(view: dict) -> dict:
    """The base model; a tiny model's word tokenizer is built over the texts of the track's local data files."""
    local = [str(v) for k, v in view["data"].items() if k not in prepared_data(view)]
    return {"model": view["model"], "vocab_files": sorted(local)}


def data_spec(view: dict, key: str) -> dict:
    """What preparing data key ``key`` reads: its source and the sources its preparation also reads."""
    reads = [key, *get_track(view["track"]).DATA[key].get("reads", [])]
    return {"track": view["track"], "key": key, "data": {k: view["data"][k] for k in reads}}


#: live curves by default: TensorBoard event files next to each run's checkpoints (logging.report_to)
DEFAULT_REPORT_TO = ["tensorboard"]


def _training(view: dict, stage: str, seed: int | None = None) -> dict:
    """What every training stage's spec carries: the track, the device, the seed, (when the config sets it) the
    precision, which otherwise follows the device (frpo.training.precision), where the job runs
    (frpo.compute.Job.record: a change of GPUs or strategy reruns it) and where its curves go."""
    from .compute import job

    logging = view.get("logging") or {}
    out = {"track": view["track"], "device": view["device"], "seed": view["seed"] if seed is None else seed,
           "compute": job(view, stage).record(), "report_to": list(logging.get("report_to", DEFAULT_REPORT_TO))}
    if "wandb" in out["report_to"]:
        out["wandb"] = logging.get("wandb", {})
    if "precision" in view:
        out["precision"] = view["precision"]
    return out


def warmup_spec(view: dict) -> dict:
    from .compute import sft_stage

    key, fmt = get_track(view["track"]).WARMUP_DATA
    training = _training(view, sft_stage(view["warmup"]["train"]["method"]))
    train = dict(view["warmup"]["train"])
    train["gradient_accumulation_steps"] = per_process_accumulation(train, training["compute"]["processes"])
    return {**training, "dataset": {"path": data_path(view, key), "format": fmt}, "train": train}


def _stage_data(view: dict) -> dict:
    """The data a training stage of the track reads: its RL prompts (also the probes' held-out prompts)."""
    key = get_track(view["track"]).RL_DATA
    return {key: data_path(view, key)}


def rl_spec(view: dict, run: str, seed: int, classifier_path: str | None) -> dict:
    rl = {k: v for k, v in view["rl"].items() if k not in ("algorithms", "lambdas", "lambda_star", "seeds")}
    for key in PER_RUN_KEYS:  # the run's own value: editing another run's leaves this one alone
        if key in rl:
            rl[key] = run_value(view["rl"], key, run)
    parsed = parse_run(run)
    from .compute import job

    if rl.get("use_vllm"):  # colocated vLLM: tensor parallelism and memory fraction per model size (compute)
        rl["vllm"] = job(view, "rl").vllm
    return {
        "run": run, "objective": parsed.algorithm, "frpo_lambda": parsed.lam, **_training(view, "rl", seed),
        "rl": rl, "judges": judges_spec(view, classifier_path), "reward": view.get("reward", {}),
        "data": _stage_data(view),
    }


def finetune_spec(view: dict, setting: str, seed: int, classifier_path: str | None) -> dict:
    from .compute import sft_stage

    parsed = parse_setting(setting)
    ft = {**view["finetune"], **view["finetune"].get("recipes", {}).get(parsed.dataset, {})}
    train = {k: ft[k] for k in ("batch_size", "max_length", "save_steps", "gradient_accumulation_steps",
                                "lr_scheduler_type", "warmup_ratio", "weight_decay", "max_grad_norm", "max_steps")
             if k in ft}
    training = _training(view, sft_stage(parsed.method), seed)
    train["gradient_accumulation_steps"] = per_process_accumulation(ft, training["compute"]["processes"])
    train.update(method=parsed.method, learning_rate=parsed.learning_rate, epochs=parsed.epochs)
    if parsed.method == "lora":
        train["lora"] = dict(ft["lora"])
        if parsed.lora_rank is not None:  # lora_r<N>: rank N, alpha scaled to keep finetune.lora's alpha / r
            alpha = ft["lora"]["alpha"] * parsed.lora_rank / ft["lora"]["r"]
            train["lora"].update(r=parsed.lora_rank, alpha=int(alpha) if alpha == int(alpha) else alpha)
    fmt = get_track(view["track"]).FINETUNE[parsed.dataset]
    return {
        **training,
        "dataset": {"path": data_path(view, parsed.dataset), "format": fmt, "split": "train",
                    "max_examples": ft.get("max_examples")},
        "train": train, "track_forgetting": ft.get("track"), "judges": judges_spec(view, classifier_path),
        "reward": view.get("reward", {}), "data": _stage_data(view),
    }


def samples_spec(view: dict, classifier_path: str | None) -> dict:
    """What ``frpo sample-rewards`` needs to sample ``floor.samples`` completions of each probe's held-out prompts
    from an RL model and score them (the forgetting floor's and λ*'s input): the probes (finetune.track), their
    judges, and the sampling settings."""
    floor = view["floor"]
    samples = {"n": floor["samples"], "temperature": floor.get("temperature", 1.0), "top_p": floor.get("top_p", 1.0),
               "max_new_tokens": floor["max_new_tokens"], "batch_size": floor.get("batch_size", 16)}
    out = {"track": view["track"], "device": view["device"], "seed": view["seed"], "data": _stage_data(view),
           "judges": judges_spec(view, classifier_path), "reward": view.get("reward", {}),
           "track_forgetting": view["finetune"]["track"], "samples": samples}
    if "precision" in view:
        out["precision"] = view["precision"]
    return out


def eval_spec(view: dict, classifier_path: str | None) -> dict:
    ev = view["eval"]
    local = {k: str(v) for k, v in view["data"].items() if k not in prepared_data(view)}
    spec = {
        "device": view["device"], "data": local, "judges": judges_spec(view, classifier_path),
        "max_prompts": ev.get("max_prompts"), "generation": ev["generation"],
        "judge_cache_dir": ev.get("judge_cache_dir", f"results/{view['name']}/judge_cache"),
    }
    from .evals import eval_sections, judged_benchmarks

    for section in eval_sections():  # the sections the benchmarks read (frpo.evals registry)
        if section in ev:
            spec[section] = copy.deepcopy(ev[section])
    for section in judged_benchmarks():  # the demo classifier, where an eval judge reads it
        if spec.get(section, {}).get("judge"):
            spec[section]["judge"] = _with_classifier(spec[section]["judge"], view, classifier_path)
    return spec
