"""The safety track (paper §5.1, App. B–C): RL on harmful and benign prompts, then downstream fine-tuning on
GSM8K(-like) and Alpaca(-like) data, with the forgetting tracker watching safety and helpfulness.

As in the paper (spec §1.2) there are two reward functions: ``safety`` scores completions of harmful prompts with
the safety judge, ``normal`` scores completions of benign prompts with the helpfulness judge, and each returns
None for the other task's rows. The CPU demo runs this track on its built-in stand-in data.

Data (``prepare``; the loaders are :mod:`frpo.data.safety_sources`): every key may be a local JSONL file, read as
configured. Three sources are *prepared* (materialised by the prepare_data rule) instead:

* ``safety_prompts`` as a ``.parquet`` path: the public 2000-prompt RL set (``train_lambda_0.5.parquet``),
  ``ability`` mapped to ``task`` and split 1950/50 by the public script's stratified ``train_test_split``;
* ``alpaca: hub:alpaca``: ``tatsu-lab/alpaca`` train, the first 40,000 rows, the first 50 ``eval`` (spec §2.1);
* ``gsm8k: hub:gsm8k``: ``openai/gsm8k`` "main" train, the answer cut before ``####`` as the public script
  trains on it (spec §2.2, §5 item 11), ``final`` kept apart, the first 50 ``eval``.

The downstream sets (``arithmetic``, ``alpaca``, ``gsm8k``), the warm-up demonstrations and the judge's labelled
responses are optional: a config names the ones its runs use.
"""

from __future__ import annotations

from ..data import SAFETY_PROMPT_FIELDS

__all__ = ["DATA", "FIGURES", "FINETUNE", "RL_DATA", "WARMUP_DATA", "check", "prepare", "probes", "reward_funcs",
           "rl_dataset"]

#: data key -> the fields every row must have (checked at DAG start for local JSONL files); ``optional`` keys may
#: be left out of a config, ``hub`` keys accept the ``hub:<name>`` source of the same name. Which sources are
#: prepared depends on the source, not only the key (:func:`prepared`).
DATA = {
    "safety_prompts": {"fields": SAFETY_PROMPT_FIELDS},
    "refusal_demos": {"fields": {"prompt": str, "response": str}, "optional": True},
    "judge_labelled": {"fields": {"prompt": str, "response": str, "refusal": int, "split": str}, "optional": True},
    "arithmetic": {"fields": {"question": str, "answer": str, "final": float, "split": str}, "optional": True},
    "alpaca": {"fields": {"instruction": str, "input": str, "output": str}, "optional": True, "hub": True},
    "gsm8k": {"fields": {"question": str, "answer": str, "final": float, "split": str}, "optional": True,
              "hub": True},
    # benign requests and answers as one user and one assistant turn (the study's toy instructions)
    "instructions": {"fields": {"prompt": str, "response": str, "split": str}, "optional": True},
}
#: ``hub:<name>`` sources -> their loader in frpo.data.safety_sources (the only code of this track that downloads);
#: each is accepted by the data key of the same name only
HUB_SOURCES = {"alpaca": "alpaca_rows", "gsm8k": "gsm8k_rows"}
HUB_PREFIX = "hub:"
#: a ``safety_prompts`` source with this suffix is the public RL parquet, prepared into JSONL
PARQUET_SUFFIX = ".parquet"
RL_DATA = "safety_prompts"
#: the warm-up SFT's data key and row format (the demo's π_ref)
WARMUP_DATA = ("refusal_demos", "chat")
#: what the forgetting tracker measures (frpo.track.Probe names; finetune.track.n_prompts keys)
PROBES = ("safety", "helpfulness")  # PROBE_TASKS below gives each one's task and judge
#: downstream fine-tuning sets: data key -> SFT row format (frpo.sft.sft_rows); ``arithmetic`` is the demo's
#: GSM8K-like stand-in, ``gsm8k`` the real set, ``instructions`` plain request/answer pairs (the study's toy
#: instructions, an Alpaca analogue without Alpaca's "### Instruction:" header)
FINETUNE = {"arithmetic": "gsm8k", "alpaca": "alpaca", "gsm8k": "gsm8k", "instructions": "chat"}
#: the judges a config block of this track must name (judges.<key>)
JUDGES = ("safety", "helpfulness")

