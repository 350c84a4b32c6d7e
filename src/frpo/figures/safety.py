"""Stage 5, figures and tables, from the files the other stages wrote (no model is loaded here).

* :func:`lambda_landscape` — paper Fig. 3 (left/middle): safety reward against per-token KL to the
  pre-fine-tuning model during downstream fine-tuning, one line per RL run (GRPO, FRPO at each λ).
* :func:`rl_curves` — paper Fig. 13: RL training curves (safety and helpfulness rewards, per-token KL to the
  reference, within-group reward std).
* :func:`final_table` — the final numbers of every run, as CSV and Markdown.

Inputs are given as ``label=path`` pairs; a label is an RL run name (``grpo``, ``frpo_lam0.2``) optionally
followed by ``/setting`` for fine-tuning runs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..data import read_jsonl  # noqa: E402
from ..io import atomic_file, atomic_write_text, labelled_paths  # noqa: E402

__all__ = ["final_table", "lambda_landscape", "rl_curves", "run_label"]


def run_label(run: str) -> str:
    """``frpo_lam0.2`` → ``FRPO λ=0.2``; ``grpo`` → ``GRPO``; anything else unchanged."""
    if run == "grpo":
        return "GRPO"
    if run.startswith("frpo_lam"):
        return f"FRPO λ={run[len('frpo_lam'):]}"
    return run


def _order(runs):
    def key(r):
        return (0, 0.0) if r == "grpo" else (1, float(r[len("frpo_lam"):])) if r.startswith("frpo_lam") else (2, 0)
    return sorted(runs, key=key)


def _save(fig, out: Path) -> None:
    for suffix, kwargs in ((".pdf", {}), (".png", {"dpi": 150})):  # the PNG, the declared target, comes last
        with atomic_file(out.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, bbox_inches="tight", **kwargs)
    plt.close(fig)


def lambda_landscape(tracking: str | Path, out: str | Path, kl_ball: float | None = 0.3) -> None:
    """Safety reward (greedy completions) vs per-token KL (sampled completions) during fine-tuning; one panel per
    fine-tuning setting. Each point carries its 95% bootstrap interval over the held-out prompts as an error bar.
    ``tracking`` is the tidy table of ``frpo collect-tracking`` (see :data:`frpo.track.FIELDS`)."""
    data = pd.read_csv(tracking)
    settings = sorted(data["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        part = data[data["setting"] == setting]
        for run in _order(part["run"].unique()):
            rows = part[part["run"] == run].sort_values("step")
            style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
            y = rows["safety_reward_greedy"]
            yerr = [y - rows["safety_reward_greedy_ci_low"], rows["safety_reward_greedy_ci_high"] - y]
            ax.errorbar(rows["kl_per_token_sampled"], y, yerr=yerr, marker="o", capsize=3, label=run_label(run),
                        **style)
        if kl_ball is not None and part["kl_per_token_sampled"].max() >= kl_ball:
            ax.axvline(kl_ball, color="grey", linewidth=0.8, linestyle=":")
        n = int(part["n_safety"].max())
        ax.set_xlabel("per-token KL to the pre-fine-tuning model (sampled completions)")
        ax.set_ylabel(f"safety reward, greedy (95% CI over {n} prompts)")
        ax.set_title(setting)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, Path(out))


def rl_curves(metrics: list[str], out: str | Path) -> None:
    """RL training curves per run: safety and normal rewards, per-token KL, within-group reward std. The reward
    panels shade ± one std of the step's rewards (TRL's ``rewards/<name>/std``): the spread of what the step
    sampled, not a confidence interval."""
    frames = []
    for label, path in labelled_paths(metrics):
        frames.append(pd.DataFrame(read_jsonl(path)).assign(run=label))
    data = pd.concat(frames)
    panels = [
        ("rewards/safety/mean", "safety reward (± std of the step)"),
        ("rewards/normal/mean", "helpfulness reward (± std of the step)"),
        ("kl", "per-token KL to π_ref"),
        ("frpo/reward_std_within_group", "reward std within groups"),
    ]
    panels = [(k, t) for k, t in panels if k in data.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for run in _order(data["run"].unique()):
            rows = data[(data["run"] == run) & data[key].notna()].sort_values("step")
            style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
            y = rows[key].astype(float)
            (line,) = ax.plot(rows["step"], y, label=run_label(run), **style)
            spread = key.replace("/mean", "/std")
            if key.endswith("/mean") and spread in rows:
                sd = pd.to_numeric(rows[spread], errors="coerce").astype(float)  # null where nothing was scored
                ax.fill_between(rows["step"].astype(float), y - sd, y + sd, color=line.get_color(), alpha=0.15,
                                linewidth=0)
        ax.set_xlabel("RL step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, Path(out))


#: what an evaluation result may say about how its value was obtained; each becomes a column next to the value
EVAL_DETAILS = ("n", "limit", "subset", "n_scored", "n_malformed", "n_excluded")


def final_table(tracking: str | Path, evals: list[str], out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    """One row per model: first/last tracked values of its fine-tuning run(s) and every evaluation. Evaluation
    labels are ``MODEL:BENCH``; MODEL is an RL run (``grpo``), ``ref``, or ``RUN/SETTING`` after fine-tuning.

    Every value sits beside how it was obtained: its 95% interval (``_ci_low``/``_ci_high``, bootstrap over
    prompts), its sample count and any limit, subset, malformed or excluded count the result records, and the
    metric (``BENCH [metric]`` in the Markdown header). A NaN stays NaN."""
    rows: dict[str, dict] = {}
    data = pd.read_csv(tracking)
    for (run, setting), df in data.groupby(["run", "setting"], sort=False):
        df = df.sort_values("step")
        first, last = df.iloc[0], df.iloc[-1]
        label = f"{run}/{setting}"
        row = rows.setdefault(label, {"model": label})
        for name, col in (("safety", "safety_reward_greedy"), ("helpfulness", "helpfulness_reward_greedy")):
            for when, rec in (("before_ft", first), ("after_ft", last)):
                row[f"{name}_{when}"] = rec[col]
                row[f"{name}_{when}_ci_low"], row[f"{name}_{when}_ci_high"] = rec[f"{col}_ci_low"], rec[f"{col}_ci_high"]
        row.update({"kl_per_token_after_ft": last["kl_per_token_sampled"], "ft_steps": int(last["step"]),
                    "n_tracked_prompts": int(last["n_safety"])})
    metrics: dict[str, str] = {}
    for label, path in labelled_paths(evals):
        model, _, bench = label.rpartition(":")
        result = json.loads(Path(path).read_text())
        row = rows.setdefault(model, {"model": model})
        row[bench] = result["value"]
        ci = result.get("ci95")
        row[f"{bench}_ci_low"], row[f"{bench}_ci_high"] = ci if ci else (math.nan, math.nan)
        for key in EVAL_DETAILS:
            if key in result:
                row[f"{bench}_{key}"] = result[key]
        if result.get("metric"):
            metrics[bench] = str(result["metric"])
    table = pd.DataFrame(list(rows.values()))
    for col in table.columns:
        if col == "ft_steps" or col == "n_tracked_prompts" or col.endswith(tuple(f"_{k}" for k in EVAL_DETAILS)):
            if pd.api.types.is_numeric_dtype(table[col]) and table[col].dropna().mod(1).eq(0).all():
                table[col] = table[col].astype("Int64")
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f", na_rep="NaN")
    atomic_write_text(out_md, _markdown(list(rows.values()), list(table.columns), metrics))
    return table


def _cell(v) -> str:
    if v is None or v is pd.NA:
        return "–"  # not measured for this model (not the same as NaN, a measured value that is undefined)
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def _markdown(records: list[dict], cols: list[str], metrics: dict[str, str] | None = None) -> str:
    """The table for reading: each value as ``v [lo, hi]`` with its details (n, limit, ...) folded into one
    cell; the header names each benchmark's metric. A value a model does not have is "–"; a NaN is "NaN"."""
    metrics = metrics or {}
    extra = {c for c in cols for base in cols if c != base and c.startswith(base + "_")
             and c[len(base) + 1:] in ("ci_low", "ci_high", *EVAL_DETAILS)}
    shown = [c for c in cols if c not in extra]
    header = [f"{c} [{metrics[c]}]" if c in metrics else c for c in shown]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(shown)]
    for rec in records:
        cells = []
        for c in shown:
            v = rec.get(c)
            text = _cell(v)
            lo, hi = rec.get(f"{c}_ci_low"), rec.get(f"{c}_ci_high")
            if isinstance(lo, float) and isinstance(hi, float) and not (math.isnan(lo) or math.isnan(hi)):
                text += f" [{lo:.2f}, {hi:.2f}]"
            details = [f"{k}={_cell(rec[f'{c}_{k}'])}" for k in EVAL_DETAILS if rec.get(f"{c}_{k}") is not None]
            if details and text != "–":
                text += " (" + ", ".join(details) + ")"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
