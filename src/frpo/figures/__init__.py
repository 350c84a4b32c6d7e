"""Stage 5, figures and tables (the package's modules; :mod:`.safety` holds the safety track's)."""

from __future__ import annotations

from .safety import final_table, lambda_landscape, rl_curves, run_label

__all__ = ["final_table", "lambda_landscape", "rl_curves", "run_label"]
