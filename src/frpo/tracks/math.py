"""The math track (paper §5.2, App. C.2; spec §1.3, §2.3, §3.3, §3.4): RL on MATH problems (levels 3–5, train
split only), then code SFT on OpenCodeInstruct, with MATH500 and MBPP+ before and after (Table 2, Fig. 14).

* Prompts: the Qwen-Math system prompt and the problem (spec §1.3).
* Rewards: ``format`` (exactly one ``\\boxed{}``) and ``correct`` (the last box equals the reference answer by
  ``math_verify``, in a worker process with a timeout), weighted 0.2 and 0.8 (:mod:`frpo.math_grading`).
* Data (``prepare``): ``math_problems`` is the MATH train split (``hub:math_train``) or a local file, with every
  problem of MATH500 (``data.math500``) dropped by normalised text: the public code trained on a copy that merges
  MATH's train and test splits and so contaminates MATH500 (spec §5.7). Rows without a split are shuffled with
  seed 42 and the first 100 held out (``eval``), as the public script does. ``code`` is OpenCodeInstruct
  (``hub:opencodeinstruct``) or a local file, keeping rows whose ``average_test_score`` is "1" (spec §2.3).
* Probe: the forgetting tracker scores greedy answers to held-out problems with the same verifier (``math``).
"""

from __future__ import annotations

import random

__all__ = ["DATA", "FIGURES", "FINETUNE", "RL_DATA", "check", "prepare", "prepared", "probes", "reward_funcs",
           "rl_dataset"]

HUB_PREFIX = "hub:"
#: data key -> fields every row must have; ``prepared`` keys are materialised by the prepare_data rule, which
#: also ``reads`` the keys listed (and nothing else, so editing another key does not re-prepare this one)
DATA = {
    "math_problems": {"fields": {"problem": str, "solution": str}, "prepared": True, "hub": True,
                      "reads": ["math500"]},
    "math500": {"fields": {"problem": str}, "prepared": False, "hub": True},  # read only to filter math_problems
    "code": {"fields": {"input": str, "output": str}, "prepared": True, "hub": True},
}
#: ``hub:<name>`` sources -> their loader in frpo.data.sources (the only code of this track that downloads)
HUB_SOURCES = {"math_train": "math_train_rows", "math500": "math500_rows", "opencodeinstruct": "code_instruct_rows"}
RL_DATA = "math_problems"
WARMUP_DATA = None
#: what the forgetting tracker measures (frpo.track.Probe names; finetune.track.n_prompts keys)
PROBES = ("math",)
FINETUNE = {"code": "code"}
#: held out when a source has no split (the public script's 100 validation problems)
N_HELD_OUT = 100
HELD_OUT_SEED = 42

FIGURES = {
    "table2": {
        "draw": "frpo.figures.math:table2", "tables": ["evals"], "kind": "table",
        "caption": "Table 2: MATH500 and MBPP+ of each math-RL model before (Base) and after code SFT (FT, mean ± "
                   "std over fine-tuning seeds), with the paper's numbers beside ours in columns marked (paper)."},
    "fig14": {
        "draw": "frpo.figures.math:fig14", "tables": ["rl_metrics"], "kind": "figure",
        "caption": "Fig. 14: the format and correctness rewards during math RL, per run (GRPO and FRPO at each λ)."},
    "fig_math500_vs_lambda": {
        "draw": "frpo.figures.math:math500_vs_lambda", "tables": ["evals", "rl_metrics"], "kind": "figure",
        "caption": "Beyond the paper: MATH500 after code SFT against λ (mean ± std over seeds; GRPO dashed), with "
                   "the band of λ* = std/√(2ρ), ρ ∈ [0.02, 0.3], from the GRPO run's measured within-group reward "
                   "std (the paper's §5.2 argument)."},
}


def prepared(key: str, source: str) -> bool:
    return bool(DATA[key]["prepared"])


def check(view: dict, source: str) -> None:
    pass


def _rows(source: str, hub_loader, fields: dict) -> list[dict]:
    from ..data import read_jsonl, resolve

    if source.startswith(HUB_PREFIX):
        return hub_loader()
    return read_jsonl(resolve(source), required=fields)


