"""Typed client for the `smap_<entity>` models (tritonclient HTTP). One instance per process, reused."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from smap_shared.fleet import model_name

Array = npt.NDArray[np.float64]

INPUTS = ("input_data", "stream_id", "sequence_index")
OUTPUTS = (
    "reconstruction", "anomaly_score", "anomaly_detected", "sensor_error", "threshold", "detector_signal",
    "alarm_cause", "duplicate", "gap",
)


@dataclass(frozen=True)
class ModelOutputs:
    reconstruction: Array
    sensor_error: Array
    anomaly_score: float
    anomaly_detected: bool
    threshold: float
    duplicate: bool
    gap: int
    detector_signal: float  # what the decision rule compares with threshold
    alarm_cause: int  # smap_shared.model.rules.ALARM_CAUSES bits behind the alarm in force (0: none)


class TritonInferenceError(RuntimeError):
    """Triton answered with an error for this request (bad input, unknown model, ...)."""


class OmniAnomalyClient:
    def __init__(self, url: str = "localhost:8100", timeout_s: float = 10.0, concurrency: int = 1) -> None:
        import tritonclient.http as httpclient

        self._http = httpclient
        self.url = url
        self.client = httpclient.InferenceServerClient(
            url=url, connection_timeout=timeout_s, network_timeout=timeout_s, concurrency=concurrency
        )

    def close(self) -> None:
        self.client.close()

    def is_ready(self, entity: str | None = None) -> bool:
        try:
            if entity is None:
                return bool(self.client.is_server_ready())
            return bool(self.client.is_model_ready(model_name(entity)))
        except Exception:
            return False

    def _inputs(self, values: Array, stream_id: str | None, index: int | None) -> list[object]:
        http = self._http
        x = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        inp = http.InferInput("input_data", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)
        inputs = [inp]
        if stream_id is not None:
            sid = http.InferInput("stream_id", [1], "BYTES")
            sid.set_data_from_numpy(np.array([stream_id.encode()], dtype=np.object_))
            inputs.append(sid)
        if index is not None:
            idx = http.InferInput("sequence_index", [1], "INT64")
            idx.set_data_from_numpy(np.array([index], dtype=np.int64))
            inputs.append(idx)
        return inputs

    def infer(
        self, entity: str, values: Array | list[float], stream_id: str | None = None, index: int | None = None
    ) -> ModelOutputs:
        from tritonclient.utils import InferenceServerException

        outputs = [self._http.InferRequestedOutput(name) for name in OUTPUTS]
        try:
            res = self.client.infer(
                model_name(entity), self._inputs(np.asarray(values), stream_id, index), outputs=outputs
            )
        except InferenceServerException as exc:
            raise TritonInferenceError(str(exc)) from exc
        return ModelOutputs(
            reconstruction=res.as_numpy("reconstruction"),
            sensor_error=res.as_numpy("sensor_error"),
            anomaly_score=float(res.as_numpy("anomaly_score")[0]),
            anomaly_detected=bool(res.as_numpy("anomaly_detected")[0]),
            threshold=float(res.as_numpy("threshold")[0]),
            duplicate=bool(res.as_numpy("duplicate")[0]),
            gap=int(res.as_numpy("gap")[0]),
            detector_signal=float(res.as_numpy("detector_signal")[0]),
            alarm_cause=int(res.as_numpy("alarm_cause")[0]),
        )
