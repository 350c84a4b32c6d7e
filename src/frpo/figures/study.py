"""The matched-KL comparison of RL models under downstream fine-tuning (the controlled study,
``docs/study-protocol.md``; any safety experiment with several RL seeds can draw them).

Every function takes the same analysis settings (the config's ``figure_options``, one YAML anchor for all three):

* ``levels``: the KL levels at which the runs are compared (:func:`frpo.matched_kl.value_at_level`);
* ``kl_columns``: the tracking table's KL columns, the first the primary one (default the per-token KL on the
  probes' prompts, then on the fine-tuning data's held-out prompts when the table has it);
* ``value``: the reward compared (default ``safety_reward_greedy``, the tracker's);
* ``reference``: the run every other is compared with (``grpo``); ``primary``: the contrast stated first;
* ``fixed_step``: the fine-tuning step of the fixed-step secondary comparison (default: the last step every run
  was tracked at);
* ``n_boot``, ``seed``: the bootstrap.

Differences are paired by RL seed (and fine-tuning setting and seed), summarised by
:func:`frpo.matched_kl.summarise`: mean, 95% percentile-bootstrap interval over pairs, two-sided sign-flip test.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from ..io import atomic_file
from ..matched_kl import levels_table, paired, summarise, value_at_level, value_at_step
from ..stats import bootstrap_ci, mean_std
from .common import order_runs, plt, read_table, run_label, save_figure

__all__ = ["endpoint_table", "matched_kl_curves", "paired_differences"]

#: the KL columns compared when none are given, in this order, those the table has
DEFAULT_KL = ("kl_per_token_sampled", "kl_ft_data_sampled")
KL_LABELS = {
    "kl_per_token_sampled": "per-token KL on the probes' prompts (harmful + benign)",
    "kl_ft_data_sampled": "per-token KL on the fine-tuning data's held-out prompts",
    "kl_safety_sampled": "per-token KL on the harmful probe prompts",
    "kl_helpfulness_sampled": "per-token KL on the benign probe prompts",
}
ALL = "all"  # the pooled rows: over settings, or over levels (their mean per pair)


def _kl_columns(data: pd.DataFrame, kl_columns: Sequence[str] | None) -> list[str]:
    cols = list(kl_columns) if kl_columns else [c for c in DEFAULT_KL if c in data]
    missing = [c for c in cols if c not in data]
    if not cols or missing:
        raise ValueError(f"the tracking table has no KL column {', '.join(missing or DEFAULT_KL)}")
    return cols


def _tracking(tracking, track, value: str) -> pd.DataFrame:
    data = read_table(tracking, track)
    data = data[data["run"] != ""]
    if value not in data:
        raise ValueError(f"the tracking table has no column {value!r}")
    if data.empty:
        raise ValueError("the tracking table has no fine-tuning run")
    return data


def _check_runs(data: pd.DataFrame, reference: str) -> list[str]:
    runs = order_runs(set(data["run"]))
    if reference not in runs:
        raise ValueError(f"no run {reference!r} to compare with (runs: {', '.join(runs)})")
    return runs


def _pooled(pairs: pd.DataFrame, over: Sequence[str]) -> pd.DataFrame:
    """One difference per pair (track, RL seed, fine-tuning seed, and whatever else is not pooled): the mean of its
    differences over ``over`` (settings, levels)."""
    keys = [c for c in ("track", "run", "kl", "rl_seed", "ft_seed", "setting", "level") if c not in over]
    return pairs.groupby(keys, dropna=False, as_index=False).agg(
        diff=("diff", "mean"), value=("value", "mean"), value_ref=("value_ref", "mean"),
        unreached=("reached", lambda r: int((~r.astype(bool)).sum())),
        unreached_ref=("reached_ref", lambda r: int((~r.astype(bool)).sum())))


def _row(section: str, kl: str, run: str, reference: str, setting: str, level, part: pd.DataFrame,
         n_boot: int, seed: int) -> dict:
    s = summarise(part["diff"], n_boot=n_boot, seed=seed)
    return {"section": section, "kl": kl, "run": run, "reference": reference, "setting": setting, "level": level,
            "n_pairs": s["n"], "unreached": int(part["unreached"].sum()),
            "unreached_ref": int(part["unreached_ref"].sum()), "mean": float(part["value"].mean()),
            "mean_ref": float(part["value_ref"].mean()), "mean_diff": s["mean_diff"], "ci_low": s["ci_low"],
            "ci_high": s["ci_high"], "p_value": s["p_value"]}


def _contrasts(pairs: pd.DataFrame, section: str, reference: str, n_boot: int, seed: int,
               by_level: bool = True) -> list[dict]:
    """Rows of every arm against the reference: per setting and over all settings, per level and their mean."""
    pairs = pairs.assign(unreached=~pairs["reached"].astype(bool), unreached_ref=~pairs["reached_ref"].astype(bool))
    rows = []
    for kl in pairs["kl"].unique():
        for run in order_runs(set(pairs.loc[pairs["kl"] == kl, "run"])):
            mine = pairs[(pairs["kl"] == kl) & (pairs["run"] == run)]
            settings = sorted(set(mine["setting"]))
            for setting in [*settings, ALL] if len(settings) > 1 else settings:
                part = mine if setting == ALL else mine[mine["setting"] == setting]
                levels = sorted(set(part["level"])) if by_level else []
                for level in levels:
                    rows.append(_row(section, kl, run, reference, setting, level,
                                     _pooled(part[part["level"] == level], ["setting"]), n_boot, seed))
                if not by_level or len(levels) > 1:
                    rows.append(_row(section, kl, run, reference, setting, ALL if by_level else math.nan,
                                     _pooled(part, ["setting", "level"]), n_boot, seed))
    return rows


def _at_steps(data: pd.DataFrame, value: str, fixed_step: float | None) -> tuple[pd.DataFrame, float]:
    """Per run: the value at ``fixed_step`` (default: the last step every run reached) and at its last step, as
    rows shaped like :func:`frpo.matched_kl.levels_table`'s (``kl`` ``step`` and ``end``)."""
    keys = ["track", "run", "rl_seed", "setting", "ft_seed"]
    last = data.groupby(keys, dropna=False)["step"].max()
    step = float(last.min()) if fixed_step is None else float(fixed_step)
    rows = []
    for key, run in data.sort_values("step").groupby(keys, dropna=False):
        ident = dict(zip(keys, key, strict=True))
        v, reached = value_at_step(run["step"], run[value], step)
        rows.append({**ident, "kl": "step", "level": step, "value": v, "reached": reached})
        rows.append({**ident, "kl": "end", "level": float(run["step"].max()), "value": float(run[value].iloc[-1]),
                     "reached": True})
    out = pd.DataFrame(rows)
    out.loc[out["kl"] == "end", "level"] = math.nan
    return out, step


