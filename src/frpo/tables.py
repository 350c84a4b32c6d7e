"""The tidy tables every figure reads: one row per observation, with the identity columns of :mod:`frpo.runs`.

* ``rl_metrics.csv``: one row per logged RL step: ``track, run, algorithm, lambda, rl_seed, step`` and every
  metric the run logged (``rewards/<name>/mean``, ``kl``, ``frpo/reward_std_within_group``, ...);
* ``evals.csv``: one row per (model, benchmark, metric): ``track, stage, model, run, algorithm, lambda, rl_seed,
  setting, ft_seed, benchmark, metric, value, ci_low, ci_high`` and the counts a result records (``n, limit,
  subset, n_scored, n_malformed, n_excluded``). A value recorded beside the main one (EvalPlus's
  ``pass@1_plus``, lm-eval's other metrics) is a row of its own with that metric;
* ``tracking.csv``: the forgetting tracker's rows of every fine-tuning run, with the identity columns;
* ``rewards.csv``: the sampled rewards of the RL models (``frpo sample-rewards``, the forgetting floor's input):
  the identity columns, ``probe, prompt_index, sample, reward``, one row per sampled completion (``sample``: its
  index among its prompt's completions).

Inputs come labelled by model target (``rl/<run>/seed<s>``, ``ft/.../seed<f>``; ``<target>:<bench>`` for
evaluations); :func:`frpo.runs.parse_target` is what reads the labels.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from .data import read_jsonl
from .runs import parse_target

__all__ = ["EVAL_DETAILS", "IDENTITY", "REWARD_COLUMNS", "evals_table", "rewards_table", "rl_metrics_table",
           "tracking_table"]

IDENTITY = ["track", "stage", "model", "run", "algorithm", "lambda", "rl_seed", "setting", "ft_seed"]
#: what an evaluation result may say about how its value was obtained
EVAL_DETAILS = ("n", "limit", "subset", "n_scored", "n_malformed", "n_excluded")


def _identity(track: str, label: str) -> dict:
    return {"track": track, **parse_target(label).identity()}


def _ordered(frame: pd.DataFrame, first: list[str]) -> pd.DataFrame:
    return frame[[c for c in first if c in frame] + [c for c in frame.columns if c not in first]]


def rl_metrics_table(track: str, inputs: list[tuple[str, Path]]) -> pd.DataFrame:
    """``inputs``: ``(rl/<run>/seed<s>, metrics.jsonl)`` pairs."""
    frames = []
    for label, path in inputs:
        ident = _identity(track, label)
        rows = read_jsonl(path)
        frame = pd.DataFrame(rows).drop(columns=["run"], errors="ignore")
        for key in ("track", "run", "algorithm", "lambda", "rl_seed"):
            frame[key] = ident[key]
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return _ordered(table, ["track", "run", "algorithm", "lambda", "rl_seed", "step"])


def _ci(result: dict, metric: str | None = None):
    ci = result.get("ci95") if metric is None else (result.get(f"ci95_{metric}")
                                                    or result.get("ci95_" + metric.rsplit("_", 1)[-1]))
    return tuple(ci) if ci else (math.nan, math.nan)


def evals_table(track: str, inputs: list[tuple[str, Path]]) -> pd.DataFrame:
    """``inputs``: ``(<target>:<bench>, result.json)`` pairs."""
    rows = []
    for label, path in inputs:
        target, _, bench = label.rpartition(":")
        result = json.loads(Path(path).read_text())
        base = {**_identity(track, target), "benchmark": bench}
        lo, hi = _ci(result)
        details = {k: result.get(k) for k in EVAL_DETAILS}
        rows.append({**base, "metric": result.get("metric"), "value": result["value"], "ci_low": lo, "ci_high": hi,
                     **details})
        for metric, value in (result.get("metrics") or {}).items():
            if metric != result.get("metric") and isinstance(value, (int, float)):
                lo, hi = _ci(result, metric)
                same_items = {k: details[k] for k in ("n", "limit", "subset", "n_scored")}  # scored on the same items
                rows.append({**base, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi, **same_items})
    table = pd.DataFrame(rows)
    return _ordered(table, IDENTITY + ["benchmark", "metric", "value", "ci_low", "ci_high", *EVAL_DETAILS])


def tracking_table(track: str, inputs: list[tuple[str, Path]]) -> pd.DataFrame:
    """``inputs``: ``(ft/<run>/seed<s>/<setting>/seed<f>, tracking.csv)`` pairs (runs without a tracker wrote
    a header only and add no row)."""
    frames = []
    for label, path in inputs:
        frame = pd.read_csv(path)
        for key, value in _identity(track, label).items():
            frame[key] = value
        frames.append(frame)
    table = pd.concat(frames, ignore_index=True)
    return _ordered(table, IDENTITY + ["step"])


#: the columns of ``rewards.csv`` after the identity columns
REWARD_COLUMNS = ["probe", "prompt_index", "sample", "reward"]


def rewards_table(track: str, inputs: list[tuple[str, Path]]) -> pd.DataFrame:
    """``inputs``: ``(rl/<run>/seed<s>, rewards.jsonl)`` pairs, the files ``frpo sample-rewards`` writes
    (:func:`frpo.rewards_sample.read_rewards` checks them; a bad line is named by file and line)."""
    from .rewards_sample import read_rewards

    rows = []
    for label, path in inputs:
        ident = _identity(track, label)
        for line in read_rewards(path):
            rows += [{**ident, "probe": line["probe"], "prompt_index": line["prompt_index"], "sample": k,
                      "reward": float(r)} for k, r in enumerate(line["rewards"])]
    if not rows:  # files without a line: the columns all the same
        return pd.DataFrame(columns=IDENTITY + REWARD_COLUMNS)
    return _ordered(pd.DataFrame(rows), IDENTITY + REWARD_COLUMNS)
