"""OmniAnomaly: network (torch, for training), numpy inference, normalisation, thresholds, checkpoints.

The Triton model and the offline reference both score through `scorer.Scorer`, which needs numpy only, so
a CPU model stub stays small (no torch import) and a score means the same thing everywhere.
"""