def _rl_end(rl_metrics, track, last: int) -> list[dict]:
    """Per RL run, mean ± std over seeds of the last ``last`` logged steps' rewards, within-group std and KL."""
    data = read_table(rl_metrics, track)
    cols = {"safety": "rewards/safety/mean", "helpfulness": "rewards/normal/mean",
            "std_within_group": "frpo/reward_std_within_group", "kl": "kl"}
    rows = []
    for run in order_runs(set(data["run"])):
        per_seed = {name: [] for name in cols}
        for _, g in data[data["run"] == run].groupby("rl_seed", dropna=False):
            tail = g.sort_values("step").tail(last)
            for name, col in cols.items():
                if col in tail:
                    per_seed[name].append(float(tail[col].mean()))
        row = {"section": "rl_end", "run": run, "n_seeds": len(per_seed["kl"])}
        for name, values in per_seed.items():
            row[name], row[f"{name}_std"] = mean_std(values) if values else (math.nan, math.nan)
        rows.append(row)
    return rows


def _floor_fractions(data: pd.DataFrame, rewards, track, probe: str = "safety") -> list[dict]:
    """Per RL run: the fraction of tracked points whose sampled reward is at least the floor of their own RL model
    at their sequence-level KL (:func:`frpo.floor.floor_curve`: the estimate, no band; ``fig_floor`` draws the
    band)."""
    from ..floor import floor_curve
    from .safety_paper import _one_thread, _read_rewards, _rewards_by_model

    sampled = _read_rewards(rewards, "the study table")
    if track is not None:
        sampled = sampled[sampled["track"] == track]
    by_model = _rewards_by_model(sampled, probe)
    kl_col = f"kl_{probe}_per_sequence_sampled"
    reward_col = f"{probe}_reward_sampled"
    rows: dict[str, list[bool]] = {}
    with _one_thread():
        for (inst, run, rl_seed), rewarded in by_model.items():
            part = data[(data["track"] == inst) & (data["run"] == run)
                        & (pd.to_numeric(data["rl_seed"], errors="coerce") == rl_seed)]
            part = part[part[kl_col].notna() & part[reward_col].notna()]
            if part.empty:
                continue
            kls = sorted(set(part[kl_col].astype(float)))
            floors = dict(zip(kls, (r["floor"] for r in floor_curve(rewarded, [max(k, 1e-6) for k in kls]))))
            for kl, reward in zip(part[kl_col].astype(float), part[reward_col].astype(float)):
                rows.setdefault(run, []).append(reward >= floors[kl])
    return [{"section": "floor", "run": run, "n_points": len(ok), "fraction_above_floor": sum(ok) / len(ok)}
            for run, ok in ((r, rows[r]) for r in order_runs(rows)) if ok]


