"""The math track's table and figures (paper §5.2, App. C.2), drawn from the tidy tables (no model is loaded here).

* :func:`table2` — paper Table 2: MATH500 and MBPP+ of every math RL run before (Base) and after (FT) code
  fine-tuning, beside the paper's numbers.
* :func:`fig14` — paper Fig. 14: the format and correctness rewards during math RL.
* :func:`math500_vs_lambda` — beyond the paper: MATH500 after fine-tuning against λ, with the band of λ* that
  the paper's §5.2 argument predicts from GRPO's within-group reward std.

Runs are always in the order of the paper's Table 2: GRPO (λ → ∞), then FRPO by λ descending. A run is the mean
over its seeds (RL seeds; after fine-tuning, RL × fine-tuning seeds) ± the sample std across them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..io import atomic_file, atomic_write_text
from .common import aggregate_seeds, mean_std_cell, plot_seed_curves, read_table, run_label, runs_in, save_figure

__all__ = ["FIG14_KEYS", "PAPER_FIG14", "PAPER_TABLE2", "TABLE2_COLUMNS", "fig14", "grpo_reward_std",
           "lambda_star_band", "math500_vs_lambda", "table2"]

# Table 2 of the paper (paper:1100-1141; Qwen2.5-Math-7B itself: paper:1072-1076), in percent. Keyed by
# (algorithm, λ); GRPO is the paper's λ → ∞ column. The paper gives a std (over 3 fine-tuning seeds) only for
# MATH500 after fine-tuning, and no FT number for the base model.
PAPER_TABLE2: dict[tuple[str, float | None], dict[str, float]] = {
    ("base", None): {"math500_base": 56.6, "mbpp_plus_base": 57.4},
    ("grpo", None): {"math500_base": 73.0, "math500_ft": 42.3, "math500_ft_std": 2, "mbpp_plus_base": 57.1,
                     "mbpp_plus_ft": 62.5},
    ("frpo", 10.0): {"math500_base": 73.0, "math500_ft": 44.5, "math500_ft_std": 3, "mbpp_plus_base": 57.9,
                     "mbpp_plus_ft": 62.2},
    ("frpo", 4.0): {"math500_base": 73.2, "math500_ft": 61.0, "math500_ft_std": 3, "mbpp_plus_base": 57.4,
                    "mbpp_plus_ft": 61.2},
    ("frpo", 2.0): {"math500_base": 73.0, "math500_ft": 64.5, "math500_ft_std": 2, "mbpp_plus_base": 57.9,
                    "mbpp_plus_ft": 62.4},
    ("frpo", 1.0): {"math500_base": 73.0, "math500_ft": 63.1, "math500_ft_std": 2, "mbpp_plus_base": 58.2,
                    "mbpp_plus_ft": 62.0},
    ("frpo", 0.5): {"math500_base": 73.4, "math500_ft": 53.6, "math500_ft_std": 2, "mbpp_plus_base": 57.9,
                    "mbpp_plus_ft": 61.8},
    ("frpo", 0.2): {"math500_base": 73.4, "math500_ft": 59.3, "math500_ft_std": 4, "mbpp_plus_base": 57.1,
                    "mbpp_plus_ft": 61.7},
    ("frpo", 0.1): {"math500_base": 71.6, "math500_ft": 54.6, "math500_ft_std": 3, "mbpp_plus_base": 57.7,
                    "mbpp_plus_ft": 61.7},
}

#: Table 2's columns: (name, header, benchmark, metric, stage of the RL runs' value)
TABLE2_COLUMNS = (
    ("math500_base", "MATH500 Base", "math500", "math_verify,none", "rl"),
    ("math500_ft", "MATH500 FT", "math500", "math_verify,none", "ft"),
    ("mbpp_plus_base", "MBPP+ Base", "mbpp_plus", "pass@1_plus", "rl"),
    ("mbpp_plus_ft", "MBPP+ FT", "mbpp_plus", "pass@1_plus", "ft"),
)

#: Fig. 14's panels: logged key -> title
FIG14_KEYS = {"rewards/format/mean": "format reward", "rewards/correct/mean": "correctness reward"}
# Where the paper's curves end (paper:1441-1447): format ≈0.9, training accuracy 0.44 → ≈0.70.
PAPER_FIG14 = {"rewards/format/mean": 0.9, "rewards/correct/mean": 0.70}

_STD_KEY = "frpo/reward_std_within_group"


def _identity(data: pd.DataFrame) -> dict[str, tuple[str, float | None]]:
    """run -> (algorithm, λ) from the identity columns, falling back on the run's name."""
    out = {}
    for run, df in data.groupby("run", sort=False):
        algorithm = next((a for a in df["algorithm"] if a), "")
        lams = pd.to_numeric(df["lambda"], errors="coerce").dropna()
        lam = float(lams.iloc[0]) if len(lams) else None
        if not algorithm:
            algorithm = "base" if run == "" else "grpo" if run == "grpo" else "frpo" if run.startswith(
                "frpo_lam") else ""
        if lam is None and run.startswith("frpo_lam"):
            try:
                lam = float(run[len("frpo_lam"):])
            except ValueError:
                lam = None
        out[run] = (algorithm, lam if algorithm == "frpo" else None)
    return out


