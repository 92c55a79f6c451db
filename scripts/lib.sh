# Shared helpers for scripts/infra.sh, scripts/test.sh, start-smap.sh and .ci/run. Source it; it sets
# ROOT (the repository root, found from this file's path), VENV, RUN_DIR and LOG_DIR.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
RUN_DIR="${SMAP_RUN_DIR:-$ROOT/.run}"
# shellcheck disable=SC2034  # used by the scripts that source this file
LOG_DIR="$RUN_DIR/logs"
PYTHON_BIN="${PYTHON_BIN:-python3.11}"
# The address every listening socket started by these scripts binds (services, Triton, Tansu,
# VictoriaMetrics, Flower, and RabbitMQ where infra.sh starts it): loopback unless set. 0.0.0.0 opens every
# port to the network (start-smap.sh warns). The services read the same variable (smap_shared.settings).
export SMAP_BIND_ADDRESS="${SMAP_BIND_ADDRESS:-127.0.0.1}"

# is_loopback ADDRESS: 127.x.y.z, ::1 or localhost.
is_loopback() { [[ "$1" == 127.* || "$1" == "::1" || "$1" == "localhost" ]]; }

# A non-loopback SMAP_BIND_ADDRESS opens every port of the chain to the network. The dashboard and both APIs
# then need SMAP_AUTH=on (they refuse to start with it off); Triton, the Kafka broker, VictoriaMetrics, Flower
# and the /metrics ports have no authentication of their own.
warn_exposed() {
  is_loopback "$SMAP_BIND_ADDRESS" && return 0
  if [[ "${SMAP_AUTH:-on}" == off ]]; then
    die "SMAP_AUTH=off with SMAP_BIND_ADDRESS=$SMAP_BIND_ADDRESS: authentication may only be off on loopback (docs/security.md)"
  fi
  log "WARNING: SMAP_BIND_ADDRESS=$SMAP_BIND_ADDRESS: the dashboard and both APIs require a login or a token, but"
  log "WARNING: Triton, the Kafka broker, VictoriaMetrics, Flower and every /metrics port listen beyond this machine"
  log "WARNING: WITHOUT authentication: anyone who can reach them can feed telemetry and read every result."
  log "WARNING: Prefer loopback behind a TLS reverse proxy; see docs/security.md."
}

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# port_open PORT [HOST]: something accepts TCP connections there.
port_open() {
  local port="$1" host="${2:-127.0.0.1}"
  timeout 2 bash -c "exec 3<>/dev/tcp/$host/$port" 2>/dev/null
}

# wait_port NAME PORT SECONDS: poll until the port accepts connections; fail with a message otherwise.
wait_port() {
  local name="$1" port="$2" secs="$3" i
  for ((i = 0; i < secs * 4; i++)); do
    port_open "$port" && return 0
    sleep 0.25
  done
  log "$name: nothing listening on port $port after ${secs}s"
  return 1
}

# wait_http NAME URL SECONDS: poll until the URL answers 2xx.
wait_http() {
  local name="$1" url="$2" secs="$3" i
  for ((i = 0; i < secs * 4; i++)); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.25
  done
  log "$name: $url not healthy after ${secs}s"
  return 1
}

# as_root CMD...: run as root (directly, or with sudo when it needs no password); never prompts.
as_root() {
  if [[ "$(id -u)" == 0 ]]; then "$@"
  elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then sudo -n "$@"
  else die "'$*' needs root (no passwordless sudo): install/start it by hand"
  fi
}

_APT_UPDATED=0
# apt_install PACKAGE...: install Debian packages without prompts; `apt-get update` once per script run.
apt_install() {
  command -v apt-get >/dev/null || die "apt-get not found: install $* by hand"
  if [[ $_APT_UPDATED == 0 ]]; then
    log "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq </dev/null >&2
    _APT_UPDATED=1
  fi
  log "apt-get install $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" </dev/null >&2
}

# requirements_hash: what the installed venv must match (requirements files + the package metadata).
requirements_hash() {
  cat "$ROOT"/requirements.txt "$ROOT"/requirements-dev.txt "$ROOT"/pyproject.toml 2>/dev/null | sha256sum | cut -d' ' -f1
}

# ensure_venv: create .venv if missing and (re)install the requirements and the editable package only when
# requirements*.txt or pyproject.toml changed since the last successful install (stamp in .venv).
ensure_venv() {
  local stamp="$VENV/.smap-requirements.sha256" want
  if [[ ! -x "$VENV/bin/python" ]]; then
    command -v "$PYTHON_BIN" >/dev/null || die "$PYTHON_BIN not found (the services need Python 3.11)"
    log "creating $VENV with $PYTHON_BIN"
    "$PYTHON_BIN" -m venv "$VENV"
  fi
  want="$(requirements_hash)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  log "installing requirements-dev.txt and the smap_shared package into $VENV (requirements changed)"
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -r "$ROOT/requirements-dev.txt" </dev/null >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$ROOT" </dev/null >&2
  echo "$want" >"$stamp"
}

WEB_DIR="$ROOT/smap-operation-server/web"
# ensure_web_deps: the dashboard's npm packages (the chart library) in $WEB_DIR/node_modules, installed with
# `npm ci` from package-lock.json when node_modules is missing or the lock changed since (stamp inside it).
ensure_web_deps() {
  local stamp="$WEB_DIR/node_modules/.smap-lock.sha256" want
  [[ -f "$WEB_DIR/package-lock.json" ]] || return 0
  want="$(sha256sum "$WEB_DIR/package-lock.json" | cut -d' ' -f1)"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
    return 0
  fi
  command -v npm >/dev/null || apt_install npm
  log "npm ci in $WEB_DIR (package-lock.json changed or node_modules missing)"
  (cd "$WEB_DIR" && npm ci --omit=dev --no-audit --no-fund </dev/null >&2)
  echo "$want" >"$stamp"
}

# ensure_chromium: Debian's chromium for the dashboard's browser test (Playwright drives it; no download).
# Not fatal: without it only that test fails, and says why.
ensure_chromium() {
  [[ -x /usr/bin/chromium ]] && return 0
  (apt_install chromium) || log "warning: chromium could not be installed; the dashboard browser test will fail"
}
