"""Scoring one timestep or a whole sequence: the single definition of a score, used by the Triton model,
the offline reference, the evaluation and the tests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from smap_shared.model.checkpoint import Checkpoint
from smap_shared.model.numpy_net import N_HIDDEN, N_LAYERS, NumpyOmniAnomaly
from smap_shared.model.rules import Rule, TrainPotRule, rule_from_dict

Array = npt.NDArray[np.float64]


HIDDEN_SIZE = N_LAYERS * N_HIDDEN


def decision_rule(ckpt: Checkpoint) -> Rule:
    """The checkpoint's decision rule (fitted on its train split); older checkpoints without one fall back to
    `score > ckpt.threshold`."""
    if "decision_rule" in ckpt.meta:
        return rule_from_dict(ckpt.meta["decision_rule"])
    return TrainPotRule(threshold=ckpt.threshold, method="checkpoint")


@dataclass(frozen=True)
class StepOutput:
    """reconstruction is in raw sensor units (comparable with the input); sensor_error is the squared error
    in normalised units, and anomaly_score its mean over sensors (the spec's MSE). anomaly_detected and
    threshold come from the checkpoint's decision rule: for the deployed causal rule the threshold is in the
    units of its own signal (the smoothed absolute error of the telemetry value), not of anomaly_score;
    detector_signal is that signal, the value the rule compares with threshold (for score rules: the score).
    alarm_cause: the bits of smap_shared.model.rules.ALARM_CAUSES behind the alarm in force (0: none)."""

    reconstruction: Array
    sensor_error: Array
    anomaly_score: float
    anomaly_detected: bool
    threshold: float
    detector_signal: float
    alarm_cause: int = 0
    #: set by the stream registry: a digest of the input row this output answers (a redelivery must match)
    input_digest: str = ""


@dataclass(frozen=True)
class SequenceOutput:
    reconstruction: Array  # (T, n)
    sensor_error: Array  # (T, n)
    anomaly_score: Array  # (T,)
    anomaly_detected: npt.NDArray[np.bool_]  # (T,)
    threshold: Array  # (T,)
    detector_signal: Array  # (T,)
    final_state: Array
    alarm_cause: npt.NDArray[np.int64]  # (T,)


class Scorer:
    """State of one stream: one flat float64 vector, the GRU hidden state (2 x 32) then the rule's memory."""

    def __init__(self, ckpt: Checkpoint, rule: Rule | None = None) -> None:
        self.ckpt = ckpt
        self.net = NumpyOmniAnomaly(ckpt.weights)
        self.norm = ckpt.normalizer
        self.rule = rule or decision_rule(ckpt)
        self.n_sensors = ckpt.n_sensors

    def initial_state(self) -> Array:
        return np.concatenate((self.net.initial_state().ravel(), self.rule.initial_state()))

    def decide(self, z: Array, recon: Array, state: Array, new_hidden: Array, x_raw: Array
               ) -> tuple[StepOutput, Array]:
        """Error, score and the rule's decision for one step; returns the output and the new state.
        x_raw: the checked input row in raw units (the rule may watch the telemetry value itself)."""
        err = (z - recon) ** 2
        score = float(err.mean())
        rule_state = state[HIDDEN_SIZE:].copy()
        detected, threshold, signal = self.rule.step(rule_state, score, err, x_raw)
        out = StepOutput(
            reconstruction=self.norm.inverse(recon), sensor_error=err, anomaly_score=score,
            anomaly_detected=detected, threshold=threshold, detector_signal=float(signal),
            alarm_cause=self.rule.cause(rule_state, detected),
        )
        return out, np.concatenate((new_hidden.ravel(), rule_state))

    def check_input(self, x: Array) -> Array:
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.shape[0] != self.n_sensors:
            raise ValueError(
                f"input_data has {x.shape[0]} values but model {self.ckpt.entity} expects {self.n_sensors}"
            )
        if not np.isfinite(x).all():
            raise ValueError("input_data contains NaN or Inf")
        return x

    def check_rows(self, rows: Array) -> Array:
        """K input rows (K, n), each checked as `check_input` checks one."""
        x = np.asarray(rows, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_sensors:
            raise ValueError(
                f"input_data has shape {list(x.shape)} but model {self.ckpt.entity} expects [K, {self.n_sensors}]"
            )
        if not np.isfinite(x).all():
            bad = sorted({int(i) for i in np.flatnonzero(~np.isfinite(x).all(axis=1))})
            raise ValueError(f"input_data contains NaN or Inf (rows {bad[:10]})")
        return x

    def step(self, x_raw: Array, state: Array) -> tuple[StepOutput, Array]:
        x = self.check_input(x_raw)
        return self.step_many(x[np.newaxis, :], state[np.newaxis, :])[0]

    def step_many(self, rows_raw: Array, states: Array) -> list[tuple[StepOutput, Array]]:
        """One step of B different streams at once: rows (B, n) in raw units, states (B, S) -> each
        stream's output and new state. The network runs one vectorised step over the B rows; the rule runs
        per stream. Row b equals `step(rows_raw[b], states[b])` up to float64 rounding (~1e-16)."""
        x = self.check_rows(rows_raw)
        z = self.norm.transform(x)
        hidden = states[:, :HIDDEN_SIZE].reshape(-1, N_LAYERS, N_HIDDEN)
        recon, _mu, new_hidden = self.net.step_many(z, hidden)
        return [self.decide(z[b], recon[b], states[b], new_hidden[b], x[b]) for b in range(x.shape[0])]

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
            detector_signal=np.array([o.detector_signal for o in outs]),
            final_state=h,
            alarm_cause=np.array([o.alarm_cause for o in outs], dtype=np.int64),
        )
