"""Stage 4, evaluations: one module per benchmark, each with ``evaluate(model_path, cfg) -> dict``, and one
registry.

:mod:`frpo.evals.registry` is the one list of benchmarks: each one's module, config sections and defaults, default
and accepted judges, SLURM resources and config check (:func:`check_eval_config`, :func:`eval_sections`,
:func:`resources`). :mod:`frpo.evals.judged` is the judged benchmarks' shared generate-and-judge step.

``run_eval(name, model_path, cfg, out_path)`` runs one benchmark by name and writes its result JSON, which
records the model, the data, the judge and its version, the generation settings and the timings. Judged
benchmarks save their completions next to it (``<bench>.generations.jsonl``) before judging, so that a judge
failure loses no generation (:func:`saved_generations`).
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path

from ..io import atomic_write_text
from ..judges.local import model_fingerprint
from .judged import generations_path, saved_generations
from .registry import (
    BENCHMARKS,
    DEFAULT_JUDGES,
    REGISTRY,
    Benchmark,
    benchmark,
    check_eval_config,
    eval_judge,
    eval_judges,
    eval_problems,
    eval_sections,
    judged_benchmarks,
    options,
    resources,
    strongreject_dataset,
)

__all__ = ["BENCHMARKS", "DEFAULT_JUDGES", "REGISTRY", "Benchmark", "benchmark", "check_eval_config", "eval_judge",
           "eval_judges", "eval_problems", "eval_sections", "generations_path", "judged_benchmarks",
           "model_fingerprint", "options", "resources", "run_eval", "saved_generations", "strongreject_dataset"]


def run_eval(name: str, model_path: str | Path, cfg: dict, out_path: str | Path) -> dict:
    """Run benchmark ``name`` on the model at ``model_path`` with the eval spec ``cfg`` and write its result JSON
    to ``out_path`` (atomically); returns the result."""
    module = importlib.import_module(f"{__name__}.{benchmark(name).module}")
    start = time.perf_counter()
    fingerprint = model_fingerprint(model_path)
    result = module.evaluate(model_path, {**cfg, "benchmark": name, "model_sha256_16": fingerprint,
                                          "generations_path": str(generations_path(out_path))})
    result = {
        "benchmark": name,
        "model_path": str(model_path),
        "model_sha256_16": fingerprint,
        **result,
        "seconds": round(time.perf_counter() - start, 2),
    }
    atomic_write_text(out_path, json.dumps(result, indent=2) + "\n")
    return result
