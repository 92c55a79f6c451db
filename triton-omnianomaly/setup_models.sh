#!/usr/bin/env bash
# Train any missing checkpoints, then lay out the Triton model repository.
#   triton-omnianomaly/setup_models.sh [--checkpoints DIR] [--repo DIR] [--kind KIND_CPU|KIND_GPU|auto]
# Env: PYTHON (default: the repo's .venv python, else python3), CHECKPOINT_DIR, TRITON_MODEL_REPOSITORY,
# TRITON_INSTANCE_KIND, MODEL_STATE_REDIS_URL, SMAP_DATA_DIR (official layout; default: vendored data).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
py="${PYTHON:-}"
if [[ -z "$py" ]]; then
  if [[ -x .venv/bin/python ]]; then py=.venv/bin/python; else py=python3; fi
fi
ckpt="${CHECKPOINT_DIR:-checkpoints}"
repo="${TRITON_MODEL_REPOSITORY:-triton-omnianomaly/models}"
kind="${TRITON_INSTANCE_KIND:-auto}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --checkpoints) ckpt="$2"; shift 2 ;;
    --repo) repo="$2"; shift 2 ;;
    --kind) kind="$2"; shift 2 ;;
    *) echo "unknown option: $1" >&2; exit 2 ;;
  esac
done
echo "[setup_models] checkpoints: $ckpt  repository: $repo  kind: $kind"
"$py" -m smap_shared.model.train --deployed --missing-only --out "$ckpt"
"$py" -m smap_shared.triton.repository --checkpoints "$ckpt" --repo "$repo" --kind "$kind"
