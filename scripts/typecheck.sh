#!/usr/bin/env bash
# mypy --strict (pyproject.toml) on every Python folder of the repository; CI runs it (.ci/run).
# Folders whose modules share a name -- every service's main.py, the test helpers imported beside their
# tests -- are checked one group at a time, each with the helpers' folder on MYPYPATH.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
MYPY="${MYPY:-$ROOT/.venv/bin/mypy}"

"$MYPY" smap_shared research benchmarks scripts triton-omnianomaly/model.py smap-analysis-worker/smap_analysis
for service in smap-simulator smap-inference-trigger smap-victoria-consumer smap-alert-manager smap-operation-server; do
  "$MYPY" "$service/main.py"
done
MYPYPATH=tests/unit/alerting:tests/unit/deploy:tests/unit/streaming \
  "$MYPY" --explicit-package-bases tests/unit tests/research tests/conftest.py
MYPYPATH=tests/integration "$MYPY" tests/integration
