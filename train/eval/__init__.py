"""Robustness evaluation: the papers' metrics, sweeps and reports."""
