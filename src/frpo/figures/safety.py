"""The safety track's figures and table (paper §5.1), drawn from the tidy tables (no model is loaded here).

* :func:`lambda_landscape` — paper Fig. 3 (left/middle): safety reward against per-token KL to the
  pre-fine-tuning model during downstream fine-tuning, one line per RL run (GRPO, FRPO at each λ).
* :func:`rl_curves` — paper Fig. 13: RL training curves (safety and helpfulness rewards, per-token KL to the
  reference, within-group reward std).
* :func:`final_table` — the final numbers of every model, as CSV and Markdown.

Every run is the mean over its seeds (RL seeds; for fine-tuned models RL × fine-tuning seeds) ± the sample std
across them, with the number of seeds; a single seed keeps its own 95% interval over prompts (or, for RL curves,
the spread of the step's rewards).
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from ..io import atomic_file, atomic_write_text
from ..tables import EVAL_DETAILS  # what an evaluation result may say about how its value was obtained
from .common import aggregate_seeds, cell, mean_std_cell, plot_seed_curves, read_table, run_label, runs_in, \
    save_figure

__all__ = ["EVAL_DETAILS", "final_table", "lambda_landscape", "rl_curves"]


def lambda_landscape(tracking_csv: str | Path, out: str | Path, kl_ball: float | None = 0.3,
                     track: str | None = None) -> pd.DataFrame:
    """Safety reward (greedy completions) vs per-token KL (sampled completions) during fine-tuning; one panel per
    fine-tuning setting that every RL run went through (the paper's landscape compares λ in one setting; the
    sweeps that only some runs take, Figs. 2 and 5, are drawn there), or per setting when none is common to all,
    one line per RL run. A point is the mean over seeds at that tracking step with ± std error bars on both axes;
    a point with one seed carries its 95% bootstrap interval over the held-out prompts instead. ``tracking_csv``
    is the tidy ``tracking.csv``. Returns the plotted points."""
    data = read_table(tracking_csv, track)
    by = ["run", "setting", "step"]
    y_col = "safety_reward_greedy"
    settings = sorted(data["setting"].unique())
    every_run = set(data["run"])
    settings = [s for s in settings if set(data.loc[data["setting"] == s, "run"]) == every_run] or settings
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
    drawn = []
    for ax, setting in zip(axes[0], settings):
        part = data[data["setting"] == setting]
        several = False
        for run in runs_in(part):
            rows = part[part["run"] == run]
            y = aggregate_seeds(rows, by, y_col, keep=(f"{y_col}_ci_low", f"{y_col}_ci_high"))
            x = aggregate_seeds(rows, by, "kl_per_token_sampled")
            pts = y.merge(x, on=by, suffixes=("", "_kl"))
            pts = pts[(pts["n_seeds"] > 0) & (pts["n_seeds_kl"] > 0)].sort_values("step")
            if pts.empty:
                continue
            multi = pts["n_seeds"] > 1
            several |= bool(multi.any())
            below = (pts["std"]).where(multi, pts["mean"] - pts[f"{y_col}_ci_low"])
            above = (pts["std"]).where(multi, pts[f"{y_col}_ci_high"] - pts["mean"])
            xerr = pts["std_kl"].where(pts["n_seeds_kl"] > 1) if multi.any() else None
            n_max = int(pts["n_seeds"].max())
            style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
            ax.errorbar(pts["mean_kl"], pts["mean"], yerr=[below, above], xerr=xerr, marker="o", capsize=3,
                        label=run_label(run) + (f" ({n_max} seeds)" if n_max > 1 else ""), **style)
            drawn.append(pts.assign(err_below=below, err_above=above))
        if kl_ball is not None and part["kl_per_token_sampled"].max() >= kl_ball:
            ax.axvline(kl_ball, color="grey", linewidth=0.8, linestyle=":")
        n = int(part["n_safety"].max()) if "n_safety" in part and part["n_safety"].notna().any() else 0
        ax.set_xlabel("per-token KL to the pre-fine-tuning model (sampled completions)")
        ax.set_ylabel("safety reward, greedy (mean ± std over seeds;\n95% CI over "
                      f"{n} prompts where one seed)" if several else
                      f"safety reward, greedy (95% CI over {n} prompts)")
        ax.set_title(setting)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, out)
    return pd.concat(drawn, ignore_index=True) if drawn else pd.DataFrame()


def rl_curves(rl_metrics_csv: str | Path, out: str | Path, track: str | None = None) -> pd.DataFrame:
    """RL training curves per run: safety and helpfulness rewards, per-token KL, within-group reward std; each
    the mean over RL seeds, shaded ± the std across seeds, or for a single seed ± the std of the step's rewards
    (TRL's ``rewards/<name>/std``: the spread of what the step sampled, not a confidence interval).
    ``rl_metrics_csv`` is the tidy ``rl_metrics.csv``. Returns the plotted curves (a row per run, panel, step)."""
    data = read_table(rl_metrics_csv, track)
    panels = [
        ("rewards/safety/mean", "safety reward"),
        ("rewards/normal/mean", "helpfulness reward"),
        ("kl", "per-token KL to π_ref"),
        ("frpo/reward_std_within_group", "reward std within groups"),
    ]
    panels = [(k, t) for k, t in panels if k in data.columns and data[k].notna().any()]
    if not panels:
        raise ValueError(f"{rl_metrics_csv}: none of the RL curves' metrics was logged")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    runs = runs_in(data)
    drawn = []
    for ax, (key, title) in zip(axes[0], panels):
        curves = plot_seed_curves(ax, data, key, runs)
        drawn.append(curves.assign(key=key))
        several = bool((curves["n_seeds"] > 1).any())
        if key.endswith("/mean"):
            title += " (± std over seeds)" if several else " (± std of the step)"
        elif several:
            title += " (± std over seeds)"
        ax.set_xlabel("RL step")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    save_figure(fig, out)
    return pd.concat(drawn, ignore_index=True)


#: tracked columns of the final table: name -> (tracking.csv column, first or last tracked step)
_TRACKED = {
    "safety_before_ft": ("safety_reward_greedy", "first"),
    "safety_after_ft": ("safety_reward_greedy", "last"),
    "helpfulness_before_ft": ("helpfulness_reward_greedy", "first"),
    "helpfulness_after_ft": ("helpfulness_reward_greedy", "last"),
    "kl_per_token_after_ft": ("kl_per_token_sampled", "last"),
}
_SUFFIXES = ("std", "n_seeds", "n_nan", "ci_low", "ci_high", *EVAL_DETAILS)


def _label(stage: str, run: str, setting: str) -> str:
    """A model of the final table: ``base``, an RL run (``grpo``), or ``RUN/SETTING`` after fine-tuning."""
    model = run if run else "base"
    return f"{model}/{setting}" if stage == "ft" else model


def _put(rec: dict, col: str, agg: pd.Series, with_ci: bool) -> None:
    rec[col] = agg["mean"]
    rec[f"{col}_std"] = agg["std"]
    rec[f"{col}_n_seeds"] = int(agg["n_seeds"])
    rec[f"{col}_n_nan"] = int(agg["n_nan"])
    if with_ci:
        rec[f"{col}_ci_low"], rec[f"{col}_ci_high"] = agg["ci_low"], agg["ci_high"]


def _tracked(data: pd.DataFrame, records: dict, keys: dict) -> list[str]:
    """The first and last tracked step of every fine-tuning run, averaged over its seeds."""
    seeds = ["rl_seed", "ft_seed"]
    ends = []
    for (run, setting, *_), df in data.groupby(["run", "setting", *seeds], sort=False, dropna=False):
        df = df.sort_values("step")
        row = {"run": run, "setting": setting, "rl_seed": df["rl_seed"].iloc[0], "ft_seed": df["ft_seed"].iloc[0],
               "ft_steps": df["step"].iloc[-1],
               "n_tracked_prompts": df["n_safety"].iloc[-1] if "n_safety" in df else math.nan}
        for name, (col, when) in _TRACKED.items():
            rec = df.iloc[0] if when == "first" else df.iloc[-1]
            row[name] = rec.get(col, math.nan)
            for end in ("ci_low", "ci_high"):
                row[f"{name}_{end}"] = rec.get(f"{col}_{end}", math.nan)
        ends.append(row)
    if not ends:
        return []
    ends = pd.DataFrame(ends)
    for name in _TRACKED:
        agg = aggregate_seeds(ends, ["run", "setting"], name, keep=(f"{name}_ci_low", f"{name}_ci_high"))
        agg = agg.rename(columns={f"{name}_ci_low": "ci_low", f"{name}_ci_high": "ci_high"})
        for a in agg.itertuples(index=False):
            label = _label("ft", a.run, a.setting)
            keys.setdefault(label, (a.run, "ft", a.setting))
            _put(records.setdefault(label, {"model": label}), name, pd.Series(a._asdict()),
                 with_ci=f"{_TRACKED[name][0]}_ci_low" in data.columns)
    for (run, setting), df in ends.groupby(["run", "setting"], sort=False):
        rec = records[_label("ft", run, setting)]
        rec["ft_steps"] = int(df["ft_steps"].max())
        if df["n_tracked_prompts"].notna().any():
            rec["n_tracked_prompts"] = int(df["n_tracked_prompts"].max())
    return [*_TRACKED, "ft_steps", "n_tracked_prompts"]


def _evaluated(data: pd.DataFrame, records: dict, keys: dict, notes: dict) -> tuple[list[str], dict[str, str]]:
    """Every evaluation, one column per (benchmark, metric), averaged over the seeds of each model."""
    data = data.assign(label=[_label(s, r, t) for s, r, t in zip(data["stage"], data["run"], data["setting"])])
    pairs = list(dict.fromkeys(zip(data["benchmark"], data["metric"])))
    n_metrics = pd.Series([b for b, _ in pairs]).value_counts()
    column = {(b, m): (b if n_metrics[b] == 1 else f"{b}:{m}") for b, m in pairs}
    metrics = {column[(b, m)]: m for b, m in pairs if n_metrics[b] == 1 and m}
    agg = aggregate_seeds(data, ["label", "benchmark", "metric"], "value", keep=("ci_low", "ci_high"))
    for a in agg.itertuples(index=False):
        col = column[(a.benchmark, a.metric)]
        _put(records.setdefault(a.label, {"model": a.label}), col, pd.Series(a._asdict()), with_ci=True)
    for (label, bench, metric), df in data.groupby(["label", "benchmark", "metric"], sort=False):
        col = column[(bench, metric)]
        first = df.iloc[0]
        keys.setdefault(label, (first["run"], first["stage"], first["setting"]))
        for key in EVAL_DETAILS:
            if key not in df or not df[key].replace("", math.nan).notna().any():
                continue
            vals = df[key].replace("", math.nan).dropna()
            numeric = pd.to_numeric(vals, errors="coerce")
            if numeric.notna().all():
                # seeds may differ (a malformed count, say): the table keeps the largest, the text says so
                records[label][f"{col}_{key}"] = float(numeric.max())
                if numeric.min() != numeric.max():
                    notes[(label, col, key)] = f"≤{cell(float(numeric.max()), 0)}"
            else:
                records[label][f"{col}_{key}"] = "/".join(dict.fromkeys(vals.astype(str)))
    return [column[p] for p in pairs], metrics


def final_table(tracking_csv: str | Path, evals_csv: str | Path, out_csv: str | Path, out_md: str | Path,
                track: str | None = None) -> pd.DataFrame:
    """One row per model — ``base``, each RL run, each ``RUN/SETTING`` after fine-tuning — with the first/last
    tracked values of its fine-tuning and every evaluation of ``evals.csv`` (one column per benchmark, or per
    ``benchmark:metric`` where a benchmark reports several metrics).

    Each value is the mean over the model's seeds with ``_std`` (n−1) and ``_n_seeds`` beside it; with one seed
    it keeps its 95% interval (``_ci_low``/``_ci_high``, bootstrap over prompts). Beside it sit its sample count
    and any limit, subset, scored, malformed or excluded count the evaluation recorded (the largest over seeds
    in the CSV), and the metric (``BENCH [metric]`` in the Markdown header). A NaN stays NaN (and is not
    averaged with the other seeds: ``_n_nan`` counts it); a value a model lacks is "–" in the Markdown."""
    records: dict[str, dict] = {}
    keys: dict[str, tuple[str, str, str]] = {}
    notes: dict[tuple[str, str, str], str] = {}
    tracking, evals = read_table(tracking_csv, track), read_table(evals_csv, track)
    tracked = _tracked(tracking, records, keys)
    evaluated, metrics = _evaluated(evals, records, keys, notes)
    identity = pd.concat([tracking[["run", "lambda"]], evals[["run", "lambda"]]])
    rank = {run: i for i, run in enumerate(runs_in(identity))}
    stage_rank = {"base": 0, "rl": 1, "ft": 2}

    def order(label):
        run, stage, setting = keys[label]
        return (-1 if run == "" else rank.get(run, len(rank)), stage_rank.get(stage, 3), setting, label)

    labels = sorted(records, key=order)
    cols = ["model"]
    for name in (*tracked, *evaluated):
        cols.append(name)
        if name in ("ft_steps", "n_tracked_prompts"):
            continue
        cols += [f"{name}_{s}" for s in _SUFFIXES if any(f"{name}_{s}" in records[lb] for lb in labels)]
    table = pd.DataFrame([records[lb] for lb in labels], columns=cols)
    for col in table.columns:
        integral = col in ("ft_steps", "n_tracked_prompts") or col.endswith(
            ("_n_seeds", "_n_nan", *(f"_{k}" for k in EVAL_DETAILS if k != "subset")))
        if integral and pd.api.types.is_numeric_dtype(table[col]) and table[col].dropna().mod(1).eq(0).all():
            table[col] = table[col].astype("Int64")
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="NaN")
    atomic_write_text(out_md, _markdown([records[lb] for lb in labels], ["model", *tracked, *evaluated], metrics,
                                        notes))
    return table


def _markdown(records: list[dict], shown: list[str], metrics: dict[str, str], notes: dict) -> str:
    """The table for reading: a value as ``v [lo, hi]`` (one seed) or ``v ± std`` (several, with n_seeds), its
    details (n, limit, ...) folded into the cell; the header names each benchmark's metric. A value a model does
    not have is "–"; a NaN is "NaN"."""
    header = [f"{c} [{metrics[c]}]" if c in metrics else c for c in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(shown)]
    for rec in records:
        cells = []
        for c in shown:
            if f"{c}_n_seeds" not in rec:
                cells.append(cell(rec.get(c)))
                continue
            n = rec[f"{c}_n_seeds"]
            ci = (rec.get(f"{c}_ci_low", math.nan), rec.get(f"{c}_ci_high", math.nan))
            text = mean_std_cell(rec[c], rec[f"{c}_std"], n, n_nan=rec[f"{c}_n_nan"], ci=ci, ci_digits=2,
                                 show_n=False)
            details = [f"n_seeds={n}"] if n > 1 else []
            if n and rec[f"{c}_n_nan"]:
                details.append(f"NaN seeds={rec[f'{c}_n_nan']}")
            for k in EVAL_DETAILS:
                if f"{c}_{k}" in rec:
                    v = rec[f"{c}_{k}"]
                    shown_v = cell(int(v) if isinstance(v, float) and v.is_integer() else v)
                    note = notes.get((rec["model"], c, k))
                    details.append(f"{k}{note}" if note else f"{k}={shown_v}")
            if details and text != "–":
                text += " (" + ", ".join(details) + ")"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
