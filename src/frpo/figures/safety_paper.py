"""The safety track's paper figures and table (paper §2, §5.1, spec §4), and the forgetting floor beyond the paper,
as pure functions over the tidy tables (no model is loaded here).

* :func:`fig2` — paper Fig. 2: safety and normalised helpfulness rewards after fine-tuning against the per-token
  KL reached, for the GRPO model of every track instance (model size), over its GSM8K sweep.
* :func:`lambda_star_vs_rho` — paper Fig. 3 (right): λ*(ρ), in theory (std/√(2ρ)) and numerically (the dual of
  Eq. 3.4 on the GRPO model's sampled rewards).
* :func:`fig4` — paper Fig. 4 as evaluated end points: HarmBench refusal rate and StrongREJECT score before and
  after GSM8K fine-tuning.
* :func:`table1` — paper Table 1: GSM8K maj@8, MMLU, IFEval, HumanEval before → after fine-tuning, beside the
  paper's numbers.
* :func:`fig5` — paper Fig. 5: GRPO vs FRPO after every fine-tuning setting, reward against KL.
* :func:`floor_figure` — beyond the paper: the forgetting floor of each RL model (:mod:`frpo.floor`) against
  the fine-tuning runs' measured (KL, sampled safety reward) points.

The tidy tables may hold several track instances (``track``: ``mistral``, ``qwen7b``, ...); every function draws
all of them unless ``track=`` names one. A run is the mean over its seeds (RL seeds; after fine-tuning RL ×
fine-tuning seeds) ± the sample std (n−1) across them; a single seed keeps its own 95% interval where the table
has one. A needed column, run or benchmark that is missing is a ``ValueError`` that names it and the table.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from ..io import atomic_file, atomic_write_text
from .common import aggregate_seeds, mean_std_cell, order_runs, read_table, run_label, runs_in, save_figure
from .math import grpo_reward_std

__all__ = ["FIG4_BENCHMARKS", "GSM8K_LIKE", "PAPER_REWARD_STD", "PAPER_SETTING", "PAPER_TABLE1", "TABLE1_COLUMNS",
           "fig2", "fig4", "fig5", "floor_figure", "lambda_star_vs_rho", "main_metric_rows", "parse_setting",
           "table1"]

#: the fine-tuning datasets that stand for GSM8K: the paper's, and the CPU demo's stand-in (data key arithmetic)
GSM8K_LIKE = ("gsm8k", "arithmetic")
#: the paper's GSM8K fine-tuning for Fig. 4 and Table 1 (spec §2.2: full FT, lr 6e-6, one epoch), by method/lr/ep
PAPER_SETTING = ("full", "6e-6", 1)
#: GRPO's within-group reward std at the end of safety RL, as the paper reads it off Fig. 13 (paper:965-970)
PAPER_REWARD_STD = 0.07

# Table 1 of the paper (paper:1029-1036), Mistral-7B-Instruct-v0.1 and its RL models before (Base) and after (FT)
# GSM8K fine-tuning, in percent. Keyed by (algorithm, λ) as frpo.figures.math.PAPER_TABLE2.
PAPER_TABLE1: dict[tuple[str, float | None], dict[str, float]] = {
    ("base", None): {"gsm8k_before": 50.5, "gsm8k_after": 57.4, "mmlu_before": 55.0, "mmlu_after": 53.7,
                     "ifeval_before": 39.6, "ifeval_after": 37.2,
                     "humaneval_before": 28.7, "humaneval_after": 23.2},
    ("grpo", None): {"gsm8k_before": 48.4, "gsm8k_after": 55.5, "mmlu_before": 54.9, "mmlu_after": 54.1,
                     "ifeval_before": 34.4, "ifeval_after": 38.0,
                     "humaneval_before": 32.3, "humaneval_after": 24.4},
    ("frpo", 0.2): {"gsm8k_before": 48.7, "gsm8k_after": 56.2, "mmlu_before": 55.2, "mmlu_after": 54.2,
                    "ifeval_before": 36.6, "ifeval_after": 37.0,
                    "humaneval_before": 31.1, "humaneval_after": 24.4},
}
#: Table 1's columns: (name, header, benchmark in evals.csv)
TABLE1_COLUMNS = (
    ("gsm8k", "GSM8K maj@8", "gsm8k_maj8"),
    ("mmlu", "MMLU 5-shot", "mmlu"),
    ("ifeval", "IFEval", "ifeval"),
    ("humaneval", "HumanEval", "humaneval_plus"),
)
#: Fig. 4's panels: benchmark -> (title, which way is safer)
FIG4_BENCHMARKS = {"harmbench": ("HarmBench refusal rate", "↑ safer"),
                   "strongreject": ("StrongREJECT score", "↓ safer")}

_KL, _KL_SEQ = "kl_per_token_sampled", "kl_per_sequence_sampled"
_SAFETY, _HELP = "safety_reward_greedy", "helpfulness_reward_greedy"
_SAFETY_SAMPLED = "safety_reward_sampled"
_METHOD_MARKER = {"full": "o", "lora": "^"}
_DATASET_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
#: ρ stands in for 0 where the floor is asked at zero KL: frpo.floor needs ρ > 0, and F(ρ) → mean reward as ρ → 0
#: (at 1e-6 the floor lies within std·√(2e-6) ≈ 1.4e-3·std of it)
_RHO_MIN = 1e-6


# --------------------------------------------------------------------------------------------------- helpers
def parse_setting(name: str) -> dict:
    """``<dataset>-<method>-lr<lr>-ep<epochs>`` (:func:`frpo.runs.parse_setting`) as the figures group it: dataset,
    method as named (``full``, ``lora`` or ``lora_r<N>``), family (``full`` or ``lora``: the marker of Fig. 2),
    rank (``lora_r<N>``'s N, else None), lr (text), epochs."""
    from ..runs import parse_setting as parse

    s = parse(name)
    return {"dataset": s.dataset, "method": s.method if s.lora_rank is None else f"lora_r{s.lora_rank}",
            "family": s.method, "rank": s.lora_rank, "lr": s.lr_text, "epochs": s.epochs}


def _need(data: pd.DataFrame, columns: Sequence[str], table: str, what: str) -> None:
    """A clear error for columns the table lacks (or holds no value of)."""
    missing = [c for c in columns if c not in data.columns or not data[c].notna().any()]
    if missing:
        raise ValueError(f"{table}: {what} needs column(s) {', '.join(missing)}, which the table lacks or never "
                         f"fills")


def _source(source) -> str:
    return "the table" if isinstance(source, pd.DataFrame) else str(source)


def _tracks(data: pd.DataFrame) -> list[str]:
    return sorted(set(data["track"]))


def _instances(tracks: Sequence[str]) -> dict[str, str]:
    """Track instance -> colour, stable across the figures."""
    return {t: f"C{i % 10}" for i, t in enumerate(tracks)}


def _lambda(run: str) -> float | None:
    if run.startswith("frpo_lam"):
        try:
            return float(run[len("frpo_lam"):])
        except ValueError:
            return None
    return None


def _run_key(run: str) -> tuple[str, float | None]:
    """(algorithm, λ) of a run name, as PAPER_TABLE1 is keyed."""
    if run == "":
        return ("base", None)
    if run == "grpo":
        return ("grpo", None)
    return ("frpo", _lambda(run)) if run.startswith("frpo_lam") else (run, None)


def _paper_row(paper: Mapping, run: str) -> dict:
    algorithm, lam = _run_key(run)
    for (alg, plam), row in paper.items():
        if alg == algorithm and (plam is None) == (lam is None) and (lam is None or math.isclose(lam, plam)):
            return dict(row)
    return {}


def _final_points(data: pd.DataFrame, columns: Sequence[str], *, normalise: str | None = None) -> pd.DataFrame:
    """Per fine-tuning run (track, run, setting, rl_seed, ft_seed): the values of ``columns`` at its last tracked
    step, and with ``normalise`` (a column) also ``<column>_norm``: that column at the last step divided by its
    value at step 0 (the tracker's measurement of the RL model before fine-tuning), per seed."""
    keys = ["track", "run", "setting", "rl_seed", "ft_seed"]
    rows = []
    for key, df in data.groupby(keys, sort=False, dropna=False):
        df = df.sort_values("step")
        last = df.iloc[-1]
        rec = dict(zip(keys, key))
        rec["step"] = last["step"]
        for col in columns:
            rec[col] = float(last[col]) if pd.notna(last[col]) else math.nan
        if normalise is not None:
            start = df[df["step"] == 0]
            if start.empty:
                raise ValueError(f"tracking: run {key[1]!r} (track {key[0]!r}, setting {key[2]!r}, seeds "
                                 f"{key[3]}/{key[4]}) has no step-0 row, the value {normalise} is normalised by")
            first = float(start[normalise].iloc[0])
            rec[f"{normalise}_step0"] = first
            rec[f"{normalise}_norm"] = rec[normalise] / first if first else math.nan
        rows.append(rec)
    return pd.DataFrame(rows)


def _seed_means(finals: pd.DataFrame, columns: Sequence[str], by: Sequence[str]) -> pd.DataFrame:
    """Mean, std (n−1) and n_seeds of each column over the seeds of each group ``by``: ``<col>``, ``<col>_std``
    and ``n_seeds`` (of the first column)."""
    out = None
    for col in columns:
        agg = aggregate_seeds(finals, by, col).rename(
            columns={"mean": col, "std": f"{col}_std", "n_seeds": f"{col}_n_seeds", "n_nan": f"{col}_n_nan"})
        out = agg if out is None else out.merge(agg, on=list(by), how="outer")
    out = out.rename(columns={f"{columns[0]}_n_seeds": "n_seeds"})
    return out


def _err(values: pd.Series, n: pd.Series):
    """± std as error bars where several seeds, none (NaN) with one."""
    return values.where(n > 1)


# --------------------------------------------------------------------------------------------------- Fig. 2
def fig2(tracking, out, *, kl_ball: float | None = 0.3, run: str = "grpo",
         datasets: Sequence[str] = GSM8K_LIKE, track: str | None = None) -> pd.DataFrame:
    """Paper Fig. 2: for the GRPO model of every track instance (model) in ``tracking``, each fine-tuning setting
    of ``datasets`` (GSM8K; the demo's arithmetic stand-in) as one point at its final tracked step: x the
    per-token KL to the pre-fine-tuning model (sampled completions), left y the safety reward (greedy), right y
    the helpfulness reward (greedy) divided by the same run's step-0 value (the RL model's own, before
    fine-tuning; paper: "normalised by each model's initial reward"). The ratio is taken per seed, then averaged.

    Colour by instance, marker by method (full or LoRA, whatever the rank); error bars ± std over seeds. The KL
    ball (x ≤ ``kl_ball``) is shaded. Returns one row per (track, setting): ``kl``, ``safety``,
    ``helpfulness_norm`` (each with ``_std``), ``n_seeds``, ``step`` and the setting's fields."""
    data = read_table(tracking, track)
    src = _source(tracking)
    _need(data, ["step", _KL, _SAFETY, _HELP], f"{src}", "Fig. 2")
    rows = data[data["run"] == run]
    if rows.empty:
        raise ValueError(f"{src}: Fig. 2 needs the {run!r} run, which no track instance has "
                         f"(runs: {', '.join(runs_in(data)) or 'none'})")
    parsed = {s: parse_setting(s) for s in set(rows["setting"])}
    rows = rows[rows["setting"].map(lambda s: parsed[s]["dataset"] in datasets)]
    if rows.empty:
        found = sorted({p["dataset"] for p in parsed.values()})
        raise ValueError(f"{src}: Fig. 2 needs {run!r} fine-tuned on {'/'.join(datasets)}; found datasets "
                         f"{', '.join(found)}")
    finals = _final_points(rows, [_KL, _SAFETY, _HELP], normalise=_HELP)
    by = ["track", "setting"]
    points = _seed_means(finals, [_KL, _SAFETY, f"{_HELP}_norm", "step"], by)
    points = points.rename(columns={_KL: "kl", f"{_KL}_std": "kl_std", _SAFETY: "safety",
                                    f"{_SAFETY}_std": "safety_std", f"{_HELP}_norm": "helpfulness_norm",
                                    f"{_HELP}_norm_std": "helpfulness_norm_std"})
    for field in ("dataset", "method", "family", "lr", "epochs"):
        points[field] = points["setting"].map(lambda s, f=field: parsed[s][f])
    points = points.sort_values(["track", "kl"]).reset_index(drop=True)

    colours = _instances(_tracks(points))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    panels = (("safety", "safety reward after fine-tuning (greedy)"),
              ("helpfulness_norm", "helpfulness reward / its value before fine-tuning"))
    for ax, (col, ylabel) in zip(axes, panels):
        for (inst, family), pts in points.groupby(["track", "family"], sort=True):
            ax.errorbar(pts["kl"], pts[col], xerr=_err(pts["kl_std"], pts["n_seeds"]),
                        yerr=_err(pts[f"{col}_std"], pts["n_seeds"]), linestyle="none",
                        marker=_METHOD_MARKER[family], color=colours[inst], capsize=2, markersize=6)
        _kl_ball(ax, kl_ball)
        _kl_axis(ax, points["kl"])
        ax.set_xlabel("per-token KL to the pre-fine-tuning model (sampled)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    n_max = int(points["n_seeds"].max())
    handles = [Line2D([], [], color=c, marker="o", linestyle="none", label=t) for t, c in colours.items()]
    handles += [Line2D([], [], color="grey", marker=m, linestyle="none", label=f)
                for f, m in _METHOD_MARKER.items() if f in set(points["family"])]
    axes[1].legend(handles=handles, fontsize=8)
    fig.suptitle(f"{run_label(run)} models fine-tuned on {'/'.join(sorted(set(points['dataset'])))}: final "
                 f"tracked step" + (f" (mean ± std over ≤{n_max} seeds)" if n_max > 1 else ""), fontsize=10)
    save_figure(fig, out)
    return points


def _kl_ball(ax, kl_ball: float | None) -> None:
    if kl_ball is not None:
        ax.axvspan(0, kl_ball, color="C0", alpha=0.08, linewidth=0, label=f"KL ball ≤ {kl_ball:g}")
        ax.axvline(kl_ball, color="grey", linewidth=0.8, linestyle=":")


def _kl_axis(ax, kl: pd.Series) -> None:
    """A log KL axis where the points span more than a decade (the lr sweep does), linear otherwise."""
    kl = kl.dropna()
    if len(kl) and (kl > 0).all() and kl.max() / kl.min() > 10:
        ax.set_xscale("log")


# --------------------------------------------------------------------------------------------------- Fig. 3 R
def _grpo_std(metrics: pd.DataFrame, instance: str, last: int) -> tuple[float, str]:
    """GRPO's within-group reward std at the end of training (frpo.figures.math.grpo_reward_std), falling back on
    TRL's ``reward_std`` (the mean of the groups' std) where the run did not log ``frpo/reward_std_within_group``;
    returns (std, key used)."""
    std = grpo_reward_std(metrics, last=last, track=instance)
    if not math.isnan(std):
        return std, "frpo/reward_std_within_group"
    if "reward_std" in metrics.columns:
        data = read_table(metrics, instance)
        rows = data[(data["run"] == "grpo") & data["reward_std"].notna()]
        per_seed = [df.sort_values("step")["reward_std"].tail(last).astype(float).mean()
                    for _, df in rows.groupby("rl_seed", dropna=False)]
        if per_seed:
            return float(np.mean(per_seed)), "reward_std"
    return math.nan, ""


def _rewards_by_model(rewards: pd.DataFrame, probe: str) -> dict[tuple[str, str, float], list[list[float]]]:
    """(track, run, rl_seed) -> one list of sampled rewards per prompt (``probe``'s, stage rl), prompts in
    ``prompt_index`` order, samples in ``sample`` order."""
    rows = rewards[rewards["probe"] == probe]
    if "stage" in rows.columns and rows["stage"].ne("").any():
        rows = rows[rows["stage"] == "rl"]
    rows = rows[pd.to_numeric(rows["reward"], errors="coerce").notna()]
    order = ["prompt_index", "sample"] if "sample" in rows.columns else ["prompt_index"]
    out = {}
    for (inst, run, seed), df in rows.groupby(["track", "run", "rl_seed"], sort=True, dropna=False):
        df = df.sort_values(order)
        out[(inst, run, seed)] = [g["reward"].astype(float).tolist() for _, g in df.groupby("prompt_index")]
    return out


def _read_rewards(rewards, what: str) -> pd.DataFrame:
    data = read_table(rewards)
    _need(data, ["probe", "prompt_index", "reward"], _source(rewards), what)
    data["probe"] = data["probe"].astype(str)
    return data


def lambda_star_vs_rho(rl_metrics, rewards, out, rhos: Sequence[float] = tuple(np.geomspace(0.01, 1, 40)),
                       band: tuple[float, float] = (0.02, 0.3), *, last: int = 5, probe: str = "safety",
                       track: str | None = None) -> pd.DataFrame:
    """Paper Fig. 3 (right): the optimal λ against the KL budget ρ, one panel per track instance with a GRPO run.

    * theory (Remark 3.3): λ*(ρ) = std/√(2ρ), std = GRPO's within-group reward std over its last ``last`` logged
      steps (:func:`frpo.figures.math.grpo_reward_std`; TRL's ``reward_std`` where that was not logged), averaged
      over RL seeds; a dotted grey line draws it with the paper's std ≈ 0.07;
    * numeric: :func:`frpo.objective.optimal_lambda` at each ρ from the GRPO model's sampled rewards of
      ``probe`` (``rewards.csv``: one list per held-out prompt), per RL seed, then mean ± std over seeds.

    The band of ρ (the per-token KL the fine-tuning runs reach, paper: [0.02, 0.3]) is shaded, and the theory's
    λ* over it is written in the legend (paper: [0.09, 0.35]). Returns one row per (track, ρ): ``lambda_theory``,
    ``lambda_numeric`` (± ``_std``, ``n_seeds``, ``at_bound`` where the optimum lies at the search's bound),
    ``reward_std`` and ``in_band``."""
    from ..objective import lambda_star, optimal_lambda  # torch is imported only here

    metrics = read_table(rl_metrics, track)
    sampled = _read_rewards(rewards, "λ*(ρ)")
    if track is not None:
        sampled = sampled[sampled["track"] == track]
    rhos = [float(r) for r in rhos]
    if not rhos or min(rhos) <= 0:
        raise ValueError(f"rhos (KL budgets ρ) must be > 0, got {rhos}")
    by_model = _rewards_by_model(sampled, probe)
    instances = sorted({t for t, r, _ in by_model if r == "grpo"} | set(metrics.loc[metrics["run"] == "grpo",
                                                                                      "track"]))
    if not instances:
        raise ValueError(f"{_source(rl_metrics)} / {_source(rewards)}: λ*(ρ) needs the 'grpo' run, which neither "
                         f"table has")
    rows, panels = [], []
    for inst in instances:
        std, key = _grpo_std(metrics, inst, last) if (metrics["track"] == inst).any() else (math.nan, "")
        seeds = {seed: rw for (t, run, seed), rw in by_model.items() if t == inst and run == "grpo"}
        if (math.isnan(std) or std <= 0) and not seeds:
            continue
        with _one_thread():
            per_seed = {seed: [optimal_lambda(rw, rho) for rho in rhos] for seed, rw in seeds.items()}
        for i, rho in enumerate(rhos):
            vals = [v[i] for v in per_seed.values()]
            rows.append({"track": inst, "rho": rho,
                         "lambda_theory": lambda_star(std, rho) if std > 0 else math.nan,
                         "lambda_numeric": float(np.mean(vals)) if vals else math.nan,
                         "lambda_numeric_std": float(np.std(vals, ddof=1)) if len(vals) > 1 else math.nan,
                         "n_seeds": len(vals), "at_bound": any(v <= 1.0001e-4 or v >= 0.9999e4 for v in vals),
                         "reward_std": std, "std_key": key, "in_band": band[0] <= rho <= band[1]})
        panels.append(inst)
    if not panels:
        raise ValueError(f"{_source(rl_metrics)} / {_source(rewards)}: no GRPO run has a reward std "
                         f"(frpo/reward_std_within_group or reward_std) or sampled rewards of probe {probe!r}")
    table = pd.DataFrame(rows)

    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4), squeeze=False)
    grid = np.asarray(rhos)
    for ax, inst in zip(axes[0], panels):
        part = table[table["track"] == inst]
        std = float(part["reward_std"].iloc[0])
        if not math.isnan(std):
            lo, hi = std / math.sqrt(2 * band[1]), std / math.sqrt(2 * band[0])
            ax.plot(part["rho"], part["lambda_theory"], color="C0",
                    label=f"theory std/√(2ρ), std={std:.3f}\n(λ* ∈ [{lo:.2f}, {hi:.2f}] over the band)")
        n = int(part["n_seeds"].max())
        if n:
            ax.errorbar(part["rho"], part["lambda_numeric"],
                        yerr=_err(part["lambda_numeric_std"], part["n_seeds"]), color="C3", marker=".", capsize=2,
                        label=f"numeric, Eq. 3.4 on sampled rewards ({n} seed{'s' if n > 1 else ''})")
        ax.plot(grid, PAPER_REWARD_STD / np.sqrt(2 * grid), color="grey", linestyle=":",
                label=f"paper: std ≈ {PAPER_REWARD_STD}")
        ax.axvspan(*band, color="C0", alpha=0.12, linewidth=0, label=f"ρ ∈ [{band[0]:g}, {band[1]:g}]")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("ρ (KL budget)")
        ax.set_ylabel("λ*")
        ax.set_title(inst + ("" if n else " (no sampled rewards: theory only)")
                     + ("" if not math.isnan(std) else " (no GRPO reward std: numeric only)"), fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    save_figure(fig, out)
    return table


# --------------------------------------------------------------------------------------------------- evals
def main_metric_rows(data: pd.DataFrame, source: str = "evals") -> pd.DataFrame:
    """The rows of each result's main metric: per model (every identity column) and benchmark, the metric of its
    first row (:func:`frpo.tables.evals_table` writes a result's ``metric`` first, the others after it). A
    benchmark whose main metric differs between models of one instance is an error: they would be averaged."""
    keys = [c for c in ("track", "stage", "model", "run", "rl_seed", "setting", "ft_seed") if c in data.columns]
    first = data.groupby([*keys, "benchmark"], sort=False, dropna=False)["metric"].transform("first")
    rows = data[data["metric"] == first]
    several = rows.groupby(["track", "benchmark"])["metric"].nunique()
    if (several > 1).any():
        inst, bench = several[several > 1].index[0]
        found = sorted(set(rows.loc[(rows["track"] == inst) & (rows["benchmark"] == bench), "metric"]))
        raise ValueError(f"{source}: benchmark {bench!r} (track {inst!r}) has a different main metric across "
                         f"models ({', '.join(found)})")
    return rows


def _ft_settings(data: pd.DataFrame, datasets: Sequence[str], setting, source: str, what: str) -> list[str]:
    """The fine-tuning settings drawn: ``setting`` (a name or several); by default the only setting of
    ``datasets`` there is, else the paper's (full fine-tuning, lr 6e-6, one epoch)."""
    found = sorted({s for s in data.loc[data["stage"] == "ft", "setting"]
                    if parse_setting(s)["dataset"] in datasets})
    if setting is not None:
        wanted = [setting] if isinstance(setting, str) else list(setting)
        missing = [s for s in wanted if s not in found]
        if missing:
            raise ValueError(f"{source}: {what}: no evaluation after fine-tuning setting {', '.join(missing)} "
                             f"(found: {', '.join(found) or 'none'})")
        return wanted
    if not found:
        present = sorted({parse_setting(s)["dataset"] for s in data.loc[data["stage"] == "ft", "setting"]})
        raise ValueError(f"{source}: {what} needs evaluations after fine-tuning on {'/'.join(datasets)} "
                         f"(datasets found: {', '.join(present) or 'none'})")
    if len(found) == 1:
        return found
    paper = [s for s in found if (parse_setting(s)["method"], parse_setting(s)["lr"],
                                  parse_setting(s)["epochs"]) == PAPER_SETTING]
    if len(paper) == 1:
        return paper
    raise ValueError(f"{source}: {what}: several fine-tuning settings ({', '.join(found)}) and none is the "
                     f"paper's (full, lr 6e-6, 1 epoch): choose with setting=")


def _datasets(dataset) -> tuple[str, ...]:
    return (dataset,) if isinstance(dataset, str) else tuple(dataset)


def _eval_cell(rows: pd.DataFrame) -> dict:
    """Mean ± std over the seeds of one model's rows of one benchmark (its main metric)."""
    agg = aggregate_seeds(rows.assign(_all=0), ["_all"], "value", keep=("ci_low", "ci_high"))
    if agg.empty:
        return {"mean": math.nan, "std": math.nan, "n_seeds": 0, "n_nan": 0, "ci_low": math.nan,
                "ci_high": math.nan}
    a = agg.iloc[0]
    return {"mean": a["mean"], "std": a["std"], "n_seeds": int(a["n_seeds"]), "n_nan": int(a["n_nan"]),
            "ci_low": a["ci_low"], "ci_high": a["ci_high"]}


def _complete_instances(data: pd.DataFrame, runs: Sequence[str], source: str, what: str) -> list[str]:
    """The instances that have every run of ``runs``; none is an error naming what each lacks."""
    keep, lacks = [], {}
    for inst in _tracks(data):
        present = set(data.loc[data["track"] == inst, "run"])
        missing = [r for r in runs if r not in present]
        if missing:
            lacks[inst] = missing
        else:
            keep.append(inst)
    if not keep:
        detail = "; ".join(f"{t or '(no track)'} lacks {', '.join(m)}" for t, m in lacks.items()) or "no rows"
        raise ValueError(f"{source}: {what} needs run(s) {', '.join(runs)} ({detail})")
    return keep


# --------------------------------------------------------------------------------------------------- Fig. 4
def fig4(evals, out, runs: Sequence[str] = ("grpo", "frpo_lam0.2"), dataset: str | Sequence[str] = GSM8K_LIKE, *,
         setting: str | Sequence[str] | None = None, track: str | None = None) -> pd.DataFrame:
    """Paper Fig. 4 as evaluated end points: HarmBench refusal rate (left, ↑ safer) and StrongREJECT score
    (right, ↓ safer) of the base model (stage base), and of each run of ``runs`` before fine-tuning (the RL
    model) and after fine-tuning on ``dataset`` (by default the only such setting, else the paper's full
    fine-tuning at lr 6e-6 for one epoch; ``setting=`` picks one or several). Grouped bars, one row of panels per
    track instance that has every run; error bars ± std over seeds (one seed: its 95% interval).

    The paper draws these benchmarks as curves over the SFT steps. Here the curve over fine-tuning steps is the
    forgetting tracker's (the safety reward of held-out prompts against KL, as in Fig. 3 left/middle:
    :func:`frpo.figures.safety.lambda_landscape`), while HarmBench and StrongREJECT are evaluated on the models
    before and after fine-tuning, the end points of the paper's curves. Each benchmark's value is its result's
    main metric (:func:`main_metric_rows`). Returns one row per bar (track, benchmark, metric, run, phase,
    setting, mean, std, n_seeds, ci_low, ci_high)."""
    src = _source(evals)
    data = read_table(evals, track)
    _need(data, ["benchmark", "metric", "value", "stage"], src, "Fig. 4")
    data = main_metric_rows(data[data["benchmark"].isin(list(FIG4_BENCHMARKS))], src)
    absent = [b for b in FIG4_BENCHMARKS if b not in set(data["benchmark"])]
    if absent:
        raise ValueError(f"{src}: Fig. 4 needs benchmark(s) {', '.join(absent)}, which no model was evaluated on")
    instances = _complete_instances(data, runs, src, "Fig. 4")
    settings = _ft_settings(data[data["track"].isin(instances)], _datasets(dataset), setting, src, "Fig. 4")
    bars = []
    for inst in instances:
        part = data[data["track"] == inst]
        for bench in FIG4_BENCHMARKS:
            rows = part[part["benchmark"] == bench]
            metric = rows["metric"].iloc[0] if len(rows) else ""
            groups = ([("", "base", "before", "")] if (rows["stage"] == "base").any() else [])
            for run in runs:
                groups.append((run, "rl", "before", ""))
                groups += [(run, "ft", "after", s) for s in settings]
            for run, stage, phase, s in groups:
                sel = rows[(rows["run"] == run) & (rows["stage"] == stage) & (rows["setting"] == s)]
                bars.append({"track": inst, "benchmark": bench, "metric": metric, "run": run,
                             "label": run_label(run), "phase": phase, "setting": s, **_eval_cell(sel)})
    table = pd.DataFrame(bars)

    fig, axes = plt.subplots(len(instances), 2, figsize=(11, 3.8 * len(instances)), squeeze=False)
    phases = [("before", "")] + [("after", s) for s in settings]
    width = 0.8 / len(phases)
    for row, inst in zip(axes, instances):
        for ax, (bench, (title, better)) in zip(row, FIG4_BENCHMARKS.items()):
            part = table[(table["track"] == inst) & (table["benchmark"] == bench)]
            labels = list(dict.fromkeys(part["label"]))
            for j, (phase, s) in enumerate(phases):
                pts = part[(part["phase"] == phase) & (part["setting"] == s) & (part["n_seeds"] > 0)]
                xs = [labels.index(lb) + (j - (len(phases) - 1) / 2) * width for lb in pts["label"]]
                one = pts["n_seeds"] == 1
                below = pts["std"].where(~one, pts["mean"] - pts["ci_low"])
                above = pts["std"].where(~one, pts["ci_high"] - pts["mean"])
                ax.bar(xs, pts["mean"], width, yerr=[below.fillna(0), above.fillna(0)], capsize=3,
                       color="lightgrey" if phase == "before" else f"C{j - 1}", edgecolor="black", linewidth=0.5,
                       label="before fine-tuning" if phase == "before" else f"after {s}")
            ax.set_xticks(range(len(labels)), labels)
            metric = part["metric"].iloc[0] if len(part) else ""
            ax.set_title(f"{inst}: {title} ({better})", fontsize=9)
            ax.set_ylabel(f"{bench} [{metric}]" if metric else bench)
            ax.grid(alpha=0.3, axis="y")
        row[0].legend(fontsize=7)
    fig.suptitle("HarmBench / StrongREJECT before and after fine-tuning (mean ± std over seeds; one seed: its 95% "
                 "interval)", fontsize=10)
    save_figure(fig, out)
    return table


# --------------------------------------------------------------------------------------------------- Table 1
def table1(evals, out_csv, out_md, runs: Sequence[str] = ("grpo", "frpo_lam0.2"),
           dataset: str | Sequence[str] = GSM8K_LIKE, *, setting: str | None = None, track: str | None = None,
           paper: Mapping[tuple[str, float | None], Mapping[str, float]] = PAPER_TABLE1) -> pd.DataFrame:
    """Paper Table 1: per track instance that has every run, rows base model, then each of ``runs``; columns
    GSM8K maj@8 (``gsm8k_maj8``), MMLU 5-shot (``mmlu``), IFEval (``ifeval``) and HumanEval (``humaneval_plus``,
    its main metric pass@1 of the base tests), each before (the base model itself, or the RL model) → after
    fine-tuning on ``dataset`` (the setting chosen as in :func:`fig4`), in %, mean ± std over seeds (one seed:
    its 95% interval); each value's main metric is the result's (:func:`main_metric_rows`).

    Beside ours, the paper's numbers (``<col>_<before|after>_paper`` in the CSV, "(paper)" in the Markdown):
    its Table 1 is Mistral-7B-Instruct-v0.1's, shown beside every instance. The base model is not fine-tuned in
    our DAG, so its "after" is "–" (the paper's row has one). Writes the CSV and the Markdown; returns the
    table."""
    src = _source(evals)
    data = read_table(evals, track)
    _need(data, ["benchmark", "metric", "value", "stage"], src, "Table 1")
    benches = [b for _, _, b in TABLE1_COLUMNS]
    data = main_metric_rows(data[data["benchmark"].isin(benches)], src)
    if data.empty:
        raise ValueError(f"{src}: Table 1 needs benchmark(s) {', '.join(benches)}, which no model was evaluated "
                         f"on")
    instances = _complete_instances(data, runs, src, "Table 1")
    ft = _ft_settings(data[data["track"].isin(instances)], _datasets(dataset), setting, src, "Table 1")[0]
    metrics = {b: next(iter(data.loc[data["benchmark"] == b, "metric"]), "") for b in benches}
    records = []
    for inst in instances:
        part = data[data["track"] == inst]
        for run in ["", *runs]:
            if run == "" and not (part["stage"] == "base").any():
                continue
            rec = {"track": inst, "model": run_label(run), "run": run, "setting": ft}
            ref = _paper_row(paper, run)
            for name, _, bench in TABLE1_COLUMNS:
                rows = part[part["benchmark"] == bench]
                before = rows[(rows["run"] == run) & (rows["stage"] == ("base" if run == "" else "rl"))]
                after = rows[(rows["run"] == run) & (rows["stage"] == "ft") & (rows["setting"] == ft)]
                for phase, sel in (("before", before), ("after", after)):
                    c = _eval_cell(sel)
                    col = f"{name}_{phase}"
                    rec.update({col: 100 * c["mean"], f"{col}_std": 100 * c["std"], f"{col}_n_seeds": c["n_seeds"],
                                f"{col}_n_nan": c["n_nan"], f"{col}_ci_low": 100 * c["ci_low"],
                                f"{col}_ci_high": 100 * c["ci_high"], f"{col}_paper": ref.get(col, math.nan)})
            records.append(rec)
    table = pd.DataFrame(records)
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="NaN")
    atomic_write_text(out_md, _table1_markdown(records, ft, metrics, len(instances) > 1))
    return table