def prepare(key: str, spec: dict) -> tuple[list[dict], dict]:
    """The rows of data key ``key`` and what preparing them did (counts), from ``spec["data"]``."""
    from ..data import sources
    from ..math_grading import gold_answer

    data = spec["data"]

    def load(k):
        src = str(data[k])
        name = src[len(HUB_PREFIX):]
        if src.startswith(HUB_PREFIX) and name not in HUB_SOURCES:
            raise ValueError(f"data.{k}: unknown hub source {src!r} "
                             f"(known: {', '.join(HUB_PREFIX + h for h in HUB_SOURCES)})")
        return _rows(src, lambda: getattr(sources, HUB_SOURCES[name])(), DATA[k]["fields"])

    if key == "math_problems":
        rows = load("math_problems")
        banned = [r["problem"] for r in load("math500")]
        kept, dropped = sources.drop_problems(rows, banned)
        if not any("split" in r for r in kept):
            order = list(range(len(kept)))
            random.Random(HELD_OUT_SEED).shuffle(order)
            held_out = set(order[:N_HELD_OUT])
            kept = [{**r, "split": "eval" if i in held_out else "train"} for i, r in enumerate(kept)]
        kept = [{**r, "answer": gold_answer(r)} for r in kept]
        info = {"rows_in": len(rows), "dropped_as_math500": dropped, "math500_problems": len(banned),
                "train": sum(r["split"] == "train" for r in kept), "eval": sum(r["split"] == "eval" for r in kept)}
        return kept, info
    if key == "code":
        rows = load("code")
        kept = [{"input": r["input"], "output": r["output"], "split": "train"} for r in rows
                if str(r.get("average_test_score", "1")) == "1"]
        return kept, {"rows_in": len(rows), "kept_average_test_score_1": len(kept)}
    raise ValueError(f"math track: data.{key} is not prepared")


def _problems(spec: dict, split: str) -> list[dict]:
    from ..data import read_jsonl, resolve

    path = spec["data"][RL_DATA]
    rows = [r for r in read_jsonl(resolve(path), required={"problem": str, "answer": str, "split": str})
            if r["split"] == split]
    if not rows:
        raise ValueError(f"{path}: no problems with split={split!r}")
    return rows


def rl_dataset(spec: dict, split: str):
    """The problems of one split as a conversational TRL dataset: the Qwen-Math system prompt and the problem, with
    the reference ``answer`` column that the reward functions read."""
    from datasets import Dataset

    from ..math_grading import QWEN_MATH_SYSTEM

    return Dataset.from_list([
        {"prompt": [{"role": "system", "content": QWEN_MATH_SYSTEM}, {"role": "user", "content": r["problem"]}],
         "answer": r["answer"]}
        for r in _problems(spec, split)])


def _verifier(spec: dict):
    from ..math_grading import Verifier

    opts = spec.get("reward") or {}
    return Verifier(timeout_s=float(opts.get("timeout_s", 3.0)), workers=int(opts.get("workers", 1)))


def reward_funcs(spec: dict) -> tuple[list, list[float]]:
    """``format`` and ``correct``, weighted 0.2 and 0.8 (spec §1.3)."""
    from ..math_grading import reward_functions

    return reward_functions(_verifier(spec))


class _AnswerJudge:
    """A judge over held-out problems: 1.0 when the completion's last box is the problem's reference answer."""

    def __init__(self, golds: dict[str, str], verifier):
        self.golds, self.verifier = golds, verifier

    def score(self, prompts, completions):
        return self.verifier.correct(list(completions), [self.golds[p] for p in prompts])


def probes(spec: dict) -> list:
    """``math``: greedy answers to held-out problems (``track.n_prompts.math`` of them), scored by the verifier."""
    from ..data import take
    from ..track import Probe

    n = spec["track_forgetting"]["n_prompts"]
    if "math" not in n:
        raise ValueError("finetune.track.n_prompts.math: missing (the math track's probe is math)")
    rows = take(_problems(spec, "eval"), n["math"], "finetune.track.n_prompts.math", "held-out problems")
    golds = {r["problem"]: r["answer"] for r in rows}
    return [Probe("math", list(golds), _AnswerJudge(golds, _verifier(spec)))]
