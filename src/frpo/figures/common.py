"""What every figure and table of :mod:`frpo.figures` shares: reading the tidy tables, the order and labels of
runs, mean ± std over seeds, the cells of the Markdown tables, and saving a figure as PNG and PDF atomically.

The tidy tables (``rl_metrics.csv``, ``evals.csv``, ``tracking.csv``) carry the identity columns
:data:`IDENTITY`; the base model has an empty ``run`` and NaN ``lambda``/``rl_seed``. A run is shown as the mean
over its seeds with the sample std (n−1) across them and the number of seeds; where a run has a single seed, the
value keeps its own uncertainty (a 95% bootstrap interval over prompts, or the spread of an RL step).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from ..io import atomic_file  # noqa: E402

__all__ = [
    "IDENTITY", "SEEDS", "aggregate_seeds", "cell", "mean_std_cell", "order_runs", "plot_seed_curves",
    "read_table", "run_label", "runs_in", "save_figure",
]

#: identity columns of every tidy table
IDENTITY = ("track", "run", "algorithm", "lambda", "rl_seed")
#: the seeds a value may be averaged over (RL seed, and the fine-tuning seed for fine-tuned models)
SEEDS = ("rl_seed", "ft_seed")
#: text columns where an empty cell means "none" (the base model's run, a non-fine-tuned model's setting)
_TEXT = ("track", "run", "algorithm", "setting", "stage", "model", "benchmark", "metric", "subset")


def read_table(source: str | Path | pd.DataFrame, track: str | None = None) -> pd.DataFrame:
    """A tidy table (a CSV path or a frame) with text identity columns as strings ('' where empty) and missing
    identity or seed columns added as NaN (a table written before seeds existed reads as one seed per run).

    With ``track``, only that track's rows; no row of the track is an error (it names the tracks present), since
    a figure drawn from nothing would pass for a result."""
    data = source.copy() if isinstance(source, pd.DataFrame) else pd.read_csv(source)
    for col in (*IDENTITY, *SEEDS):
        if col not in data.columns:
            data[col] = math.nan
    for col in _TEXT:
        if col in data.columns:
            data[col] = data[col].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v))
                                      else str(v))
    if track is not None and data["track"].ne("").any():
        kept = data[data["track"] == track]
        if kept.empty:
            present = sorted(set(data["track"]) - {""})
            raise ValueError(f"no row of track {track!r} in the table (tracks present: {', '.join(present)})")
        data = kept
    return data.reset_index(drop=True)


def run_label(run: str, lam: float | None = None) -> str:
    """``frpo_lam0.2`` → ``FRPO λ=0.2``; ``grpo`` → ``GRPO``; '' → ``base model``; anything else unchanged
    (or ``FRPO λ=<lam>`` when its λ is given)."""
    if run == "grpo":
        return "GRPO"
    if run == "":
        return "base model"
    if run.startswith("frpo_lam"):
        return f"FRPO λ={run[len('frpo_lam'):]}"
    if lam is not None and not math.isnan(lam):
        return f"FRPO λ={lam:g}"
    return run


def _lambda_of(run: str, lambdas: Mapping[str, float]) -> float:
    lam = lambdas.get(run, math.nan)
    if (lam is None or math.isnan(lam)) and run.startswith("frpo_lam"):
        try:
            lam = float(run[len("frpo_lam"):])
        except ValueError:
            lam = math.nan
    return math.nan if lam is None else float(lam)


def order_runs(runs: Iterable[str], lambdas: Mapping[str, float] | None = None) -> list[str]:
    """Runs in the paper's Table 2 order: GRPO (λ → ∞) first, then FRPO by λ descending, then anything else by
    name. λ comes from ``lambdas`` (run → λ, the tidy tables' ``lambda`` column) or else the run's name. The base
    model ('') is not a run and is left out."""
    lambdas = lambdas or {}

    def key(run: str):
        if run == "grpo":
            return (0, 0.0, run)
        lam = _lambda_of(run, lambdas)
        return (1, -lam, run) if not math.isnan(lam) else (2, 0.0, run)

    return sorted({r for r in runs if r != ""}, key=key)


def runs_in(frame: pd.DataFrame) -> list[str]:
    """The runs of a tidy table in :func:`order_runs` order, λ read from its ``lambda`` column."""
    lambdas = {}
    if "lambda" in frame.columns:
        for run, lam in frame[["run", "lambda"]].drop_duplicates("run").itertuples(index=False):
            lambdas[run] = float(lam) if pd.notna(lam) else math.nan
    return order_runs(frame["run"].unique(), lambdas)


def aggregate_seeds(frame: pd.DataFrame, by: Sequence[str], value: str, *, seeds: Sequence[str] = SEEDS,
                    keep: Sequence[str] = ()) -> pd.DataFrame:
    """Per group of ``by``: the ``mean`` of ``value`` over seeds, its sample ``std`` (n−1; NaN with one seed), the
    number of seeds with a value ``n_seeds`` and of NaN values ``n_nan`` (a NaN is undefined, not a score, so it
    is counted, not averaged), and each column of ``keep`` copied from the row when exactly one seed has a value
    (its own interval, say), NaN otherwise.

    Two rows with a value for the same group and the same ``seeds`` are an error: averaging them would count one
    seed twice."""
    by = list(by)
    seeds = [s for s in seeds if s in frame.columns]
    values = pd.to_numeric(frame[value], errors="coerce") if value in frame.columns else pd.Series(
        math.nan, index=frame.index)
    scored = frame[values.notna()]
    dup = scored.duplicated(subset=[*by, *seeds], keep=False)
    if dup.any():
        first = scored[dup].iloc[0]
        raise ValueError(f"{value}: several rows for the same seed of "
                         + ", ".join(f"{c}={first[c]!r}" for c in [*by, *seeds]))
    rows = []
    for key, group in frame.assign(_v=values).groupby(by, sort=False, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        ok = group[group["_v"].notna()]
        n = len(ok)
        rec = dict(zip(by, key))
        rec.update(mean=float(ok["_v"].mean()) if n else math.nan,
                   std=float(ok["_v"].std(ddof=1)) if n > 1 else math.nan, n_seeds=n, n_nan=len(group) - n)
        for col in keep:
            one = n == 1 and col in ok.columns
            rec[col] = float(pd.to_numeric(ok[col], errors="coerce").iloc[0]) if one else math.nan
        rows.append(rec)
    return pd.DataFrame(rows, columns=[*by, "mean", "std", "n_seeds", "n_nan", *keep])


def plot_seed_curves(ax, data: pd.DataFrame, key: str, runs: Sequence[str] | None = None) -> pd.DataFrame:
    """Draw ``key`` against RL step for each run: the mean over RL seeds, shaded ± the std across seeds where
    several seeds logged the step, else ± the step's own spread (TRL's ``.../std`` beside a ``.../mean``: the
    spread of what the step sampled, not a confidence interval). Steps where the key is null (a batch without
    any row the reward scores) are skipped. Returns what was drawn: run, step, mean, band, n_seeds."""
    spread = key[: -len("/mean")] + "/std" if key.endswith("/mean") else None
    keep = (spread,) if spread is not None and spread in data.columns else ()
    drawn = []
    for run in runs if runs is not None else runs_in(data):
        rows = data[data["run"] == run]
        agg = aggregate_seeds(rows, ["run", "step"], key, seeds=("rl_seed",), keep=keep)
        agg = agg[agg["n_seeds"] > 0].sort_values("step")
        if agg.empty:
            continue
        own = agg[keep[0]] if keep else pd.Series(math.nan, index=agg.index)
        agg = agg.assign(band=agg["std"].where(agg["n_seeds"] > 1, own))
        n_max = int(agg["n_seeds"].max())
        label = run_label(run) + (f" ({n_max} seeds)" if n_max > 1 else "")
        style = {"color": "black", "linestyle": "--"} if run == "grpo" else {}
        x, y, band = agg["step"].astype(float), agg["mean"].astype(float), agg["band"].astype(float)
        (line,) = ax.plot(x, y, label=label, **style)
        if band.notna().any():
            ax.fill_between(x, y - band, y + band, color=line.get_color(), alpha=0.15, linewidth=0)
        drawn.append(agg[["run", "step", "mean", "band", "n_seeds"]])
    return pd.concat(drawn, ignore_index=True) if drawn else pd.DataFrame(
        columns=["run", "step", "mean", "band", "n_seeds"])


def save_figure(fig, out: str | Path) -> None:
    """Write ``fig`` to ``out`` (PNG) and the PDF beside it, each atomically, and close it."""
    out = Path(out)
    for suffix, kwargs in ((".pdf", {}), (".png", {"dpi": 150})):  # the PNG, the declared target, comes last
        with atomic_file(out.with_suffix(suffix)) as tmp:
            fig.savefig(tmp, bbox_inches="tight", **kwargs)
    plt.close(fig)


def cell(v, digits: int = 3) -> str:
    """One Markdown cell: "–" where a model has no such value, "NaN" for a measured but undefined one."""
    if v is None or v is pd.NA:
        return "–"  # not measured for this model (not the same as NaN, a measured value that is undefined)
    if isinstance(v, float):
        return "NaN" if math.isnan(v) else f"{v:.{digits}f}"
    return str(v)


def mean_std_cell(mean: float | None, std: float | None, n_seeds: int | None, *, n_nan: int = 0,
                  ci: tuple | None = None, digits: int = 3, ci_digits: int | None = None,
                  show_n: bool = True) -> str:
    """``mean ± std (n_seeds)`` over several seeds; with one seed ``mean [lo, hi] (1)``, its own interval where
    it has one. "–" where there is no row; "NaN" where every seed's value is NaN (``n_nan`` of them)."""
    if mean is None or n_seeds is None or n_seeds == 0 or (isinstance(mean, float) and math.isnan(mean)):
        return "NaN" if n_nan else "–"
    text = f"{mean:.{digits}f}"
    if n_seeds > 1 and std is not None and not math.isnan(std):
        text += f" ± {std:.{digits}f}"
    elif ci is not None and not any(c is None or math.isnan(c) for c in ci):
        d = digits if ci_digits is None else ci_digits
        text += f" [{ci[0]:.{d}f}, {ci[1]:.{d}f}]"
    return text + (f" ({n_seeds})" if show_n else "")
