"""Scoring one timestep or a whole sequence: the single definition of a score, used by the Triton model,
the offline reference, the evaluation and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.numpy_net import NumpyOmniAnomaly

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class StepOutput:
    """reconstruction is in raw sensor units (comparable with the input); sensor_error is the squared error
    in normalised units, and anomaly_score its mean over sensors (the spec's MSE)."""

    reconstruction: Array
    sensor_error: Array
    anomaly_score: float
    anomaly_detected: bool
    threshold: float


@dataclass(frozen=True)
class SequenceOutput:
    reconstruction: Array  # (T, n)
    sensor_error: Array  # (T, n)
    anomaly_score: Array  # (T,)
    anomaly_detected: npt.NDArray[np.bool_]  # (T,)
    threshold: Array  # (T,)
    final_state: Array


class Scorer:
    def __init__(self, ckpt: Checkpoint, threshold: float | None = None) -> None:
        self.ckpt = ckpt
        self.net = NumpyOmniAnomaly(ckpt.weights)
        self.norm = ckpt.normalizer
        self.threshold = ckpt.threshold if threshold is None else threshold
        self.n_sensors = ckpt.n_sensors

    def initial_state(self) -> Array:
        return self.net.initial_state()

    def check_input(self, x: Array) -> Array:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_sensors:
            raise ValueError(
                f"input_data has {x.shape[0]} values but model {self.ckpt.entity} expects {self.n_sensors}"
            )
        if not np.isfinite(x).all():
            raise ValueError("input_data contains NaN or Inf")
        return x

    def step(self, x_raw: Array, state: Array) -> tuple[StepOutput, Array]:
        x = self.check_input(x_raw)
        z = self.norm.transform(x)
        recon, _mu, new_state = self.net.step(z, state)
        err = (z - recon) ** 2
        score = float(err.mean())
        out = StepOutput(
            reconstruction=self.norm.inverse(recon), sensor_error=err, anomaly_score=score,
            anomaly_detected=score > self.threshold, threshold=self.threshold,
        )
        return out, new_state

    def run(self, seq_raw: Array, state: Array | None = None) -> SequenceOutput:
        """Score a sequence step by step from `state` (zeros by default): the offline reference."""
        h = self.initial_state() if state is None else state
        outs: list[StepOutput] = []
        for row in np.asarray(seq_raw, dtype=np.float64):
            out, h = self.step(row, h)
            outs.append(out)
        return SequenceOutput(
            reconstruction=np.array([o.reconstruction for o in outs]),
            sensor_error=np.array([o.sensor_error for o in outs]),
            anomaly_score=np.array([o.anomaly_score for o in outs]),
            anomaly_detected=np.array([o.anomaly_detected for o in outs], dtype=bool),
            threshold=np.array([o.threshold for o in outs]),
            final_state=h,
        )
