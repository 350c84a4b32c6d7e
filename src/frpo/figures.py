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
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from .data import read_jsonl  # noqa: E402
from .io import atomic_file, atomic_write_text, labelled_paths  # noqa: E402

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
    """Safety reward vs per-token KL during fine-tuning; one panel per fine-tuning setting. ``tracking`` is the
    tidy table of ``frpo collect-tracking`` (columns run, setting, step, kl_per_token, safety_reward, ...)."""
    data = pd.read_csv(tracking, keep_default_na=False)
    settings = sorted(data["setting"].unique())
    fig, axes = plt.subplots(1, len(settings), figsize=(5.2 * len(settings), 4), squeeze=False)
    for ax, setting in zip(axes[0], settings):
        part = data[data["setting"] == setting]
        for run in _order(part["run"].unique()):
            rows = part[part["run"] == run].sort_values("step")
            style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
            ax.plot(rows["kl_per_token"], rows["safety_reward"], marker="o", label=run_label(run), **style)
        if kl_ball is not None and part["kl_per_token"].max() >= kl_ball:
            ax.axvline(kl_ball, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("per-token KL to the pre-fine-tuning model")
        ax.set_ylabel("safety reward (held-out harmful prompts)")
        ax.set_title(setting)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _save(fig, Path(out))


def rl_curves(metrics: list[str], out: str | Path) -> None:
    """RL training curves per run: safety and normal rewards, per-token KL, within-group reward std."""
    frames = []
    for label, path in labelled_paths(metrics):
        frames.append(pd.DataFrame(read_jsonl(path)).assign(run=label))
    data = pd.concat(frames)
    panels = [
        ("rewards/safety/mean", "safety reward"),
        ("rewards/normal/mean", "helpfulness reward"),
        ("kl", "per-token KL to π_ref"),
        ("frpo/reward_std_within_group", "reward std within groups"),
    ]
    panels = [(k, t) for k, t in panels if k in data.columns]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for run in _order(data["run"].unique()):
            rows = data[(data["run"] == run) & data[key].notna()].sort_values("step")
            style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
            ax.plot(rows["step"], rows[key], label=run_label(run), **style)
        ax.set_xlabel("RL step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    _save(fig, Path(out))


def final_table(tracking: str | Path, evals: list[str], out_csv: str | Path, out_md: str | Path) -> pd.DataFrame:
    """One row per model: first/last tracked values of its fine-tuning run(s) and every evaluation. Evaluation
    labels are ``MODEL:BENCH``; MODEL is an RL run (``grpo``), ``base``, or ``RUN/SETTING`` after fine-tuning."""
    rows: dict[str, dict] = {}
    data = pd.read_csv(tracking, keep_default_na=False)
    for (run, setting), df in data.groupby(["run", "setting"], sort=False):
        df = df.sort_values("step")
        first, last = df.iloc[0], df.iloc[-1]
        label = f"{run}/{setting}"
        rows.setdefault(label, {"model": label}).update({
            "safety_before_ft": first["safety_reward"], "safety_after_ft": last["safety_reward"],
            "helpfulness_before_ft": first["helpfulness_reward"], "helpfulness_after_ft": last["helpfulness_reward"],
            "kl_per_token_after_ft": last["kl_per_token"], "ft_steps": int(last["step"]),
        })
    for label, path in labelled_paths(evals):
        model, _, bench = label.rpartition(":")
        result = json.loads(Path(path).read_text())
        rows.setdefault(model, {"model": model})[f"{bench}"] = result["value"]
    table = pd.DataFrame(list(rows.values()))
    if "ft_steps" in table:
        table["ft_steps"] = table["ft_steps"].astype("Int64")
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    atomic_write_text(out_md, _markdown(table))
    return table


def _markdown(table: pd.DataFrame) -> str:
    def cell(v):
        if v is None or v is pd.NA or (isinstance(v, float) and v != v):
            return ""
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"
