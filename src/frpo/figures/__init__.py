"""Stage 5, figures and tables, drawn from the tidy tables the collectors write (``rl_metrics.csv``,
``evals.csv``, ``tracking.csv``); no model is loaded here. One function per paper figure or table:

* :mod:`.safety` — :func:`lambda_landscape` (Fig. 3 left/middle), :func:`rl_curves` (Fig. 13),
  :func:`final_table` (every model's final numbers);
* :mod:`.math` — :func:`table2` (Table 2), :func:`fig14` (Fig. 14), :func:`math500_vs_lambda` (MATH500 after
  fine-tuning against λ, with the predicted λ* band);
* :mod:`.common` — what they share: reading the tables, run order and labels, mean ± std over seeds, Markdown
  cells, saving PNG + PDF atomically.

Every figure writes the PNG it is asked for and a PDF beside it.
"""

from __future__ import annotations

from .common import aggregate_seeds, order_runs, read_table, run_label, save_figure
from .math import PAPER_TABLE2, fig14, grpo_reward_std, lambda_star_band, math500_vs_lambda, table2
from .safety import EVAL_DETAILS, final_table, lambda_landscape, rl_curves

__all__ = [
    "EVAL_DETAILS", "PAPER_TABLE2", "aggregate_seeds", "fig14", "final_table", "grpo_reward_std",
    "lambda_landscape", "lambda_star_band", "math500_vs_lambda", "order_runs", "read_table", "rl_curves",
    "run_label", "save_figure", "table2",
]
