"""Min-max normalisation fitted on the train split, robust to constant columns and far outliers."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

#: A column whose train range is below this is treated as constant: its scale falls back to `CONST_SPAN`.
MIN_SPAN = 1e-6
#: Scale of a constant column. SMAP values lie in [-1, 1] and command flags in {0, 1}, so a unit span maps
#: any test deviation to at most ±2 instead of ±10^4 (naive min-max divides by a ~0 range).
CONST_SPAN = 1.0
#: Normalised values are clipped to [-CLIP, 1 + CLIP]: the decoder ends in a sigmoid, so beyond this an
#: outlier only inflates the score without telling more.
CLIP = 1.0


@dataclass(frozen=True)
class Normalizer:
    lo: Array
    span: Array
    clip: float = CLIP

    @classmethod
    def fit(cls, train: Array, clip: float = CLIP) -> Normalizer:
        lo = train.min(axis=0).astype(np.float64)
        span = (train.max(axis=0) - lo).astype(np.float64)
        span = np.where(span < MIN_SPAN, CONST_SPAN, span)
        return cls(lo=lo, span=span, clip=clip)

    def transform(self, x: Array) -> Array:
        return np.clip((x - self.lo) / self.span, -self.clip, 1.0 + self.clip)

    def inverse(self, z: Array) -> Array:
        return z * self.span + self.lo
