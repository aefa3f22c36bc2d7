"""Evaluating synthetic data: independent solutions, a sandbox for model-written programs, answer comparison."""