def endpoint_table(tracking, rl_metrics, rewards, out_csv, out_md, *, levels: Sequence[float] = (0.05, 0.1, 0.2),
                   kl_columns: Sequence[str] | None = None, value: str = "safety_reward_greedy",
                   reference: str = "grpo", primary: str = "frpo_lam0.2", fixed_step: float | None = None,
                   rl_last: int = 10, n_boot: int = 10000, seed: int = 0, track: str | None = None
                   ) -> pd.DataFrame:
    """The study's endpoints in one table (rows by ``section``):

    * ``matched_kl``: each arm minus ``reference`` at each KL level and KL column, per fine-tuning setting and
      over all settings, per level and over the levels (the mean per pair): pairs, unreached runs of each side
      (kept at their last value), means, mean difference, 95% interval, p-value. The primary endpoint is
      ``primary`` on the first KL column, all settings, the mean over the levels;
    * ``matched_kl_reached``: the same, from pairs where both runs reached the level only (sensitivity);
    * ``step`` / ``end``: the value at ``fixed_step`` and at the last tracked step;
    * ``rl_end``: each RL run's safety and helpfulness rewards, within-group std and KL over its last ``rl_last``
      logged steps (mean and std over seeds);
    * ``floor``: each arm's fraction of tracked points at or above its RL model's forgetting floor.
    """
    data = _tracking(tracking, track, value)
    _check_runs(data, reference)
    cols = _kl_columns(data, kl_columns)
    points = levels_table(data, levels, cols, value)
    pairs = paired(points, reference)
    rows = _contrasts(pairs, "matched_kl", reference, n_boot, seed)
    both = pairs[pairs["reached"].astype(bool) & pairs["reached_ref"].astype(bool)]
    rows += _contrasts(both, "matched_kl_reached", reference, n_boot, seed) if not both.empty else []
    steps, step = _at_steps(data, value, fixed_step)
    step_pairs = paired(steps, reference)
    for section in ("step", "end"):
        rows += _contrasts(step_pairs[step_pairs["kl"] == section], section, reference, n_boot, seed,
                           by_level=False)
    rows += _rl_end(rl_metrics, track, rl_last)
    rows += _floor_fractions(data, rewards, track)
    table = pd.DataFrame(rows)
    table.loc[table["section"] == "step", "level"] = step
    with atomic_file(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g", na_rep="NaN")
    with atomic_file(out_md) as tmp:
        Path(tmp).write_text(_markdown(table, primary, cols, value, levels, step))
    return table


def _fmt(v, digits: int = 3) -> str:
    return "NaN" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:+.{digits}f}"


