"""Stage 3, forgetting tracking: how far fine-tuning moves the model, and what it does to a track's probes.

A *probe* (:class:`Probe`) is a named set of held-out prompts with the judge that scores completions of them; a
track names its own (the safety track: ``safety``, harmful prompts scored by the safety judge, and
``helpfulness``, benign prompts scored by the helpfulness judge; the math track its own). At step 0 and every
``every_steps`` optimizer steps of a downstream fine-tuning run, :class:`ForgettingTracker` measures the current
model on all probes' prompts together, in two passes:

* **sampled** completions (temperature ``temperature``, one per prompt), for the KL to the pre-fine-tuning
  model, from k3 = e^d − d − 1 with d = log π_ref − log π_θ on each sampled completion token (an unbiased
  estimate of KL(π_θ‖π_ref) only on samples from π_θ): ``kl_per_token_sampled``, Σ k3 / Σ tokens over all
  prompts, and per probe P ``kl_P_sampled``; ``kl_per_sequence_sampled``, the mean over all prompts of Σ k3 over
  the completion's tokens, the sequence-level KL that the Donsker–Varadhan bound uses. The public code logged
  only that sum, on greedy completions, under a per-token label (spec §2.4, §5.8);
* **greedy** completions, for the rewards, as the public tracker scored them: per probe P, P's judge on P's
  prompts (``P_reward_greedy``), with a 95% bootstrap interval over the prompts (``P_reward_greedy_ci_low``,
  ``P_reward_greedy_ci_high``) and the number of prompts (``n_P``).

A probe may have no judge (``judge=None``): a *KL-only* probe, whose prompts are only sampled, for the KL columns
``kl_P_sampled`` and ``kl_P_per_sequence_sampled``, and left out of ``kl_per_token_sampled``,
``kl_per_sequence_sampled`` and the greedy pass. The fine-tuning stage adds one, ``ft_data``, on held-out prompts
of its own data set when ``finetune.track.data_prompts`` asks for it: the KL of fine-tuning where it trains,
against which the probes' rewards can be read without the circularity of a KL measured on the probes themselves
(on the harmful prompts, turning a refusal into a compliance *is* KL).

The sampled completions are scored too, by the same judges: ``P_reward_sampled``, the mean over P's prompts of
the judge's reward of each prompt's one sampled completion (unbiased for the mean reward of samples from the
current model; one sample a prompt, so noisier than the greedy mean). It is the reward the forgetting floor
(:mod:`frpo.floor`) speaks of: the Donsker–Varadhan bound holds for the mean reward of *samples* from a model
within KL ρ of the RL model, and ``kl_per_sequence_sampled`` is that KL, measured on the same samples; greedy
decoding is not a sample from the model, so a greedy reward may fall below the floor without contradicting it.
Both passes go to each judge in one call (greedy completions first), so a remote judge batches them together.

The columns, in order, are :func:`fields` of the probe names. ``train_loss`` is the training loss logged at that
very step (the tracker forces a log at its steps and measures from the log hook, which runs after the step's
loss is known and before its checkpoint is saved). Rows go to a tidy CSV, one row per measurement; a CSV written
with other columns (other probes) is refused rather than mixed. The sampling RNG is forked (CPU and the current
CUDA device) and seeded per step, so tracking neither perturbs training nor depends on it.

Under several processes every process measures, at the same steps and identically (the same prompts, seeds and
weights), since the forward passes of a sharded model (ZeRO-3, FSDP) are collectives that all processes must take
part in; only the main process asks the judges, writes the row and prints it. Which steps are due is decided
from memory, identically everywhere: the steps in the CSV when training begins (read by every process before
the main one appends, a barrier between them), plus every step measured since.
"""

from __future__ import annotations

import csv
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import TrainerCallback

from .generation import completion_logps, generate
from .io import atomic_file
from .objective import k3_kl
from .stats import mean_and_ci

__all__ = ["ForgettingTracker", "Probe", "fields", "read_rows"]

PROBE_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


