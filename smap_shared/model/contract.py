"""The `smap_<entity>` model's interface, declared once: its inputs and outputs (name, type, per-row or
per-sensor). The Triton config (smap_shared.triton.repository), the Python backend's tensors
(triton-omnianomaly/model.py) and the client's parsing (smap_shared.triton.client) are all derived from
these declarations, and so are the VictoriaMetrics series of the results (smap_shared.streaming.consumer
`result_lines`: every tensor with a `metric`), so adding an output means adding it here, to `ModelOutputs`
and, if it travels in the results, to `InferenceResult` (smap_shared/schemas.py: the message schema stays
written out, typed, in one place).

Every tensor has a leading row dimension K: one request carries K rows of any streams of one model, and
answers with K rows.

>>> [o.name for o in OUTPUTS if o.per_sensor]
['reconstruction', 'sensor_error']
>>> config_dims(OUTPUTS[0], 25)
'[ -1, 25 ]'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import numpy.typing as npt

from smap_shared.model.streams import StepResult

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Tensor:
    name: str
    triton_type: str  # config.pbtxt data type
    per_sensor: bool  # [K, n] when True, else [K]
    help: str
    optional: bool = False
    metric: str = ""  # the VictoriaMetrics series of the result's value ("" for none)
    per_cause: bool = False  # an ALARM_CAUSES bit set: one 0/1 series per cause (label `cause`)

    @property
    def datatype(self) -> str:
        """The wire data type (KServe v2 protocol): TYPE_FP64 -> FP64, TYPE_STRING -> BYTES."""
        return "BYTES" if self.triton_type == "TYPE_STRING" else self.triton_type.removeprefix("TYPE_")

    @property
    def numpy_dtype(self) -> type[np.generic]:
        return {"FP64": np.float64, "INT64": np.int64, "BOOL": np.bool_, "BYTES": np.object_}[self.datatype]


INPUTS: tuple[Tensor, ...] = (
    Tensor("input_data", "TYPE_FP64", True, "one telemetry frame per row, raw sensor values",
           metric="smap_sensor_value"),
    Tensor("stream_id", "TYPE_STRING", False, "the row's stream (state key), e.g. SAT-001/A-1", optional=True),
    Tensor("sequence_index", "TYPE_INT64", False, "the row's index in its stream (dedupe, gaps)", optional=True),
    Tensor("run_id", "TYPE_STRING", False, "the source's run of the row ('' for none)", optional=True),
    Tensor("sequence_start", "TYPE_BOOL", False, "the row starts its run: the stream starts over", optional=True),
)

OUTPUTS: tuple[Tensor, ...] = (
    Tensor("reconstruction", "TYPE_FP64", True, "the model's reconstruction, raw units",
           metric="smap_sensor_reconstruction"),
    Tensor("anomaly_score", "TYPE_FP64", False, "mean squared error of the normalised frame",
           metric="smap_anomaly_score"),
    Tensor("anomaly_detected", "TYPE_BOOL", False, "the deployed decision rule's alarm",
           metric="smap_anomaly_detected"),
    Tensor("sensor_error", "TYPE_FP64", True, "per-sensor squared error, normalised units",
           metric="smap_sensor_error"),
    Tensor("threshold", "TYPE_FP64", False, "the rule's threshold, in the units of detector_signal",
           metric="smap_anomaly_threshold"),
    Tensor("detector_signal", "TYPE_FP64", False, "the value the rule compares with threshold",
           metric="smap_detector_signal"),
    Tensor("alarm_cause", "TYPE_INT64", False, "ALARM_CAUSES bits behind the alarm in force (0: none)",
           metric="smap_alarm_cause", per_cause=True),
    Tensor("duplicate", "TYPE_BOOL", False, "a redelivered index: outputs replayed, state untouched"),
    Tensor("gap", "TYPE_INT64", False, "indices skipped right before this row"),
)
OUTPUT_NAMES = tuple(o.name for o in OUTPUTS)


def config_dims(tensor: Tensor, n_sensors: int) -> str:
    return f"[ -1, {n_sensors} ]" if tensor.per_sensor else "[ -1 ]"


def config_entries(tensors: Sequence[Tensor], n_sensors: int) -> str:
    """The `input [...]` / `output [...]` entries of config.pbtxt."""
    lines = []
    for t in tensors:
        optional = " optional: true" if t.optional else ""
        dims = config_dims(t, n_sensors)
        lines.append(f'  {{ name: "{t.name}" data_type: {t.triton_type} dims: {dims}{optional} }}')
    return ",\n".join(lines)


@dataclass(frozen=True)
class ModelOutputs:
    """One row of the model's answer (the fields are OUTPUTS, in order)."""

    reconstruction: Array
    anomaly_score: float
    anomaly_detected: bool
    sensor_error: Array
    threshold: float
    detector_signal: float  # what the decision rule compares with threshold
    alarm_cause: int  # smap_shared.model.rules.ALARM_CAUSES bits behind the alarm in force (0: none)
    duplicate: bool
    gap: int


assert tuple(f.name for f in fields(ModelOutputs)) == OUTPUT_NAMES, "ModelOutputs must list OUTPUTS in order"


def output_arrays(results: Sequence[StepResult]) -> dict[str, npt.NDArray[np.generic]]:
    """The K rows of step results as the model's output tensors (server side)."""
    rows = [
        ModelOutputs(
            reconstruction=r.output.reconstruction, anomaly_score=r.output.anomaly_score,
            anomaly_detected=r.output.anomaly_detected, sensor_error=r.output.sensor_error,
            threshold=r.output.threshold, detector_signal=r.output.detector_signal,
            alarm_cause=r.output.alarm_cause, duplicate=r.duplicate, gap=r.gap,
        )
        for r in results
    ]
    return {o.name: np.array([getattr(row, o.name) for row in rows], dtype=o.numpy_dtype) for o in OUTPUTS}


def rows_of(arrays: dict[str, npt.NDArray[np.generic]]) -> list[ModelOutputs]:
    """The model's output tensors back as K rows (client side); checks every output has K rows."""
    k = {name: len(a) for name, a in arrays.items()}
    if len(set(k.values())) != 1 or set(k) != set(OUTPUT_NAMES):
        raise ValueError(f"model outputs disagree on their rows: {k}")
    n = next(iter(k.values()))
    out = []
    for i in range(n):
        row: dict[str, Any] = {}
        for o in OUTPUTS:
            v = arrays[o.name][i]
            if o.per_sensor:
                row[o.name] = np.asarray(v, dtype=np.float64)
            elif o.datatype == "FP64":
                row[o.name] = float(v)
            elif o.datatype == "BOOL":
                row[o.name] = bool(v)
            else:
                row[o.name] = int(v)
        out.append(ModelOutputs(**row))
    return out
