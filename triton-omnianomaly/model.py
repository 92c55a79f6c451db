"""Triton Python backend model `smap_<entity>`: stateful OmniAnomaly, one hidden state per stream.

One source for every entity; `setup_models.sh` copies it next to each entity's checkpoint. Inputs:
`input_data` FP64 [n], optional `stream_id` BYTES [1] and `sequence_index` INT64 [1]. See
smap_shared/model/streams.py for the redelivery and gap rules, and README.md for the contract.
"""

from __future__ import annotations

import os
import sys

# The backend stub embeds its own interpreter, which ignores PYTHONPATH: add it by hand so the venv's
# packages (numpy, redis, smap_shared) import.
for _p in os.environ.get("PYTHONPATH", "").split(os.pathsep):
    if _p and _p not in sys.path:
        sys.path.append(_p)

import json  # noqa: E402
import logging  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import triton_python_backend_utils as pb_utils  # noqa: E402

from smap_shared.model.checkpoint import Checkpoint  # noqa: E402
from smap_shared.model.scorer import Scorer  # noqa: E402
from smap_shared.model.streams import RedisStateStore, StateStore, StreamRegistry  # noqa: E402

log = logging.getLogger("smap.triton")


def _param(config: dict[str, Any], key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    return os.environ.get(f"SMAP_MODEL_{key}", value)  # env wins, e.g. Redis URL per deployment


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        self.name = config["name"]
        version_dir = Path(args["model_repository"]) / args["model_version"]
        ckpt = Checkpoint.load(version_dir / _param(config, "CHECKPOINT", "model.ckpt"))
        if args.get("model_instance_kind") == "GPU":
            from smap_shared.model.torch_scorer import TorchScorer

            scorer: Any = TorchScorer(ckpt, f"cuda:{args['model_instance_device_id']}")
        else:
            scorer = Scorer(ckpt)  # numpy only: keeps the stub at ~40 MB instead of ~230 MB with torch
        history = int(_param(config, "STATE_HISTORY", "256"))
        redis_url = _param(config, "REDIS_URL")
        store: StateStore | None = RedisStateStore(redis_url, self.name, history) if redis_url else None
        self.registry = StreamRegistry(scorer, store, history)
        self.n_sensors = ckpt.n_sensors
        pb_utils.Logger.log_info(
            f"{self.name}: {ckpt.n_sensors} sensors, threshold {ckpt.threshold:.4g}, "
            f"{args.get('model_instance_kind')} device, state store {'redis' if store else 'memory'}, "
            f"{len(self.registry.streams)} streams restored"
        )

    def _one(self, request: Any) -> Any:
        x = pb_utils.get_input_tensor_by_name(request, "input_data").as_numpy().astype(np.float64)
        sid_t = pb_utils.get_input_tensor_by_name(request, "stream_id")
        idx_t = pb_utils.get_input_tensor_by_name(request, "sequence_index")
        sid = None
        if sid_t is not None:
            raw = sid_t.as_numpy().reshape(-1)[0]
            sid = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        index = int(idx_t.as_numpy().reshape(-1)[0]) if idx_t is not None else None
        res = self.registry.step(x.reshape(-1), sid, index)
        o = res.output
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor("reconstruction", o.reconstruction.astype(np.float64)),
            pb_utils.Tensor("anomaly_score", np.array([o.anomaly_score], dtype=np.float64)),
            pb_utils.Tensor("anomaly_detected", np.array([o.anomaly_detected], dtype=bool)),
            pb_utils.Tensor("sensor_error", o.sensor_error.astype(np.float64)),
            pb_utils.Tensor("threshold", np.array([o.threshold], dtype=np.float64)),
            pb_utils.Tensor("detector_signal", np.array([o.detector_signal], dtype=np.float64)),
            pb_utils.Tensor("alarm_cause", np.array([o.alarm_cause], dtype=np.int64)),
            pb_utils.Tensor("duplicate", np.array([res.duplicate], dtype=bool)),
            pb_utils.Tensor("gap", np.array([res.gap], dtype=np.int64)),
        ])

    def execute(self, requests: list[Any]) -> list[Any]:
        # In order: requests of one stream never overtake each other (one instance per model).
        responses = []
        for request in requests:
            try:
                responses.append(self._one(request))
            except Exception as exc:  # a clear per-request error; the other requests still answer
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{self.name}: {exc}")))
        return responses

    def finalize(self) -> None:
        pb_utils.Logger.log_info(f"{self.name}: unloading ({len(self.registry.streams)} streams)")
