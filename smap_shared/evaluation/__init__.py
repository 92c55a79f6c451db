"""Honest evaluation of the SMAP detector: metrics, causal decision rules, the evaluation CLI and report."""