@dataclass(frozen=True)
class Probe:
    """A named set of held-out prompts and the judge that scores completions of them.

    ``judge`` has ``.score(prompts, completions) -> list[float]`` (as :mod:`frpo.judges` judges do), or is None for
    a KL-only probe (module docstring). ``name`` matches ``^[a-z][a-z0-9_]*$`` (it becomes part of CSV column
    names); ``prompts`` is not empty.
    """

    name: str
    prompts: list[str]
    judge: object = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not PROBE_NAME.match(self.name):
            raise ValueError(f"probe name {self.name!r} does not match {PROBE_NAME.pattern}")
        # a private copy: the caller's list changing later must not change what was measured
        object.__setattr__(self, "prompts", list(self.prompts))
        if not self.prompts:
            raise ValueError(f"probe {self.name!r} has no prompts")
        if self.judge is not None and not callable(getattr(self.judge, "score", None)):
            raise TypeError(f"probe {self.name!r}: the judge has no score(prompts, completions) method")

    @property
    def judged(self) -> bool:
        return self.judge is not None


def _check_names(names: list[str]) -> None:
    if not names:
        raise ValueError("no probes: the tracker needs at least one")
    seen: set[str] = set()
    for name in names:
        if not isinstance(name, str) or not PROBE_NAME.match(name):
            raise ValueError(f"probe name {name!r} does not match {PROBE_NAME.pattern}")
        if name in seen:
            raise ValueError(f"probe {name!r} is named twice")
        seen.add(name)


def fields(probe_names: list[str], kl_only: list[str] = ()) -> list[str]:
    """The tracking CSV's columns, in order, for judged probes named ``probe_names`` and KL-only probes named
    ``kl_only``: ``step``, ``kl_per_token_sampled``, ``kl_per_sequence_sampled``, ``kl_P_sampled`` for each probe
    P (judged, then KL-only), ``kl_P_per_sequence_sampled`` for each P, then ``P_reward_greedy``,
    ``P_reward_greedy_ci_low``, ``P_reward_greedy_ci_high``, ``P_reward_sampled`` for each judged P, then ``n_P``
    for each P, ``train_loss``, ``seconds``. Raises ValueError on no judged name, a duplicate or a malformed
    name."""
    judged, kl_only = list(probe_names), list(kl_only)
    _check_names(judged)
    _check_names(judged + kl_only)
    names = judged + kl_only
    return (["step", "kl_per_token_sampled", "kl_per_sequence_sampled"]
            + [f"kl_{p}_sampled" for p in names]
            + [f"kl_{p}_per_sequence_sampled" for p in names]
            + [f"{p}_reward_{kind}" for p in judged
               for kind in ("greedy", "greedy_ci_low", "greedy_ci_high", "sampled")]
            + [f"n_{p}" for p in names]
            + ["train_loss", "seconds"])


def rng_devices() -> list[int]:
    """The CUDA devices whose RNG a measurement forks: the current one when CUDA is in use, else none."""
    return [torch.cuda.current_device()] if torch.cuda.is_available() else []


