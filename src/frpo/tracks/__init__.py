"""Tracks: the paper's experiments as first-class objects.

A track is one module of this package that names everything one experiment needs, and nothing else in the
pipeline knows it by name:

* ``DATA``: its data keys, each with the fields every row must have (checked at DAG start) and whether the key
  is *prepared* (materialised by the ``prepare_data`` rule: hub downloads, filters) or read as configured;
* ``HUB_SOURCES``: the ``hub:<name>`` sources its data keys accept (checked at DAG start);
* ``prepare(key, spec) -> (rows, info)``: the rows of a prepared key and what preparing did (the only code of a
  track that may reach the network; ``spec["data"]`` holds the key's source and those it ``reads``);
* ``RL_DATA``: the data key of its RL prompts; ``rl_dataset(spec, split)``: those prompts as a TRL dataset;
* ``reward_funcs(spec) -> (functions, weights)``: its RL reward functions (TRL's ``reward_funcs`` and
  ``reward_weights``; weights None for an unweighted sum);
* ``FINETUNE``: its downstream fine-tuning sets, data key -> SFT row format (``frpo.sft.sft_rows``);
* ``PROBES`` and ``probes(spec) -> list[frpo.track.Probe]``: what the forgetting tracker measures during
  fine-tuning (``finetune.track.n_prompts`` gives the number of prompts of each);
* ``FIGURES``: its figures and tables, name -> ``{"draw": "module:function", "tables": [...], "kind": "figure" |
  "table", "caption": ..., "scope": "experiment" | "track"}``, drawn from the tidy tables (``frpo.tables``:
  ``tracking``, ``rl_metrics``, ``evals``, ``rewards``) by the generic ``figure`` and ``table`` rules, per
  experiment, or (scope ``track``) once by ``figure_across`` over the tables of every experiment of the track
  that draws it, concatenated (their ``track`` column names the experiment);
* ``check(view, source)``: what its config block needs beyond the schema (judges' credentials, say).

Adding a track is one module here, one entry in :data:`TRACKS` and one block under ``tracks:`` in a config; the
trainer, the rules and the other tracks are unchanged. A config block is an *experiment*, an instance of a track
(``kind``, default the block's name): several experiments of one track (one per model, say) share this module.
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["TRACKS", "get_track"]

#: track name -> module of this package
TRACKS = {"safety": "safety", "math": "math"}


def get_track(name: str) -> ModuleType:
    """The module of track ``name``."""
    if name not in TRACKS:
        raise ValueError(f"unknown track {name!r} (known: {', '.join(sorted(TRACKS))})")
    return importlib.import_module(f"{__name__}.{TRACKS[name]}")