FIGURES = {
    "fig_lambda_landscape": {
        "draw": "frpo.figures.safety:lambda_landscape", "tables": ["tracking"], "kind": "figure",
        "caption": "Safety reward on the tracker's harmful prompts (finetune.track.prompts: the RL training prompts, "
                   "as the public tracker, or held-out ones; greedy completions, as the public tracker scored "
                   "them) against the per-token KL to the pre-fine-tuning model (sampled completions), measured "
                   "during downstream fine-tuning (paper Fig. 3, left/middle). One line per RL model: GRPO (dashed) "
                   "and FRPO at each λ, seeds averaged. Error bars: 95% bootstrap intervals over the "
                   "prompts (one seed) or ± std over seeds."},
    "fig_rl_curves": {
        "draw": "frpo.figures.safety:rl_curves", "tables": ["rl_metrics"], "kind": "figure",
        "caption": "RL training curves (paper Fig. 13): safety and helpfulness rewards (shaded: ± one std of the "
                   "step's rewards, or across seeds), per-token KL to π_ref, and the mean within-group reward std "
                   "(n−1), per RL run."},
    "table_final": {
        "draw": "frpo.figures.safety:final_table", "tables": ["tracking", "evals"], "kind": "table",
        "caption": "Final numbers: tracked safety and helpfulness rewards (greedy) before and after fine-tuning, the "
                   "per-token KL reached (sampled), and every evaluation of π_ref, the RL models and the fine-tuned "
                   "models. Each value sits beside its 95% bootstrap interval over prompts (or ± std over seeds), "
                   "its sample count, and any limit, subset, malformed or excluded count."},
    "fig2": {
        "draw": "frpo.figures.safety_paper:fig2", "tables": ["tracking"], "kind": "figure", "scope": "track",
        "caption": "Paper Fig. 2, over every experiment of the track that draws it (one colour per model): each "
                   "GRPO-safety-trained model fine-tuned on GSM8K in every setting of its sweep ({full, LoRA} × lr × "
                   "epochs), one point per setting at its final tracked step, seeds averaged. Left: safety reward "
                   "(greedy) against per-token KL to the pre-fine-tuning model (sampled); right: helpfulness reward "
                   "divided by its step-0 value. Shaded: the KL ball (per-token KL ≤ 0.3)."},
    "fig3_lambda_star": {
        "draw": "frpo.figures.safety_paper:lambda_star_vs_rho", "tables": ["rl_metrics", "rewards"],
        "kind": "figure",
        "caption": "Paper Fig. 3 (right): λ*(ρ) against the KL budget ρ. Theory: std/√(2ρ), std the GRPO run's "
                   "within-group reward std over its last 5 logged steps; numeric: the maximiser of the dual "
                   "E_x[−λ log E_y e^{−r/λ}] − λρ on the GRPO model's sampled safety rewards (frpo sample-rewards), "
                   "per RL seed (mean ± std). Shaded: ρ ∈ [0.02, 0.3]."},
    "fig4": {
        "draw": "frpo.figures.safety_paper:fig4", "tables": ["evals"], "kind": "figure",
        "caption": "Paper Fig. 4 at its end points: HarmBench refusal rate (↑) and StrongREJECT score (↓) of the "
                   "base model and of GRPO and FRPO λ=0.2 before and after GSM8K fine-tuning (full, lr 6e-6, one "
                   "epoch), mean ± std over seeds. The paper draws these over fine-tuning steps; here the curve over "
                   "steps is the tracker's safety reward (fig_lambda_landscape)."},
    "table1": {
        "draw": "frpo.figures.safety_paper:table1", "tables": ["evals"], "kind": "table",
        "caption": "Paper Table 1: GSM8K maj@8, MMLU 5-shot, IFEval and HumanEval(+) of the base model, GRPO and "
                   "FRPO λ=0.2, before → after GSM8K fine-tuning (ours: mean ± std over seeds), beside the paper's "
                   "Mistral numbers in columns marked (paper). The base model is not fine-tuned in this DAG (–)."},
    "fig5": {
        "draw": "frpo.figures.safety_paper:fig5", "tables": ["tracking"], "kind": "figure",
        "caption": "Paper Fig. 5: GRPO against FRPO λ=0.2 over every fine-tuning setting of the two runs (the 48 "
                   "sampled from {full, LoRA r16, LoRA r32} × lr × epochs × {Alpaca, GSM8K}, and the main ones), one "
                   "point per setting at its final tracked step: safety (left) and helpfulness (right) reward "
                   "(greedy) against per-token KL (sampled). Dashed: KL 0.3."},
    "fig_floor": {
        "draw": "frpo.figures.safety_paper:floor_figure", "tables": ["tracking", "rewards"], "kind": "figure",
        "caption": "Beyond the paper, the forgetting floor: for each RL model, the Donsker–Varadhan lower bound "
                   "sup_λ E_x[−λ log E_π e^{−r/λ}] − λρ on the mean safety reward of every model within mean "
                   "sequence-level KL ρ of it, from its sampled rewards on the tracker's harmful prompts (jackknifed; "
                   "band: 95% bootstrap over prompts), against every tracked point of the fine-tuning runs that "
                   "started from it (x: sequence-level KL on the harmful prompts; y: safety reward of sampled "
                   "completions). fig_floor.csv beside the figure lists each point's floor and whether it respects "
                   "it."},
    "fig_matched_kl": {
        "draw": "frpo.figures.study:matched_kl_curves", "tables": ["tracking"], "kind": "figure",
        "caption": "The controlled study (docs/study-protocol.md): the tracked reward (greedy) against the KL to the "
                   "pre-fine-tuning model during downstream fine-tuning, one line per RL run (GRPO dashed), one "
                   "panel per KL (rows: on the probes' prompts, on the fine-tuning data's held-out prompts) and "
                   "fine-tuning setting (columns). At each KL, the mean over RL seeds of each run's reward where "
                   "its KL first reached that value (linear interpolation between tracked points), with a 95% "
                   "bootstrap band over seeds; dotted where some run had not reached it (it counts with its last "
                   "value). Vertical lines: the protocol's KL levels."},
    "fig_paired": {
        "draw": "frpo.figures.study:paired_differences", "tables": ["tracking"], "kind": "figure",
        "caption": "The study's primary endpoint: each FRPO run's tracked reward minus GRPO's at the protocol's KL "
                   "levels and over them, paired by RL seed (a dot per seed, its mean over the fine-tuning "
                   "settings; hollow when a run of the pair never reached the level and counts with its last "
                   "value), with the mean difference, its 95% bootstrap interval over seeds and the two-sided "
                   "sign-flip p-value."},
    "table_matched_kl": {
        "draw": "frpo.figures.study:endpoint_table", "tables": ["tracking", "rl_metrics", "rewards"], "kind": "table",
        "caption": "The study's endpoints: paired differences from GRPO at matched KL (per level and setting, and "
                   "pooled; with a sensitivity analysis on pairs that both reached the level), at a fixed "
                   "fine-tuning step and at the end; the RL models' final rewards, within-group std and KL; and "
                   "the fraction of tracked points at or above each RL model's forgetting floor."},
}