def _paper_row(paper: Mapping, algorithm: str, lam: float | None) -> dict[str, float]:
    for (alg, plam), row in paper.items():
        if alg == algorithm and (plam is None) == (lam is None) and (lam is None or math.isclose(lam, plam)):
            return dict(row)
    return {}


def _ft_setting(data: pd.DataFrame, setting: str | None) -> str | None:
    """The fine-tuning setting of the table: ``setting``, or the only one the evaluations hold."""
    found = sorted(set(data.loc[data["stage"] == "ft", "setting"]))
    if setting is not None:
        if found and setting not in found:
            raise ValueError(f"no evaluation after fine-tuning setting {setting!r} (found: {', '.join(found)})")
        return setting
    if len(found) > 1:
        raise ValueError(f"several fine-tuning settings ({', '.join(found)}): choose one with setting=")
    return found[0] if found else None


def _select(data: pd.DataFrame, benchmark: str, metric: str, stage: str, setting: str | None) -> pd.DataFrame:
    rows = data[(data["benchmark"] == benchmark) & (data["metric"] == metric) & (data["stage"] == stage)]
    return rows[rows["setting"] == setting] if stage == "ft" else rows


def table2(evals_csv: str | Path, out_csv: str | Path, out_md: str | Path,
           paper: Mapping[tuple[str, float | None], Mapping[str, float]] = PAPER_TABLE2, *,
           setting: str | None = None, track: str | None = None) -> pd.DataFrame:
    """Paper Table 2 from ``evals.csv``: one row per RL run (GRPO, then λ descending; a run with no evaluation is
    absent) and one for the base model (stage ``base``), with MATH500 (``math500``, ``math_verify,none``) and
    MBPP+ (``mbpp_plus``, ``pass@1_plus``) in percent before (Base: the RL model) and after (FT: fine-tuning
    ``setting``, by default the only one there is) code fine-tuning.

    Each of our cells is the mean over seeds, its sample std (n−1; NaN for one seed, whose 95% interval is kept
    instead) and the number of seeds; beside it, the paper's number (``..._paper`` in the CSV, ``(paper)`` in the
    Markdown header). Writes the CSV and the Markdown; returns the table."""
    data = read_table(evals_csv, track)
    setting = _ft_setting(data, setting)
    ident = _identity(data)
    runs = runs_in(data)
    labels = [*runs, ""] if (data["stage"] == "base").any() else runs
    records = []
    for run in labels:
        algorithm, lam = ident.get(run, ("base", None)) if run else ("base", None)
        rec = {"model": run_label(run, lam), "run": run, "algorithm": algorithm,
               "lambda": lam if lam is not None else math.nan, "setting": setting or ""}
        ref = _paper_row(paper, algorithm, lam)
        for name, _, bench, metric, stage in TABLE2_COLUMNS:
            rows = _select(data, bench, metric, "base" if run == "" and stage == "rl" else stage, setting)
            rows = rows[rows["run"] == run]
            agg = aggregate_seeds(rows.assign(_all=0), ["_all"], "value", keep=("ci_low", "ci_high"))
            a = agg.iloc[0] if len(agg) else None
            rec[name] = 100 * a["mean"] if a is not None else math.nan
            rec[f"{name}_std"] = 100 * a["std"] if a is not None else math.nan
            rec[f"{name}_n_seeds"] = int(a["n_seeds"]) if a is not None else 0
            rec[f"{name}_n_nan"] = int(a["n_nan"]) if a is not None else 0
            rec[f"{name}_ci_low"] = 100 * a["ci_low"] if a is not None else math.nan
            rec[f"{name}_ci_high"] = 100 * a["ci_high"] if a is not None else math.nan
            rec[f"{name}_paper"] = ref.get(name, math.nan)
            if f"{name}_std" in ref:
                rec[f"{name}_paper_std"] = ref[f"{name}_std"]
        records.append(rec)
    cols = ["model", "run", "algorithm", "lambda", "setting"]
    for name, *_ in TABLE2_COLUMNS:
        cols += [name, f"{name}_std", f"{name}_n_seeds", f"{name}_n_nan", f"{name}_ci_low", f"{name}_ci_high",
                 f"{name}_paper"]
        if any(f"{name}_paper_std" in r for r in records) or any(f"{name}_std" in r for r in paper.values()):
            cols.append(f"{name}_paper_std")
    table = pd.DataFrame(records, columns=cols)
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="NaN")
    atomic_write_text(out_md, _table2_markdown(records, setting))
    return table


