"""Checkpoints: one `.npz` per entity with weights, normalisation, threshold and metadata.

Plain numpy arrays plus a JSON string (no pickle), so the CPU Triton model loads them without torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from smap_shared.model.normalization import Normalizer

Array = npt.NDArray[np.float64]
FORMAT_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    entity: str
    n_sensors: int
    weights: dict[str, Array]
    normalizer: Normalizer
    threshold: float
    meta: dict[str, Any] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        arrays: dict[str, npt.NDArray[Any]] = {f"w/{k}": v for k, v in self.weights.items()}
        arrays["norm/lo"] = self.normalizer.lo
        arrays["norm/span"] = self.normalizer.span
        header = {
            "format": FORMAT_VERSION,
            "entity": self.entity,
            "n_sensors": self.n_sensors,
            "threshold": self.threshold,
            "clip": self.normalizer.clip,
            "meta": self.meta,
        }
        arrays["header"] = np.array(json.dumps(header, sort_keys=True))
        path.parent.mkdir(parents=True, exist_ok=True)
        # np.savez appends .npz to a bare name; write through a handle to keep `model.ckpt`.
        with path.open("wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(cls, path: Path) -> Checkpoint:
        with np.load(path, allow_pickle=False) as npz:
            header = json.loads(str(npz["header"]))
            if header.get("format") != FORMAT_VERSION:
                raise ValueError(f"{path}: checkpoint format {header.get('format')} != {FORMAT_VERSION}")
            weights = {k[2:]: npz[k].astype(np.float64) for k in npz.files if k.startswith("w/")}
            norm = Normalizer(npz["norm/lo"], npz["norm/span"], float(header["clip"]))
        return cls(
            entity=header["entity"], n_sensors=int(header["n_sensors"]), weights=weights,
            normalizer=norm, threshold=float(header["threshold"]), meta=header["meta"],
        )
