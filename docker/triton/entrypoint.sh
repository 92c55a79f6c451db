#!/usr/bin/env bash
# Triton container start: lay out the model repository for this host (config.pbtxt with
# TRITON_INSTANCE_KIND: KIND_GPU with gpus: [0], or KIND_CPU; checkpoints trained only if missing), then
# run tritonserver in the foreground with native mode's flags (smap_shared/triton/launcher.py
# build_command; tests/unit/deploy/test_dockerfiles.py checks they agree).
set -euo pipefail

/app/triton-omnianomaly/setup_models.sh \
  --checkpoints "${CHECKPOINT_DIR:?}" --repo "${TRITON_MODEL_REPOSITORY:?}" --kind "${TRITON_INSTANCE_KIND:-auto}"

exec tritonserver \
  --model-repository="${TRITON_MODEL_REPOSITORY}" \
  --http-port="${TRITON_HTTP_PORT:-8000}" \
  --grpc-port="${TRITON_GRPC_PORT:-8001}" \
  --metrics-port="${TRITON_METRICS_PORT:-8002}" \
  --model-control-mode=none \
  --exit-on-error=false \
  --strict-readiness=true \
  --allow-gpu-metrics=false \
  --backend-config=python,shm-default-byte-size=4194304 \
  --backend-config=python,shm-growth-byte-size=1048576 \
  "$@"
