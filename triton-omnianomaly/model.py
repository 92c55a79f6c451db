"""Triton Python backend model `smap_<entity>`: stateful OmniAnomaly, one hidden state per stream.

One source for every entity; `setup_models.sh` copies it next to each entity's checkpoint. A request
carries K rows of any of the model's streams: `input_data` FP64 [K, n], optional `stream_id` BYTES [K] and
`sequence_index` INT64 [K]; every output has the leading K (smap_shared/model/contract.py declares them).
Rows of one stream are applied in their order; rows of different streams at the same depth go through one
vectorised step. See smap_shared/model/streams.py for the redelivery and gap rules.
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
from smap_shared.model.contract import output_arrays  # noqa: E402
from smap_shared.model.scorer import Scorer  # noqa: E402
from smap_shared.model.streams import DEFAULT_MAX_JUMP, RedisStateStore, StateStore, StreamRegistry  # noqa: E402
from smap_shared.settings import STATE_HISTORY  # noqa: E402

log = logging.getLogger("smap.triton")


def _param(config: dict[str, Any], key: str, default: str = "") -> str:
    value = config.get("parameters", {}).get(key, {}).get("string_value", default)
    return os.environ.get(f"SMAP_MODEL_{key}", value)  # env wins, e.g. Redis URL per deployment


def _texts(tensor: Any) -> list[str]:
    return [r.decode("utf-8") if isinstance(r, bytes) else str(r) for r in tensor.as_numpy().reshape(-1)]


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
        history = int(_param(config, "STATE_HISTORY", str(STATE_HISTORY)))
        redis_url = _param(config, "REDIS_URL")
        store: StateStore | None = RedisStateStore(redis_url, self.name, history) if redis_url else None
        max_jump = int(_param(config, "MAX_INDEX_JUMP", str(DEFAULT_MAX_JUMP)))
        self.registry = StreamRegistry(scorer, store, history, max_jump)
        self.n_sensors = ckpt.n_sensors
        pb_utils.Logger.log_info(
            f"{self.name}: {ckpt.n_sensors} sensors, threshold {ckpt.threshold:.4g}, "
            f"{args.get('model_instance_kind')} device, state store {'redis' if store else 'memory'}, "
            f"{len(self.registry.streams)} streams restored"
        )

    def _one(self, request: Any) -> Any:
        x = pb_utils.get_input_tensor_by_name(request, "input_data").as_numpy().astype(np.float64)
        k = x.shape[0]
        sid_t = pb_utils.get_input_tensor_by_name(request, "stream_id")
        idx_t = pb_utils.get_input_tensor_by_name(request, "sequence_index")
        sids: list[str | None] = list(_texts(sid_t)) if sid_t is not None else [None] * k
        indices: list[int | None] = [None] * k
        if idx_t is not None:
            indices = [int(i) for i in idx_t.as_numpy().reshape(-1)]
        run_t = pb_utils.get_input_tensor_by_name(request, "run_id")
        start_t = pb_utils.get_input_tensor_by_name(request, "sequence_start")
        runs: list[str | None] = [None] * k
        if run_t is not None:
            runs = [r or None for r in _texts(run_t)]
        starts = [bool(v) for v in start_t.as_numpy().reshape(-1)] if start_t is not None else [False] * k
        results = self.registry.step_many(x, sids, indices, runs, starts)
        return pb_utils.InferenceResponse(output_tensors=[
            pb_utils.Tensor(name, array) for name, array in output_arrays(results).items()
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