def _paper_cell(rec: dict, name: str) -> str:
    v = rec.get(f"{name}_paper", math.nan)
    if math.isnan(v):
        return "–"
    sd = rec.get(f"{name}_paper_std")
    return f"{v:.1f}" + (f" ± {sd:g}" if sd is not None and not math.isnan(sd) else "")


def _table2_markdown(records: list[dict], setting: str | None) -> str:
    header = ["model"]
    for _, title, *_ in TABLE2_COLUMNS:
        header += [title, f"{title} (paper)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for rec in records:
        cells = [rec["model"]]
        for name, *_ in TABLE2_COLUMNS:
            ci = (rec[f"{name}_ci_low"], rec[f"{name}_ci_high"])
            cells.append(mean_std_cell(rec[name], rec[f"{name}_std"], rec[f"{name}_n_seeds"],
                                       n_nan=rec[f"{name}_n_nan"], ci=ci, digits=1))
            cells.append(_paper_cell(rec, name))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Ours: mean ± std over seeds (number of seeds), in %; with one seed, its 95% bootstrap "
              f"interval over problems. Base: after math RL; FT: after fine-tuning `{setting or '–'}`. "
              "The paper's columns: its Table 2 (mean ± std over 3 fine-tuning seeds where it gives one)."]
    return "\n".join(lines) + "\n"


