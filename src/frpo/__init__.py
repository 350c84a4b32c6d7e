"""FRPO: Fine-tuning Robust Policy Optimization (arXiv 2602.08813) — objective, trainer and pipeline."""

__version__ = "0.1.0"