def _p(v) -> str:
    return "NaN" if math.isnan(v) else (f"{v:.3f}" if v >= 0.001 else f"{v:.1e}")


def _level(level) -> str:
    return level if isinstance(level, str) else ("" if math.isnan(level) else f"{level:g}")


def _md_table(title: str, header: list[str], rows: list[list]) -> list[str]:
    """A Markdown section with one table; nothing when there is no row."""
    if not rows:
        return []
    return [f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, row)) + " |" for row in rows), ""]


def primary_row(table: pd.DataFrame, primary: str, kl: str) -> pd.Series | None:
    sel = table[(table["section"] == "matched_kl") & (table["run"] == primary) & (table["kl"] == kl)
                & (table["setting"].astype(str) == ALL) & (table["level"].astype(str) == ALL)]
    if sel.empty:  # one setting only: its row over the levels
        sel = table[(table["section"] == "matched_kl") & (table["run"] == primary) & (table["kl"] == kl)
                    & (table["level"].astype(str) == ALL)]
    return None if sel.empty else sel.iloc[0]


def _markdown(table: pd.DataFrame, primary: str, cols: list[str], value: str, levels, step: float) -> str:
    lines = [f"# Matched-KL comparison ({value})", ""]
    row = primary_row(table, primary, cols[0])
    if row is not None:
        lines += [f"**Primary endpoint**: {run_label(primary)} − {run_label(row['reference'])}, {value} at matched "
                  f"{KL_LABELS.get(cols[0], cols[0])}, mean over the levels {', '.join(f'{x:g}' for x in levels)} "
                  f"and the fine-tuning settings: **{_fmt(row['mean_diff'])}** (95% CI {_fmt(row['ci_low'])} to "
                  f"{_fmt(row['ci_high'])}; sign-flip p = {_p(row['p_value'])}; {int(row['n_pairs'])} seed pairs).",
                  ""]
    pooled = table[(table["section"] == "matched_kl") & (table["setting"].astype(str) == ALL)
                   & (table["level"].astype(str) == ALL)]
    lines += _md_table("Summary: every run against the reference, over the levels and settings",
                       ["KL", "run", "pairs", "run", "ref", "difference", "95% CI", "p"],
                       [[r.kl, run_label(r.run), int(r.n_pairs), f"{r.mean:.3f}", f"{r.mean_ref:.3f}",
                         _fmt(r.mean_diff), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]", _p(r.p_value)]
                        for r in pooled.itertuples()])
    for section, title in (("matched_kl", "At matched KL (a level a run never reached: its last value; unreached "
                                          "counts the readings carried so, run/reference)"),
                           ("matched_kl_reached", "Sensitivity: pairs where both runs reached the level"),
                           ("step", f"At fine-tuning step {step:g}"), ("end", "At the end of fine-tuning")):
        lines += _md_table(title, ["KL", "run", "setting", "level", "pairs", "unreached (run/ref)", "run", "ref",
                                   "difference", "95% CI", "p"],
                           [[r.kl, run_label(r.run), r.setting, _level(r.level), int(r.n_pairs),
                             f"{int(r.unreached)}/{int(r.unreached_ref)}", f"{r.mean:.3f}", f"{r.mean_ref:.3f}",
                             _fmt(r.mean_diff), f"[{_fmt(r.ci_low)}, {_fmt(r.ci_high)}]", _p(r.p_value)]
                            for r in table[table["section"] == section].itertuples()])
    lines += _md_table("The RL models at the end of RL (mean ± std over seeds)",
                       ["run", "seeds", "safety", "helpfulness", "within-group std", "KL"],
                       [[run_label(r.run), int(r.n_seeds), f"{r.safety:.3f} ± {r.safety_std:.3f}",
                         f"{r.helpfulness:.3f} ± {r.helpfulness_std:.3f}",
                         f"{r.std_within_group:.3f} ± {r.std_within_group_std:.3f}", f"{r.kl:.4f} ± {r.kl_std:.4f}"]
                        for r in table[table["section"] == "rl_end"].itertuples()])
    lines += _md_table("Tracked points at or above their RL model's forgetting floor", ["run", "points", "fraction"],
                       [[run_label(r.run), int(r.n_points), f"{r.fraction_above_floor:.3f}"]
                        for r in table[table["section"] == "floor"].itertuples()])
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- figures
def _curve(run: pd.DataFrame, kl: str, value: str, grid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pts = [value_at_level(run[kl], run[value], float(x)) for x in grid]
    return np.array([v for v, _ in pts]), np.array([r for _, r in pts])


def matched_kl_curves(tracking, out, *, levels: Sequence[float] = (0.05, 0.1, 0.2),
                      kl_columns: Sequence[str] | None = None, value: str = "safety_reward_greedy",
                      reference: str = "grpo", primary: str = "frpo_lam0.2", fixed_step: float | None = None,
                      n_boot: int = 2000, seed: int = 0, track: str | None = None, points: int = 41
                      ) -> pd.DataFrame:
    """``value`` against KL during fine-tuning, one line per RL run (GRPO dashed), one panel per KL column (rows)
    and fine-tuning setting (columns): at each KL x the mean over seeds of each run's value where its KL first
    reached x (:func:`frpo.matched_kl.value_at_level`), with a 95% bootstrap band over seeds; dotted where some
    run had not reached x yet (it counts with its last value). Vertical lines: the levels. Returns the curves."""
    data = _tracking(tracking, track, value)
    runs = _check_runs(data, reference)
    cols = _kl_columns(data, kl_columns)
    settings = sorted(set(data["setting"]))
    top = 1.5 * max(levels)
    grid = np.linspace(0.0, top, points)
    fig, axes = plt.subplots(len(cols), len(settings), figsize=(5.2 * len(settings), 4.2 * len(cols)),
                             squeeze=False, sharey=True)
    fig.subplots_adjust(hspace=0.3)
    out_rows = []
    for i, kl in enumerate(cols):
        for j, setting in enumerate(settings):
            ax = axes[i, j]
            for k, run in enumerate(runs):
                part = data[(data["run"] == run) & (data["setting"] == setting)]
                curves = [_curve(g.sort_values("step"), kl, value, grid)
                          for _, g in part.groupby(["track", "rl_seed", "ft_seed"], dropna=False)]
                if not curves:
                    continue
                vals = np.array([c[0] for c in curves])
                reached = np.array([c[1] for c in curves]).all(axis=0)
                mean = np.nanmean(vals, axis=0)
                band = [bootstrap_ci(vals[:, g], n_boot=n_boot, seed=seed) for g in range(len(grid))]
                lo, hi = np.array([b[0] for b in band]), np.array([b[1] for b in band])
                colour = "black" if run == reference else f"C{k}"
                style = "--" if run == reference else "-"
                label = f"{run_label(run)} ({len(curves)} seeds)"
                ax.plot(np.where(reached, grid, np.nan), np.where(reached, mean, np.nan), style, color=colour,
                        label=label)
                ax.plot(grid, mean, ":", color=colour, linewidth=0.8)
                ax.fill_between(grid, lo, hi, color=colour, alpha=0.12, linewidth=0)
                out_rows.append(pd.DataFrame({"kl": kl, "setting": setting, "run": run, "x": grid, "mean": mean,
                                              "ci_low": lo, "ci_high": hi, "all_reached": reached,
                                              "n_seeds": len(curves)}))
            for level in levels:
                ax.axvline(level, color="grey", linestyle=":", linewidth=0.8)
            ax.set_xlim(0, top)
            ax.set_xlabel(KL_LABELS.get(kl, kl), fontsize=8)
            if i == 0:
                ax.set_title(setting, fontsize=9)
            ax.grid(alpha=0.3)
        axes[i, 0].set_ylabel(value.replace("_", " "))
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Reward against KL during fine-tuning: mean over seeds, 95% bootstrap band (dotted: some run "
                 "not there yet)", fontsize=9)
    save_figure(fig, out)
    return pd.concat(out_rows, ignore_index=True)


def paired_differences(tracking, out, *, levels: Sequence[float] = (0.05, 0.1, 0.2),
                       kl_columns: Sequence[str] | None = None, value: str = "safety_reward_greedy",
                       reference: str = "grpo", primary: str = "frpo_lam0.2", fixed_step: float | None = None,
                       n_boot: int = 10000, seed: int = 0, track: str | None = None) -> pd.DataFrame:
    """The paired differences of every run from ``reference`` at each KL level and over the levels (one panel
    per KL column): a dot per RL seed (its mean over the fine-tuning settings; hollow when a run of the pair did
    not reach the level), and the mean with its 95% bootstrap interval and sign-flip p-value."""
    data = _tracking(tracking, track, value)
    _check_runs(data, reference)
    cols = _kl_columns(data, kl_columns)
    pairs = paired(levels_table(data, levels, cols, value), reference)
    arms = order_runs(set(pairs["run"]))
    groups = [*[float(x) for x in levels], ALL]
    fig, axes = plt.subplots(1, len(cols), figsize=(1.6 + 1.9 * len(groups) * max(1, len(arms)) / 2, 4.2),
                             squeeze=False, sharey=True)
    width = 0.8 / max(1, len(arms))
    rows = []
    for ax, kl in zip(axes[0], cols):
        for a, run in enumerate(arms):
            mine = pairs[(pairs["kl"] == kl) & (pairs["run"] == run)]
            for g, level in enumerate(groups):
                part = mine if level == ALL else mine[mine["level"] == level]
                per_pair = part.groupby(["track", "rl_seed", "ft_seed"], dropna=False).agg(
                    diff=("diff", "mean"), reached=("reached", "all"), reached_ref=("reached_ref", "all"))
                s = summarise(per_pair["diff"], n_boot=n_boot, seed=seed)
                x = g + (a - (len(arms) - 1) / 2) * width
                full = per_pair["reached"] & per_pair["reached_ref"]
                jitter = np.linspace(-width / 4, width / 4, len(per_pair)) if len(per_pair) > 1 else [0.0]
                xs = x + np.asarray(jitter)
                ax.scatter(xs[full.to_numpy()], per_pair["diff"][full], s=12, color=f"C{a + 1}", alpha=0.6)
                ax.scatter(xs[~full.to_numpy()], per_pair["diff"][~full], s=12, facecolors="none",
                           edgecolors=f"C{a + 1}", alpha=0.6)
                ax.errorbar([x], [s["mean_diff"]], yerr=[[s["mean_diff"] - s["ci_low"]], [s["ci_high"] - s["mean_diff"]]],
                            fmt="D", color=f"C{a + 1}", markersize=5, capsize=3,
                            label=run_label(run) if g == 0 else None)
                ax.annotate(f"p={_p(s['p_value'])}", (x, s["ci_low"]), textcoords="offset points",
                            xytext=(0, -9 - 7 * (a % 2)), ha="center", fontsize=5.5, color=f"C{a + 1}")
                rows.append({"kl": kl, "run": run, "level": level, **s})
        ax.axhline(0, color="black", linewidth=0.8)
        ax.set_xticks(range(len(groups)), [f"KL {x:g}" if x != ALL else "mean of levels" for x in groups],
                      fontsize=8)
        ax.set_title(KL_LABELS.get(kl, kl), fontsize=8)
        ax.grid(alpha=0.3, axis="y")
    axes[0, 0].set_ylabel(f"{value.replace('_', ' ')}: run − {run_label(reference)}")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle(f"Paired differences from {run_label(reference)} at matched KL (dots: RL seeds, mean over "
                 "settings; hollow: a run of the pair did not reach the level; diamonds: mean, 95% bootstrap CI)",
                 fontsize=8)
    save_figure(fig, out)
    return pd.DataFrame(rows)