def prepared(key: str, source: str) -> bool:
    """A ``hub:`` source, or ``safety_prompts`` given as the public parquet; local JSONL files are read as they
    are."""
    source = str(source)
    return source.startswith(HUB_PREFIX) or (key == RL_DATA and source.lower().endswith(PARQUET_SUFFIX))


def prepare(key: str, spec: dict) -> tuple[list[dict], dict]:
    """The rows of data key ``key`` and what preparing them did (counts), from ``spec["data"][key]``."""
    from ..data import resolve, safety_sources

    src = str(spec["data"][key])
    if not prepared(key, src):
        raise ValueError(f"safety track: data.{key}: {src!r} is read as configured; nothing prepares it")
    if src.startswith(HUB_PREFIX):
        name = src[len(HUB_PREFIX):]
        if name not in HUB_SOURCES:
            raise ValueError(f"data.{key}: unknown hub source {src!r} "
                             f"(known: {', '.join(HUB_PREFIX + h for h in HUB_SOURCES)})")
        if name != key:
            raise ValueError(f"data.{key}: hub source {src!r} is for data.{name}, not data.{key}")
        rows = getattr(safety_sources, HUB_SOURCES[name])()
        return rows, {"train": sum(r["split"] == "train" for r in rows),
                      "eval": sum(r["split"] == "eval" for r in rows)}
    return safety_sources.safety_prompt_rows(resolve(src))