def read_rows(path: str | Path) -> list[dict]:
    """The rows of a tracking CSV, as dicts of strings keyed by column."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class ForgettingTracker(TrainerCallback):
    """Measures the KL to ``ref_model`` and each probe's judge reward during fine-tuning (see the module
    docstring), at step 0, every ``every_steps`` steps and at the end, appending rows to ``csv_path``."""

    def __init__(self, *, ref_model, tokenizer, probes: list[Probe], csv_path, every_steps: int,
                 max_new_tokens: int, temperature: float = 1.0, seed: int = 0, batch_size: int = 16):
        for probe in probes:
            if not isinstance(probe, Probe):
                raise TypeError(f"probes must be Probe instances, got {type(probe).__name__}")
        # the judged probes first: the KL over "all prompts" and the greedy pass are theirs
        self.probes = tuple([p for p in probes if p.judged] + [p for p in probes if not p.judged])
        self.judged = tuple(p for p in self.probes if p.judged)
        self.fields = fields([p.name for p in self.judged], [p.name for p in self.probes if not p.judged])
        self.ref_model = ref_model
        self.tokenizer = tokenizer
        self.csv_path = Path(csv_path)
        self.every_steps, self.max_new_tokens, self.temperature = every_steps, max_new_tokens, temperature
        self.seed, self.batch_size = seed, batch_size
        self._last_loss: tuple[int, float] | None = None  # (step, loss) of the newest training log
        self._pending: int | None = None  # a step whose measurement waits for that step's log
        self._measured: set[int] | None = None  # steps measured (None: read them from the CSV when next asked)
        self.generation: dict | None = None  # the generation configs of the latest measurement (for the summary)

    # -- bookkeeping, resumable --------------------------------------------------------------------------------
    def _rows(self) -> list[dict]:
        """The rows already written; a file with other columns (another probe set, an older format) is refused,
        since appending to it would silently mix incomparable measurements."""
        if not self.csv_path.is_file():
            return []
        with open(self.csv_path, newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
        if header != self.fields:
            raise ValueError(f"{self.csv_path} has columns {header}, but this tracker writes {self.fields}; "
                             "move the file away or track the same probes")
        return rows

    def _measured_steps(self) -> set[int]:
        """The steps measured: read from the CSV the first time they are asked for after training begins or
        the CSV is truncated, then kept in memory (see the module docstring)."""
        if self._measured is None:
            self._measured = {int(r["step"]) for r in self._rows()}
        return self._measured

    def truncate_after(self, step: int) -> None:
        """Drop rows measured after ``step`` (on resume from checkpoint-``step`` they are measured again).
        Under several processes only the main process calls this, before training (the CSV is its file)."""
        self._measured = None
        if not self.csv_path.is_file():
            return
        self._write([r for r in self._rows() if int(r["step"]) <= step], mode="w")

    def _write(self, rows: list[dict], mode: str = "a") -> None:
        """Append (or replace with) ``rows``; the file is rewritten whole and renamed, so a kill mid-write
        never leaves a truncated row behind."""
        if mode == "a":
            rows = self._rows() + rows
        with atomic_file(self.csv_path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.fields)
            writer.writeheader()
            writer.writerows(rows)

    # -- the measurement ---------------------------------------------------------------------------------------
    def measure(self, model, step: int, train_loss: float | None = None, write: bool = True) -> dict:
        """Measure ``model`` at ``step`` (``train_loss``: that step's logged loss, if any), append the row to the
        CSV and return it. With ``write=False`` (the processes other than the main one) the generation and the
        forward passes run all the same, but no judge is asked and nothing is written or printed: the row
        returned holds the KL columns only."""
        start = time.perf_counter()
        prompts = [prompt for probe in self.probes for prompt in probe.prompts]
        bounds, at = {}, 0
        for probe in self.probes:
            bounds[probe.name] = slice(at, at + len(probe.prompts))
            at += len(probe.prompts)
        n_judged = sum(len(p.prompts) for p in self.judged)  # the judged probes' prompts come first
        # the KL-only probes' prompts are sampled after the judged ones, in a generation of their own: the judged
        # probes' samples (and so every number of theirs) are those of a tracker without them
        parts = [prompts[:n_judged], prompts[n_judged:]] if n_judged < len(prompts) else [prompts]
        with torch.random.fork_rng(devices=rng_devices()):
            torch.manual_seed(self.seed * 1_000_003 + step)
            sampled = [generate(model, self.tokenizer, part, max_new_tokens=self.max_new_tokens, do_sample=True,
                                temperature=self.temperature, batch_size=self.batch_size) for part in parts]
        greedy = generate(model, self.tokenizer, prompts[:n_judged], max_new_tokens=self.max_new_tokens,
                          do_sample=False, batch_size=self.batch_size)
        self.generation = {"kl_sampled": sampled[0].config, "rewards_greedy": greedy.config}
        k3_sums, counts = [], []  # per prompt: the sum of k3 over its sampled completion's tokens, and their number
        for gen in sampled:
            cur = completion_logps(model, gen, self.batch_size)
            ref = completion_logps(self.ref_model, gen, self.batch_size)
            k3_sums.append((k3_kl(cur.double(), ref.double()) * gen.completion_mask.cpu()).sum(dim=1))
            counts.append(gen.completion_mask.cpu().double().sum(dim=1))
        k3, tokens = torch.cat(k3_sums), torch.cat(counts)
        texts = [t for gen in sampled for t in gen.texts]

        def per_token(rows: slice) -> float:
            return float(k3[rows].sum() / tokens[rows].sum().clamp(min=1))

        judged = slice(0, n_judged)
        row: dict = {"step": step, "kl_per_token_sampled": per_token(judged),
                     "kl_per_sequence_sampled": float(k3[judged].mean())}
        for probe in self.probes:
            row[f"kl_{probe.name}_sampled"] = per_token(bounds[probe.name])
        for probe in self.probes:  # the sequence-level KL on each probe's prompts: the floor's ρ for that probe
            row[f"kl_{probe.name}_per_sequence_sampled"] = float(k3[bounds[probe.name]].mean())
        if not write:
            self._measured_steps().add(step)
            return row
        for probe in self.judged:
            n = len(probe.prompts)
            # one call per judge: the greedy completions, then the sampled ones, of the probe's prompts
            scores = list(probe.judge.score(probe.prompts * 2, greedy.texts[bounds[probe.name]]
                                            + texts[bounds[probe.name]]))
            if len(scores) != 2 * n:
                raise ValueError(f"probe {probe.name!r}: the judge returned {len(scores)} scores for "
                                 f"{2 * n} completions")
            reward = mean_and_ci(scores[:n], seed=step)
            row[f"{probe.name}_reward_greedy"] = reward["mean"]
            row[f"{probe.name}_reward_greedy_ci_low"] = reward["ci_low"]
            row[f"{probe.name}_reward_greedy_ci_high"] = reward["ci_high"]
            row[f"{probe.name}_reward_sampled"] = _mean(scores[n:])
        for probe in self.probes:
            row[f"n_{probe.name}"] = len(probe.prompts)
        row["train_loss"] = "" if train_loss is None else train_loss
        row["seconds"] = round(time.perf_counter() - start, 3)
        self._write([row])
        self._measured_steps().add(step)
        rewards = "  ".join(f"{p.name} {row[f'{p.name}_reward_greedy']:.3f} greedy, "
                            f"{row[f'{p.name}_reward_sampled']:.3f} sampled" for p in self.judged)
        print(f"[track] step {step}: kl/token (sampled) {row['kl_per_token_sampled']:.4f}  {rewards}", flush=True)
        return row

    # -- TrainerCallback hooks ---------------------------------------------------------------------------------
    # The Trainer calls on_step_end, then logs (on_log), then saves a checkpoint. A measurement due at step s is
    # therefore made from on_log, with the loss of step s, and before checkpoint s exists: a run resumed from
    # checkpoint s already has row s. Every process measures at the same steps; only the main one writes.
    def _due(self, state) -> bool:
        return state.global_step not in self._measured_steps()

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._pending = None
        self._measured = None
        self._measured_steps()  # every process reads the CSV ...
        _barrier()  # ... before the main process appends to it, so all agree on which steps are due
        if self._due(state):
            self.measure(model, state.global_step, write=state.is_world_process_zero)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step % self.every_steps == 0:
            # on_log then fires at this step, with this step's loss. Every process logs (the Trainer gathers the
            # loss across processes when it logs) and measures.
            control.should_log = True
            if self._due(state):
                self._pending = state.global_step

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if logs and "loss" in logs:
            self._last_loss = (state.global_step, float(logs["loss"]))
        if self._pending is not None and self._pending == state.global_step and self._due(state):
            self.measure(model, state.global_step, self._loss_at(state.global_step),
                         write=state.is_world_process_zero)
        self._pending = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self._due(state):
            self.measure(model, state.global_step, self._loss_at(state.global_step),
                         write=state.is_world_process_zero)

    def _loss_at(self, step: int) -> float | None:
        return self._last_loss[1] if self._last_loss is not None and self._last_loss[0] == step else None


def _mean(values) -> float:
    """The mean of ``values`` with NaNs dropped (NaN if none is left), as :func:`frpo.stats.mean_and_ci` takes
    it for the greedy rewards."""
    xs = [float(v) for v in values if not math.isnan(float(v))]
    return sum(xs) / len(xs) if xs else math.nan


def _barrier() -> None:
    """Wait for every process of the job (nothing to wait for in a single process)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