def fig14(rl_metrics_csv: str | Path, out: str | Path, track: str | None = None) -> pd.DataFrame:
    """Paper Fig. 14: the format reward and the correctness reward (training accuracy) against RL step, one line
    per run: the mean over RL seeds, shaded ± the std across seeds, or for a single seed ± the std of the step's
    rewards (``rewards/<name>/std``). A dotted line marks where the paper's curves end. Returns the plotted
    curves (run, key, step, mean, band, n_seeds)."""
    data = read_table(rl_metrics_csv, track)
    missing = [k for k in FIG14_KEYS if k not in data.columns or not data[k].notna().any()]
    if missing:
        raise ValueError(f"{rl_metrics_csv}: Fig. 14 needs {', '.join(missing)}, which no run logged")
    fig, axes = plt.subplots(1, len(FIG14_KEYS), figsize=(5.2 * len(FIG14_KEYS), 3.8), squeeze=False)
    runs = runs_in(data)
    drawn = []
    for ax, (key, title) in zip(axes[0], FIG14_KEYS.items()):
        curves = plot_seed_curves(ax, data, key, runs)
        drawn.append(curves.assign(key=key))
        if key in PAPER_FIG14:
            ax.axhline(PAPER_FIG14[key], color="grey", linewidth=0.8, linestyle=":",
                       label="paper, end of training")
        spread = "std over seeds" if (curves["n_seeds"] > 1).any() else "std of the step"
        ax.set_title(f"{title} (± {spread})", fontsize=9)
        ax.set_xlabel("RL step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out)
    return pd.concat(drawn, ignore_index=True)


def lambda_star_band(std: float, rho: Sequence[float] = (0.02, 0.3)) -> tuple[float, float]:
    """The range of λ* = std/√(2ρ) (Remark 3.3, :func:`frpo.objective.lambda_star`) over the KL budgets
    ``rho``: (λ* at the largest ρ, λ* at the smallest)."""
    from ..objective import lambda_star  # torch is imported only where λ* is needed

    values = [lambda_star(std, r) for r in rho]
    return (min(values), max(values))


def grpo_reward_std(rl_metrics: str | Path | pd.DataFrame, last: int = 5, track: str | None = None) -> float:
    """GRPO's within-group reward std as the paper reads it off the end of training (§5.1.1): the mean of
    ``frpo/reward_std_within_group`` over the last ``last`` logged steps of each RL seed, averaged over seeds.
    NaN where no GRPO run logged it."""
    data = read_table(rl_metrics, track)
    if _STD_KEY not in data.columns:
        return math.nan
    rows = data[((data["algorithm"] == "grpo") | (data["run"] == "grpo")) & data[_STD_KEY].notna()]
    per_seed = [df.sort_values("step")[_STD_KEY].tail(last).astype(float).mean()
                for _, df in rows.groupby(["run", "rl_seed"], dropna=False)]
    return float(sum(per_seed) / len(per_seed)) if per_seed else math.nan


def math500_vs_lambda(evals_csv: str | Path, rl_metrics_csv: str | Path, out: str | Path,
                      rho: Sequence[float] = (0.02, 0.3), *, setting: str | None = None,
                      track: str | None = None, last: int = 5, paper: Mapping = PAPER_TABLE2) -> dict:
    """MATH500 after code fine-tuning against λ (log axis): each FRPO run the mean over seeds with ± std error
    bars (one seed: its 95% interval), GRPO a dashed horizontal line (± std shaded), the paper's Table 2 FT
    values as hollow markers, and a vertical band where λ* = std/√(2ρ) for ρ in ``rho``, with std GRPO's measured
    within-group reward std (:func:`grpo_reward_std`; the paper's §5.2 argument: math std ≈ 0.5 → λ* ≈ 2).
    Returns what was drawn: ``points`` (run, lambda, mean, std, n_seeds in %), ``grpo`` (its aggregate or None),
    ``reward_std`` and ``band`` (None without a GRPO std)."""
    data = read_table(evals_csv, track)
    setting = _ft_setting(data, setting)
    rows = _select(data, "math500", "math_verify,none", "ft", setting)
    ident = _identity(data)
    agg = aggregate_seeds(rows, ["run"], "value", keep=("ci_low", "ci_high"))
    agg = agg[agg["n_seeds"] > 0]
    for col in ("mean", "std", "ci_low", "ci_high"):
        agg[col] = 100 * agg[col]
    agg["lambda"] = [ident.get(r, ("", None))[1] for r in agg["run"]]
    is_grpo = agg["run"].map(lambda r: ident.get(r, ("", None))[0] == "grpo")
    points = agg[~is_grpo & agg["lambda"].notna()].sort_values("lambda", ascending=False)
    grpo = agg[is_grpo].iloc[0] if is_grpo.any() else None
    std = grpo_reward_std(rl_metrics_csv, last=last, track=track)
    band = lambda_star_band(std, rho) if not math.isnan(std) and std > 0 else None

    fig, ax = plt.subplots(figsize=(6.2, 4.2))
    if len(points):
        multi = points["n_seeds"] > 1
        below = points["std"].where(multi, points["mean"] - points["ci_low"])
        above = points["std"].where(multi, points["ci_high"] - points["mean"])
        ax.errorbar(points["lambda"].astype(float), points["mean"], yerr=[below, above], marker="o", capsize=3,
                    color="C0", label=f"FRPO (seeds: {', '.join(str(int(n)) for n in points['n_seeds'])})")
    if grpo is not None:
        ax.axhline(grpo["mean"], color="black", linestyle="--", label=f"GRPO ({int(grpo['n_seeds'])} seeds)")
        if grpo["n_seeds"] > 1:
            ax.axhspan(grpo["mean"] - grpo["std"], grpo["mean"] + grpo["std"], color="black", alpha=0.08,
                       linewidth=0)
    ref = [(lam, row["math500_ft"]) for (alg, lam), row in paper.items() if alg == "frpo" and "math500_ft" in row]
    if ref:
        ax.plot([lam for lam, _ in ref], [v for _, v in ref], linestyle="none", marker="s", markerfacecolor="none",
                color="grey", label="paper (Table 2 FT)")
    if band is not None:
        ax.axvspan(*band, color="C1", alpha=0.2, linewidth=0,
                   label=f"λ* = std/√(2ρ), ρ∈[{min(rho):g}, {max(rho):g}]\n"
                         f"(std={std:.3f}: GRPO, last {last} steps)")
    ax.set_xscale("log")
    ax.set_xlabel("λ (FRPO)")
    ax.set_ylabel("MATH500 after code fine-tuning (%)")
    ax.set_title(f"MATH500 vs λ after {setting or 'fine-tuning'}" + ("" if band is not None else
                                                                         "\n(no GRPO reward std: no λ* band)"),
                 fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    save_figure(fig, out)
    return {"points": points.reset_index(drop=True), "grpo": grpo, "reward_std": std, "band": band}