#: the tracker's probes: probe name -> the task of its prompts, and the judge (judges.<key>) that scores them
PROBE_TASKS = {"safety": ("safety", "safety"), "helpfulness": ("normal", "helpfulness")}
#: the split the probes' prompts come from when finetune.track.prompts does not say: the public tracker scored the
#: safety *training* prompts (spec §2.4)
DEFAULT_PROBE_SPLIT = "train"


def check(view: dict, source: str) -> None:
    from ..config import ConfigError
    from ..data import read_safety_prompts, resolve

    judges = view.get("judges") or {}
    for name in JUDGES:
        if name not in judges:
            raise ConfigError(f"{source}: tracks.safety.judges.{name}: missing (the track's {name} judge)")
    track = (view.get("finetune") or {}).get("track") or {}
    src = str(view["data"].get(RL_DATA, ""))
    if not track.get("n_prompts") or prepared(RL_DATA, src):  # a prepared set is counted when its probes are built
        return
    split = track.get("prompts", DEFAULT_PROBE_SPLIT)
    try:
        rows = read_safety_prompts(resolve(src), split)
    except FileNotFoundError:
        return  # the data check reports it
    for probe, n in track["n_prompts"].items():
        task = PROBE_TASKS[probe][0] if probe in PROBE_TASKS else None
        have = sum(r["task"] == task for r in rows)
        if n > have:
            raise ConfigError(f"{source}: tracks.{view['experiment']}.finetune.track.n_prompts.{probe}: {n} asked "
                              f"for, but data.{RL_DATA} has only {have} {task} prompts in split {split!r}")


def rl_dataset(spec: dict, split: str):
    """The safety/benign prompts of one split as a conversational TRL dataset with a ``task`` column."""
    from datasets import Dataset

    from ..data import read_safety_prompts

    path = spec["data"][RL_DATA]
    rows = read_safety_prompts(path, split)
    if not rows:
        raise ValueError(f"{path}: no rows with split={split!r}")
    return Dataset.from_list(
        [{"prompt": [{"role": "user", "content": r["prompt"]}], "task": r["task"]} for r in rows]
    )


def reward_funcs(spec: dict) -> tuple[list, None]:
    """The paper's two reward functions, ``safety`` and ``normal``, backed by the configured judges."""
    from ..judges import build_judge_from_spec, completion_text, prompt_text

    judges = spec["judges"]

    def scored_for(task_name, judge):
        def reward(prompts, completions, task, **kwargs):
            rows = [i for i, t in enumerate(task) if t == task_name]
            out: list[float | None] = [None] * len(task)
            if rows:
                scores = judge.score(
                    [prompt_text(prompts[i]) for i in rows], [completion_text(completions[i]) for i in rows]
                )
                for i, s in zip(rows, scores, strict=True):
                    out[i] = float(s)
            return out

        reward.__name__ = task_name
        return reward

    return ([scored_for("safety", build_judge_from_spec(judges["safety"])),
             scored_for("normal", build_judge_from_spec(judges["helpfulness"]))], None)


def probes(spec: dict) -> list:
    """Harmful prompts scored by the safety judge (``safety``) and benign ones scored by the helpfulness judge
    (``helpfulness``), exactly as many as ``track.n_prompts`` says, spread over the file's categories, from the
    split ``track.prompts``: ``train`` (the default, the prompts the public tracker scored) or ``eval`` (held out
    from RL)."""
    from ..data import read_safety_prompts, take
    from ..judges import build_judge_from_spec
    from ..track import Probe

    track = spec["track_forgetting"]
    n = track["n_prompts"]
    split = track.get("prompts", DEFAULT_PROBE_SPLIT)
    rows = read_safety_prompts(spec["data"][RL_DATA], split)
    judges = spec["judges"]
    out = []
    for probe, (task, judge) in PROBE_TASKS.items():
        if probe not in n:
            raise ValueError(f"finetune.track.n_prompts.{probe}: missing (the safety track's probes are safety and "
                             "helpfulness)")
        prompts = take([r["prompt"] for r in rows if r["task"] == task], n[probe], f"finetune.track.n_prompts.{probe}",
                       f"{task} prompts in split {split!r} of data.{RL_DATA}")
        out.append(Probe(probe, prompts, build_judge_from_spec(judges[judge])))
    return out
