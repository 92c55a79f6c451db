"""Anomaly thresholds calibrated on train-split scores only (test labels are never looked at).

Peaks-over-threshold (Siffer et al., KDD 2017): take the excesses of the train scores over a high initial
quantile, fit a generalised Pareto tail by the method of moments (closed form, stable on small samples) and
read off the score exceeded with probability `risk`. Train scores of this data often sit on plateaus (one
wrong command flag adds exactly a constant), where a tail fit degenerates (variance 0, or a shape that sends
the threshold to 1e12+). Those cases fall back to a documented empirical rule: the max train score times a
margin. The spec's fixed 0.16 stays available as `fixed`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

SPEC_FIXED_THRESHOLD = 0.16


@dataclass(frozen=True)
class ThresholdFit:
    value: float
    method: Literal["pot", "empirical", "fixed"]
    init_quantile: float
    risk: float
    detail: str

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def pot_threshold(
    scores: Array, risk: float = 1e-3, init_quantile: float = 0.98, margin: float = 1.2
) -> ThresholdFit:
    """Threshold exceeded by train scores with probability ~`risk`, with a guarded fallback."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if s.size < 50:
        raise ValueError(f"need at least 50 finite train scores to calibrate a threshold, got {s.size}")
    empirical = float(s.max() * margin)
    t = float(np.quantile(s, init_quantile))
    excess = s[s > t] - t
    if excess.size < 10:
        return ThresholdFit(empirical, "empirical", init_quantile, risk, f"{excess.size} peaks over {t:.4g}")
    m, v = float(excess.mean()), float(excess.var())
    if v <= 1e-18 or m <= 0:
        return ThresholdFit(empirical, "empirical", init_quantile, risk, "excesses have no spread (plateau)")
    xi = 0.5 * (1.0 - m * m / v)
    sigma = 0.5 * m * (m * m / v + 1.0)
    ratio = risk * s.size / excess.size
    z = t + sigma * math.log(1.0 / ratio) if abs(xi) < 1e-9 else t + sigma / xi * (ratio ** (-xi) - 1.0)
    # A fitted threshold below the train max would flag training data; far above it (heavy-tail blow-up)
    # nothing would ever fire. Both mean the tail model does not describe these scores.
    if not math.isfinite(z) or z < s.max() or z > 10.0 * s.max():
        return ThresholdFit(
            empirical, "empirical", init_quantile, risk, f"GPD fit rejected (xi={xi:.3g}, z={z:.4g})"
        )
    return ThresholdFit(float(z), "pot", init_quantile, risk, f"xi={xi:.4g} sigma={sigma:.4g} t={t:.4g}")


def fixed_threshold(value: float = SPEC_FIXED_THRESHOLD) -> ThresholdFit:
    return ThresholdFit(value, "fixed", 0.0, 0.0, "the spec's fixed threshold")
