#!/usr/bin/env bash
# THE test command: scripts/test.sh [pytest args]
#   - creates .venv (python3.11) if missing; installs requirements-dev.txt + the package only when
#     requirements*.txt / pyproject.toml changed (hash stamp in .venv)
#   - runs `npm ci` for the dashboard (smap-operation-server/web) when its lock changed, installs Debian's
#     chromium for the browser test when missing
#   - starts the missing infrastructure (scripts/infra.sh up; `scripts/infra.sh down` stops it again)
#   - runs .venv/bin/python -m pytest tests [args] and exits with pytest's code
# Examples: scripts/test.sh -m "not integration"     scripts/test.sh tests/unit -x -q
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

ensure_venv
ensure_web_deps   # the dashboard's chart library (npm ci from the lock file)
ensure_chromium   # the dashboard's browser test
bash "$ROOT/scripts/infra.sh" up

# Test paths given as arguments replace the default `tests`.
targets=(tests)
for arg in "$@"; do
  case "$arg" in
    tests|tests/*|./tests*) targets=(); break ;;
  esac
done

set +e
"$VENV/bin/python" -m pytest "${targets[@]}" "$@" </dev/null
code=$?
set -e
exit "$code"
