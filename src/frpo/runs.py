"""Run and setting identities: the one place that formats and parses them.

A model of the pipeline is named by where it sits in the chain, as a *target*:

* ``ref``: the model RL starts from (π_ref: the base model, or the warm-up model when a track has one);
* ``rl/<run>/seed<s>``: an RL run (``grpo``, or ``frpo_lam<λ>``) trained with seed ``s`` (merged model);
* ``ft/<run>/seed<s>/<setting>/seed<f>``: that RL model after the downstream fine-tuning ``setting``
  (``<dataset>-<full|lora|lora_r<N>>-lr<lr>-ep<epochs>``) with seed ``f``.

Every path of the workflow, the workflow's wildcard constraints, the schema's λ pattern (injected by
:func:`frpo.config.validate_config`), the collectors that build the tidy tables and the figures use the patterns
and functions below; nothing else formats or parses these names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = [
    "LAMBDA_RE", "RUN_RE", "SEED_RE", "SETTING_RE", "TARGET_RE", "TRACK_RE", "Run", "Setting", "Target",
    "canonical_lambda", "parse_run", "parse_setting", "parse_target", "run_name", "setting_name",
]

#: λ as it appears in names: a plain decimal (no exponent, no sign), e.g. 0.2, 2, 10
LAMBDA_RE = r"[0-9]+(\.[0-9]+)?"
RUN_RE = rf"grpo|frpo_lam{LAMBDA_RE}"
SEED_RE = r"(?:0|[1-9][0-9]*)"  # no leading zeros: a seed has one name
#: a learning rate as the config writes it (a canonical number string: 5e-5, 1e-6, 0.0001)
LR_RE = r"[0-9]+(\.[0-9]+)?([eE]-?[0-9]+)?"
#: a fine-tuning method: full, lora (the config's finetune.lora) or lora_r<N> (that LoRA with rank N)
METHOD_RE = r"full|lora(?:_r[1-9][0-9]*)?"
SETTING_RE = rf"[a-z0-9_]+-({METHOD_RE})-lr{LR_RE}-ep[0-9]+"
TRACK_RE = r"[a-z][a-z0-9_]*"
TARGET_RE = rf"ref|rl/({RUN_RE})/seed{SEED_RE}|ft/({RUN_RE})/seed{SEED_RE}/({SETTING_RE})/seed{SEED_RE}"

# fullmatch everywhere: a name is exactly the pattern (no trailing newline, as "$" would allow)
_RUN = re.compile(rf"(?:(?P<grpo>grpo)|frpo_lam(?P<lam>{LAMBDA_RE}))")
_SETTING = re.compile(rf"(?P<dataset>[a-z0-9_]+)-(?P<method>full|lora)(?:_r(?P<rank>[1-9][0-9]*))?"
                      rf"-lr(?P<lr>{LR_RE})-ep(?P<epochs>[0-9]+)")
_TARGET = re.compile(rf"(?:(?P<ref>ref)|rl/(?P<rl_run>[^/]+)/seed(?P<rl_seed>{SEED_RE})"
                     rf"|ft/(?P<ft_run>[^/]+)/seed(?P<ft_rl_seed>{SEED_RE})/(?P<setting>[^/]+)/seed(?P<ft_seed>{SEED_RE}))")


def canonical_lambda(value: float) -> str:
    """λ as it appears in names: two significant digits, plain decimal (0.16, 0.2, 2, 10)."""
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"λ must be a finite number > 0, got {value}")
    text = f"{float(f'{value:.2g}'):.15f}".rstrip("0").rstrip(".")
    if not float(text) > 0:
        raise ValueError(f"λ = {value} is too small to name as a plain decimal")
    return text


@dataclass(frozen=True)
class Run:
    """An RL run: ``algorithm`` (grpo or frpo) and, for FRPO, λ as written in the name and as a number."""

    name: str
    algorithm: str
    lambda_text: str | None

    @property
    def lam(self) -> float | None:
        return float(self.lambda_text) if self.lambda_text is not None else None


def run_name(algorithm: str, lam: str | None = None) -> str:
    """``grpo``, or ``frpo_lam<λ>`` with λ written as the config writes it (a plain decimal)."""
    if algorithm == "grpo":
        if lam is not None:
            raise ValueError("GRPO has no λ")
        return "grpo"
    if algorithm != "frpo":
        raise ValueError(f"unknown algorithm {algorithm!r} (grpo or frpo)")
    if lam is None or not re.fullmatch(LAMBDA_RE, str(lam)) or not float(lam) > 0:
        raise ValueError(f"FRPO's λ must be a plain decimal > 0 such as 0.2 or 10, got {lam!r}")
    return f"frpo_lam{lam}"


def parse_run(name: str) -> Run:
    match = _RUN.fullmatch(name)
    if not match or (match["lam"] is not None and not float(match["lam"]) > 0):
        raise ValueError(f"{name!r} is not an RL run name (grpo or frpo_lam<λ> with λ > 0)")
    if match["grpo"]:
        return Run(name, "grpo", None)
    return Run(name, "frpo", match["lam"])


@dataclass(frozen=True)
class Setting:
    """A downstream fine-tuning setting: data set, method (``full`` or ``lora``), LoRA rank when the name fixes it
    (``lora_r<N>``; None: the config's finetune.lora), learning rate (as written) and epochs."""

    name: str
    dataset: str
    method: str
    lr_text: str
    epochs: int
    lora_rank: int | None = None

    @property
    def learning_rate(self) -> float:
        return float(self.lr_text)


def setting_name(dataset: str, method: str, lr: str, epochs: int) -> str:
    name = f"{dataset}-{method}-lr{lr}-ep{epochs}"
    parse_setting(name)  # refuses what the pattern would not match back
    return name


def parse_setting(name: str) -> Setting:
    match = _SETTING.fullmatch(name)
    if not match or (match["rank"] and match["method"] != "lora"):
        raise ValueError(f"fine-tuning setting {name!r} is not <dataset>-<full|lora|lora_r<N>>-lr<lr>-ep<epochs>")
    return Setting(name, match["dataset"], match["method"], match["lr"], int(match["epochs"]),
                   int(match["rank"]) if match["rank"] else None)


@dataclass(frozen=True)
class Target:
    """A model of the chain: ``stage`` base (π_ref), rl or ft, with its run, seeds and setting."""

    stage: str
    run: Run | None = None
    rl_seed: int | None = None
    setting: Setting | None = None
    ft_seed: int | None = None

    @property
    def path(self) -> str:
        """The target as it appears in paths: ``ref``, ``rl/<run>/seed<s>`` or ``ft/<run>/seed<s>/<setting>/seed<f>``."""
        if self.stage == "base":
            return "ref"
        rl = f"{self.run.name}/seed{self.rl_seed}"
        return f"rl/{rl}" if self.stage == "rl" else f"ft/{rl}/{self.setting.name}/seed{self.ft_seed}"

    def identity(self) -> dict:
        """The identity columns of the tidy tables (frpo.tables)."""
        return {
            "stage": self.stage, "model": self.path,
            "run": self.run.name if self.run else "",
            "algorithm": self.run.algorithm if self.run else "base",
            "lambda": self.run.lam if self.run and self.run.lam is not None else math.nan,
            "rl_seed": self.rl_seed if self.rl_seed is not None else math.nan,
            "setting": self.setting.name if self.setting else "",
            "ft_seed": self.ft_seed if self.ft_seed is not None else math.nan,
        }

    @classmethod
    def rl(cls, run: str, seed: int) -> Target:
        return cls("rl", parse_run(run), int(seed))

    @classmethod
    def ft(cls, run: str, seed: int, setting: str, ft_seed: int) -> Target:
        return cls("ft", parse_run(run), int(seed), parse_setting(setting), int(ft_seed))


def parse_target(text: str) -> Target:
    match = _TARGET.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a model target (ref, rl/<run>/seed<s> or ft/<run>/seed<s>/<setting>/seed<f>)")
    if match["ref"]:
        return Target("base")
    if match["rl_run"]:
        return Target.rl(match["rl_run"], int(match["rl_seed"]))
    return Target.ft(match["ft_run"], int(match["ft_rl_seed"]), match["setting"], int(match["ft_seed"]))