def _table1_markdown(records: list[dict], setting: str, metrics: dict, several: bool) -> str:
    header = ["model"]
    for _, title, _ in TABLE1_COLUMNS:
        header += [title, f"{title} (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def ours(rec, col):
        return mean_std_cell(rec[col], rec[f"{col}_std"], rec[f"{col}_n_seeds"], n_nan=rec[f"{col}_n_nan"],
                             ci=(rec[f"{col}_ci_low"], rec[f"{col}_ci_high"]), digits=1)

    def paper(rec, col):
        v = rec[f"{col}_paper"]
        return "–" if math.isnan(v) else f"{v:.1f}"

    for rec in records:
        cells = [f"{rec['track']}: {rec['model']}" if several else rec["model"]]
        for name, _, _ in TABLE1_COLUMNS:
            before, after = f"{name}_before", f"{name}_after"
            after_ours = "–" if rec["run"] == "" else ours(rec, after)
            cells.append(f"{ours(rec, before)} → {after_ours}")
            cells.append(f"{paper(rec, before)} → {paper(rec, after)}")
        lines.append("| " + " | ".join(cells) + " |")
    shown = ", ".join(f"{title} = {b} [{metrics[b]}]" for _, title, b in TABLE1_COLUMNS if metrics.get(b))
    lines += ["", f"Ours: before → after fine-tuning `{setting}`, in %, mean ± std over seeds (number of seeds); "
              "with one seed, its 95% interval. Before: the base model itself, or the RL model. The base model is "
              "not fine-tuned in this pipeline (its after is –). The paper's columns: its Table 1, "
              "Mistral-7B-Instruct-v0.1 before → after GSM8K fine-tuning."
              + (f" Metrics: {shown}." if shown else "")]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------- Fig. 5
def fig5(tracking, out, runs: Sequence[str] = ("grpo", "frpo_lam0.2"), *, kl_ball: float | None = 0.3,
         track: str | None = None) -> pd.DataFrame:
    """Paper Fig. 5: GRPO vs FRPO over every fine-tuning setting of ``runs``: the final tracked
    (per-token KL, safety reward) left and (KL, helpfulness reward) right, one point per (run, setting), seeds
    averaged (± std error bars); colour by run, marker by dataset; the KL ball's edge dotted. One row of panels
    per track instance that has every run. Returns one row per point: ``kl``, ``safety``, ``helpfulness`` (each
    with ``_std``), ``n_seeds``, ``step`` and the setting's fields."""
    data = read_table(tracking, track)
    src = _source(tracking)
    _need(data, ["step", _KL, _SAFETY, _HELP], src, "Fig. 5")
    instances = _complete_instances(data[data["setting"] != ""], runs, src, "Fig. 5")
    data = data[data["track"].isin(instances) & data["run"].isin(list(runs))]
    finals = _final_points(data, [_KL, _SAFETY, _HELP])
    points = _seed_means(finals, [_KL, _SAFETY, _HELP, "step"], ["track", "run", "setting"])
    points = points.rename(columns={_KL: "kl", f"{_KL}_std": "kl_std", _SAFETY: "safety",
                                    f"{_SAFETY}_std": "safety_std", _HELP: "helpfulness",
                                    f"{_HELP}_std": "helpfulness_std"})
    parsed = {s: parse_setting(s) for s in set(points["setting"])}
    for field in ("dataset", "method", "family", "lr", "epochs"):
        points[field] = points["setting"].map(lambda s, f=field: parsed[s][f])
    points = points.sort_values(["track", "run", "kl"]).reset_index(drop=True)

    datasets = sorted(set(points["dataset"]))
    marker = {d: _DATASET_MARKERS[i % len(_DATASET_MARKERS)] for i, d in enumerate(datasets)}
    colour = {r: ("black" if r == "grpo" else f"C{i}") for i, r in enumerate(runs)}
    fig, axes = plt.subplots(len(instances), 2, figsize=(11, 4 * len(instances)), squeeze=False)
    for row, inst in zip(axes, instances):
        part = points[points["track"] == inst]
        for ax, (col, ylabel) in zip(row, (("safety", "safety reward (greedy)"),
                                           ("helpfulness", "helpfulness reward (greedy)"))):
            for (run, ds), pts in part.groupby(["run", "dataset"], sort=False):
                ax.errorbar(pts["kl"], pts[col], xerr=_err(pts["kl_std"], pts["n_seeds"]),
                            yerr=_err(pts[f"{col}_std"], pts["n_seeds"]), linestyle="none", marker=marker[ds],
                            color=colour[run], capsize=2, markersize=6)
            if kl_ball is not None:
                ax.axvline(kl_ball, color="grey", linewidth=0.8, linestyle=":")
            _kl_axis(ax, part["kl"])
            ax.set_xlabel("per-token KL to the pre-fine-tuning model (sampled), final step")
            ax.set_ylabel(ylabel)
            ax.set_title(f"{inst}: {len(set(part['setting']))} fine-tuning settings", fontsize=9)
            ax.grid(alpha=0.3)
        handles = [Line2D([], [], color=colour[r], marker="o", linestyle="none", label=run_label(r)) for r in runs]
        handles += [Line2D([], [], color="grey", marker=marker[d], linestyle="none", label=d) for d in datasets]
        if kl_ball is not None:
            handles.append(Line2D([], [], color="grey", linestyle=":", label=f"KL = {kl_ball:g}"))
        row[1].legend(handles=handles, fontsize=7)
    save_figure(fig, out)
    return points


# --------------------------------------------------------------------------------------------------- floor
@contextmanager
def _one_thread():
    """Torch on one thread while the floors are computed: each is ~100 evaluations of ops on tensors of a few
    hundred elements, where intra-op threads only add overhead (measured 10x slower with 2 threads on a busy
    2-core machine); the caller's setting is restored."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _of_model(frame: pd.DataFrame, inst: str, run: str, rl_seed) -> pd.Series:
    """The rows of a table that belong to RL model (track, run, RL seed); a NaN seed matches a NaN seed."""
    seeds = pd.to_numeric(frame["rl_seed"], errors="coerce")
    same = seeds.isna() if pd.isna(rl_seed) else seeds == rl_seed
    return (frame["track"] == inst) & (frame["run"] == run) & same


def floor_figure(tracking, rewards, out, rhos: Sequence[float] | None = None, n_boot: int = 200, *,
                 probe: str = "safety", grid: int = 12, level: float = 0.95, seed: int = 0,
                 track: str | None = None) -> pd.DataFrame:
    """Beyond the paper: the forgetting floor of every RL model against what its fine-tuning runs measured.

    For each RL model (track, run, RL seed) with sampled rewards of ``probe`` in ``rewards.csv``, the floor
    F(ρ) of :func:`frpo.floor.floor_band` (a lower bound on the mean reward of every model within sequence-level
    KL ρ of it) with its bootstrap band (``n_boot`` resamples, ``level``), as a curve over ``rhos`` (default:
    ``grid`` points from 0 to 1.2 × the largest measured KL, evenly spaced in √ρ, where the floor is nearly
    linear: F ≈ mean − std·√(2ρ)). On the same axes every tracked point of the fine-tuning runs that started
    from that model: x ``kl_<probe>_per_sequence_sampled`` (the sequence-level KL on the probe's own prompts;
    ``kl_per_sequence_sampled`` in tables without it), y ``safety_reward_sampled`` (the reward of sampled
    completions, the quantity the bound is about; greedy rewards are not).

    A point's floor is :func:`frpo.floor.floor` at its own KL (all of a model's points from one
    :func:`frpo.floor.floor_curve`, which gives the same numbers); its band is that floor minus (plus) the band's
    distance below (above) the curve, interpolated linearly in √ρ between grid points (the bootstrap costs
    ``n_boot`` floors per ρ, too many to repeat at every point's KL). A point respects the floor when its reward
    ≥ the band's low end (``above_floor``: ≥ the estimate itself; the band resamples prompts, see
    :func:`frpo.floor.floor_band`). ρ = 0 is asked as ρ = 1e-6 (the floor's
    limit there is the mean reward).
    One panel per (track, run), a colour per RL seed. Returns, and writes beside ``out`` as ``<stem>.csv``, one
    row per tracked point: identity, step, kl, reward, floor, floor_lo, floor_hi, respects, above_floor, and
    ``fraction_respecting`` of its (track, run)."""
    from ..floor import floor_band, floor_curve  # torch is imported only here

    src = _source(tracking)
    data = read_table(tracking, track)
    # the KL on the probe's own prompts (the bound is per prompt set); tables from before that column: all prompts
    kl_col = f"kl_{probe}_per_sequence_sampled" if f"kl_{probe}_per_sequence_sampled" in data else _KL_SEQ
    _need(data, ["step", kl_col, _SAFETY_SAMPLED], src, "the floor figure")
    sampled = _read_rewards(rewards, "the floor figure")
    if track is not None:
        sampled = sampled[sampled["track"] == track]
    by_model = _rewards_by_model(sampled, probe)
    if not by_model:
        raise ValueError(f"{_source(rewards)}: the floor figure needs sampled rewards of probe {probe!r} of the "
                         f"RL models (stage rl), which the table lacks")
    data = data[data[kl_col].notna() & data[_SAFETY_SAMPLED].notna()]
    models = [m for m in by_model if _of_model(data, *m).any()]
    if not models:
        raise ValueError(f"{src} / {_source(rewards)}: no fine-tuning run's tracked points belong to an RL model "
                         f"with sampled rewards ({', '.join(f'{t}/{r}/seed{s}' for t, r, s in by_model)})")
    kl_max = float(data[kl_col].max())
    if rhos is None:
        top = 1.2 * kl_max if kl_max > 0 else 1.0
        rhos = [top * (k / (grid - 1)) ** 2 for k in range(grid)]
    rhos = sorted(float(r) for r in rhos)
    if rhos[-1] < kl_max:
        raise ValueError(f"rhos reach {rhos[-1]:g} but a tracked point has KL {kl_max:g} ({kl_col})")
    asked = [max(r, _RHO_MIN) for r in rhos]

    curves, points = [], []
    with _one_thread():
        for inst, run, rl_seed in models:
            rewarded = by_model[(inst, run, rl_seed)]
            band = floor_band(rewarded, asked, n_boot=n_boot, level=level, seed=seed)
            curve = pd.DataFrame({"track": inst, "run": run, "rl_seed": rl_seed, "rho": rhos,
                                  "floor": [b["floor"] for b in band], "lo": [b["lo"] for b in band],
                                  "hi": [b["hi"] for b in band], "mean_reward": [b["mean_reward"] for b in band]})
            curves.append(curve)
            rows = data[_of_model(data, inst, run, rl_seed)]
            kl = rows[kl_col].astype(float).to_numpy()
            distinct = sorted(set(kl.tolist()))  # one curve: the ρ-free part of the dual computed once per model
            exact = dict(zip(distinct, (r["floor"] for r in floor_curve(rewarded, [max(k, _RHO_MIN)
                                                                                for k in distinct]))))
            at = np.array([exact[k] for k in kl.tolist()])
            root = np.sqrt(curve["rho"].to_numpy())
            below = np.interp(np.sqrt(kl), root, (curve["floor"] - curve["lo"]).to_numpy())
            above = np.interp(np.sqrt(kl), root, (curve["hi"] - curve["floor"]).to_numpy())
            reward = rows[_SAFETY_SAMPLED].astype(float).to_numpy()
            points.append(pd.DataFrame({"track": inst, "run": run, "rl_seed": rl_seed,
                                        "setting": rows["setting"].to_numpy(),
                                        "ft_seed": rows["ft_seed"].to_numpy(),
                                        "step": rows["step"].to_numpy(), "kl": kl, "reward": reward, "floor": at,
                                        "floor_lo": at - below, "floor_hi": at + above,
                                        "respects": reward >= at - below, "above_floor": reward >= at}))
    curves, report = pd.concat(curves, ignore_index=True), pd.concat(points, ignore_index=True)
    report["fraction_respecting"] = report.groupby(["track", "run"])["respects"].transform("mean")
    with atomic_file(Path(out).with_suffix(".csv")) as tmp:
        report.to_csv(tmp, index=False, float_format="%.6g", na_rep="NaN")

    panels = [(t, r) for t in sorted({t for t, _, _ in models})
              for r in order_runs({r for t2, r, _ in models if t2 == t})]
    cols = min(len(panels), 4)
    nrows = -(-len(panels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.9 * nrows), squeeze=False, sharey=True)
    for ax, (inst, run) in zip(axes.flat, panels):
        for i, (rl_seed, curve) in enumerate(curves[(curves["track"] == inst) & (curves["run"] == run)].groupby(
                "rl_seed", dropna=False, sort=True)):
            colour = f"C{i}"
            name = f"seed {int(rl_seed)}" if pd.notna(rl_seed) else "RL model"
            ax.plot(curve["rho"], curve["floor"], color=colour, label=f"floor, {name}")
            ax.fill_between(curve["rho"], curve["lo"], curve["hi"], color=colour, alpha=0.2, linewidth=0)
            pts = report[_of_model(report, inst, run, rl_seed)]
            ok = pts["respects"].astype(bool)
            ax.scatter(pts.loc[ok, "kl"], pts.loc[ok, "reward"], s=14, color=colour, edgecolor="black",
                       linewidth=0.3, zorder=3)
            ax.scatter(pts.loc[~ok, "kl"], pts.loc[~ok, "reward"], s=30, color="red", marker="x", zorder=4,
                       label="below the band" if i == 0 and (~ok).any() else None)
        part = report[(report["track"] == inst) & (report["run"] == run)]
        n_ok, n = int(part["respects"].sum()), len(part)
        ax.set_title(f"{inst}: {run_label(run)}, {n_ok}/{n} points ≥ floor band ({100 * n_ok / n:.0f}%)",
                     fontsize=8)
        ax.set_xlabel("sequence-level KL to the RL model (sampled)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"{probe} reward, sampled completions")
    fig.suptitle(f"Forgetting floor (Donsker–Varadhan, {int(100 * level)}% bootstrap band) vs fine-tuning runs",
                 fontsize=10)
    save_figure(fig, out)
    return report
