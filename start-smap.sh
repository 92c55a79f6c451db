#!/usr/bin/env bash
# Start, stop and inspect the whole SMAP anomaly-detection chain.
#
#   ./start-smap.sh [start|stop|status|restart|logs SERVICE] [--native|--docker]
#
# Docker mode (when `docker info` works, or --docker): docker compose -f docker-compose.smap.yml ...
# Native mode (otherwise, or --native):
#   start    venv + requirements (only when changed), infrastructure (scripts/infra.sh up: Tansu, RabbitMQ
#            + management UI, Redis, VictoriaMetrics), model checkpoints + Triton repository
#            (triton-omnianomaly/setup_models.sh), then the services under supervisord
#            (.run/supervisord.conf, one log per service in .run/logs/): Triton first, the analysis
#            workers once Triton is ready, then consumer, alert manager, operation server (dashboard), trigger,
#            Flower and last the simulator.
#            A second `start` while running changes nothing.
#   stop     stop the services and supervisord, then the infrastructure this repo started
#   status   supervisorctl status + infrastructure ports
#   restart  restart the services (the infrastructure stays up)
#   logs S   follow .run/logs/S.log (S: triton, worker-shard0, trigger, consumer, alert-manager,
#            operation-server, simulator, flower, ...)
#
# Environment: SMAP_BIND_ADDRESS (address of every listening socket, default 127.0.0.1; a non-loopback one
# is warned about), SMAP_AUTH (on: log in / API tokens, the default; off: no login, loopback only),
# INFERENCE_SHARDS (worker shards, default 2), SIMULATOR_INTERVAL_S (default 5),
# TRITON_HTTP_PORT (8100), TRITON_WAIT_S (seconds to wait for Triton, default 180),
# SMAP_SKIP_MODELS=1 (do not run setup_models.sh), SUPERVISOR_BIN (default .venv/bin), and every
# service setting (see smap_shared/settings.py).
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"
cd "$ROOT"

COMPOSE_FILE="docker-compose.smap.yml"
CONF="$RUN_DIR/supervisord.conf"
SOCK="$RUN_DIR/supervisor.sock"
PIDFILE="$RUN_DIR/supervisord.pid"
export INFERENCE_SHARDS="${INFERENCE_SHARDS:-2}"
export SIMULATOR_INTERVAL_S="${SIMULATOR_INTERVAL_S:-5}"
TRITON_HTTP_PORT="${TRITON_HTTP_PORT:-8100}"
TRITON_WAIT_S="${TRITON_WAIT_S:-180}"
SUPERVISOR_BIN="${SUPERVISOR_BIN:-$VENV/bin}"  # where supervisord/supervisorctl live

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }

# ---------------------------------------------------------------------------------------------- urls
login_hint() {
  if [[ "${SMAP_AUTH:-on}" == off ]]; then echo "(SMAP_AUTH=off: no login)"
  elif [[ -f "$RUN_DIR/admin-password" ]]; then echo "(first login: admin, password in ${RUN_DIR#"$ROOT"/}/admin-password)"
  else echo "(log in with your user; tokens: python -m smap_shared.auth create-token NAME)"; fi
}

print_urls() {
  local k vm="${VM_PORT:-8428}"
  cat <<EOF

SMAP chain endpoints
  Dashboard        http://localhost:${OPERATION_PORT:-8000}   $(login_hint)
                   OpenAPI: http://localhost:${OPERATION_PORT:-8000}/api/openapi.json
                   curl -H "Authorization: Bearer \$SMAP_TOKEN" 'localhost:${OPERATION_PORT:-8000}/api/smap/entity/A-1/overview?window=1h'
                   (a token: SMAP_TOKEN=\$(.venv/bin/python -m smap_shared.auth create-token admin --name curl))
                   WebSocket: ws://localhost:${OPERATION_PORT:-8000}/ws/smap?satellite_id=SAT-001
                   Open MCT:  http://localhost:${OPERATION_PORT:-8000}/openmct/
                   HTTP ingest: POST /api/smap/telemetry (docs/ingest.md)
  Triton           http://localhost:$TRITON_HTTP_PORT
                   curl localhost:$TRITON_HTTP_PORT/v2/health/ready
                   curl -X POST localhost:$TRITON_HTTP_PORT/v2/repository/index
  VictoriaMetrics  http://localhost:$vm/api/v1/query   scrape targets: http://localhost:$vm/targets
                   (no /vmui in Debian's build: PromQL examples in docs/operations.md)
  Flower           http://localhost:5555
  RabbitMQ UI      http://localhost:${RABBITMQ_MGMT_PORT:-15672}  (guest/guest)
  Kafka (Tansu)    localhost:${KAFKA_PORT:-9092}
  Alert manager    http://localhost:${ALERT_API_PORT:-8002}/api/smap/alerts   (PostgreSQL :${POSTGRES_PORT:-5432})
                   curl -H "Authorization: Bearer \$SMAP_TOKEN" 'localhost:${ALERT_API_PORT:-8002}/api/smap/alerts?state=firing'
  /metrics         simulator       http://localhost:9301/metrics
                   trigger         http://localhost:9302/metrics
                   consumer        http://localhost:9304/metrics
                   alert-manager   http://localhost:9306/metrics
                   operation-server http://localhost:9305/metrics
EOF
  for ((k = 0; k < INFERENCE_SHARDS; k++)); do
    printf '                   %-15s http://localhost:%d/metrics\n' "worker shard $k" $((9310 + k))
  done
  echo
}

# ------------------------------------------------------------------------------------------- docker
# compose_cmd: `docker compose` (v2 plugin) or the standalone `docker-compose`; fails if neither works.
compose_cmd() {
  if docker compose version >/dev/null 2>&1; then echo "docker compose"
  elif command -v docker-compose >/dev/null; then echo docker-compose
  else return 1
  fi
}

docker_mode() {
  local cmd="$1"; shift
  [[ -f "$COMPOSE_FILE" ]] || die "$COMPOSE_FILE not found; use --native"
  local compose dc
  compose="$(compose_cmd)" || die "neither 'docker compose' nor 'docker-compose' works here; use --native"
  read -r -a dc <<<"$compose"
  dc+=(-f "$COMPOSE_FILE")
  # Hosts without an NVIDIA GPU run the same images with KIND_CPU models and no device reservation.
  if ! nvidia-smi -L >/dev/null 2>&1; then
    log "no NVIDIA GPU found: adding docker-compose.cpu.yml (KIND_CPU)"
    dc+=(-f docker-compose.cpu.yml)
  fi
  if [[ ! -f .env ]]; then
    cp .env.example .env
    log "warning: .env was missing; copied .env.example. Replace its change-me passwords before exposing anything."
  fi
  [[ -n "${SMAP_GRAFANA:-}" ]] && dc+=(--profile grafana)
  case "$cmd" in
    start) "${dc[@]}" up -d --build; "${dc[@]}" ps ;;
    stop) "${dc[@]}" down ;;
    status) "${dc[@]}" ps ;;
    restart) "${dc[@]}" restart ;;
    logs)
      if [[ "${1:-}" == smap-analysis-worker ]]; then
        shift; "${dc[@]}" logs -f smap-analysis-worker-0 smap-analysis-worker-1 "$@"
      else
        "${dc[@]}" logs -f "$@"
      fi ;;
  esac
}

# ------------------------------------------------------------------------------------------- native
ctl() { "$SUPERVISOR_BIN/supervisorctl" -c "$CONF" "$@"; }

supervisord_running() {
  [[ -f "$PIDFILE" && -S "$SOCK" ]] || return 1
  local pid
  pid="$(cat "$PIDFILE")"
  [[ "$pid" =~ ^[0-9]+$ && -r "/proc/$pid/cmdline" ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q supervisord
}

# program NAME DIR PRIORITY COMMAND [ENV] [AUTORESTART]: one [program:x] section; `%` must be doubled
# in COMMAND.
program() {
  local name="$1" dir="$2" prio="$3" cmd="$4" env="${5:-}" restart="${6:-true}"
  cat <<EOF

[program:$name]
command=$cmd
directory=$dir
priority=$prio
autostart=false
autorestart=$restart
startsecs=3
startretries=1000000
; supervisord waits 1 s, 2 s, 3 s, ... between failed starts: a crash loop is retried as long as it lasts
stopsignal=TERM
stopwaitsecs=40
killasgroup=true
redirect_stderr=true
stdout_logfile=$LOG_DIR/$name.log
stdout_logfile_maxbytes=50MB
stdout_logfile_backups=2
environment=PYTHONUNBUFFERED="1"${env:+,$env}
EOF
}

write_config() {
  local k workers=() worker_dir="$ROOT/smap-analysis-worker" celery="$VENV/bin/celery"
  mkdir -p "$LOG_DIR"
  {
    cat <<EOF
; Generated by start-smap.sh on $(date -Iseconds); edits are overwritten on the next start.
[unix_http_server]
file=$SOCK
chmod=0700

[supervisord]
logfile=$LOG_DIR/supervisord.log
pidfile=$PIDFILE
directory=$ROOT
childlogdir=$LOG_DIR

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://$SOCK
EOF
    # Triton: SIGTERM to the server alone (it unloads the models and ends its python stubs itself);
    # SIGKILL, if it comes to that, to the whole group.
    program triton "$ROOT" 10 "$VENV/bin/python -m smap_shared.triton.launcher --foreground"
    for ((k = 0; k < INFERENCE_SHARDS; k++)); do
      # TRITON_URL_SHARD_<k>: shard k's own Triton (a stream's state then lives on that server only)
      local own_triton="TRITON_URL_SHARD_$k" shard_env="SHARD_INDEX=\"$k\""
      if [[ -n "${!own_triton:-}" ]]; then shard_env+=",TRITON_URL=\"${!own_triton}\""; fi
      program "worker-shard$k" "$worker_dir" 20 \
        "$celery -A smap_analysis.celery_app worker -Q smap-inference-shard-$k -c 1 --prefetch-multiplier 1 -n shard$k@%%h --pool threads -E" \
        "$shard_env"
      workers+=("worker-shard$k")
    done
    program consumer "$ROOT" 30 "$VENV/bin/python smap-victoria-consumer/main.py"
    # Alert rules over the results -> PostgreSQL history, Slack/email (creates its database, migrates).
    program alert-manager "$ROOT" 35 "$VENV/bin/python smap-alert-manager/main.py"
    # Dashboard, REST API and WebSocket (reads VictoriaMetrics and the results topic; after the consumer).
    program operation-server "$ROOT" 37 "$VENV/bin/python smap-operation-server/main.py"
    program trigger "$ROOT" 40 "$VENV/bin/python smap-inference-trigger/main.py"
    program flower "$worker_dir" 50 \
      "$celery -A smap_analysis.celery_app flower --address=$SMAP_BIND_ADDRESS --port=5555 --broker_api=http://guest:guest@localhost:15672/api/"
    # The simulator exits 0 at the end of the test split: restart it only after a crash, else it would
    # replay the split from the start.
    program simulator "$ROOT" 60 "$VENV/bin/python smap-simulator/main.py" \
      "SIMULATOR_INTERVAL_S=\"$SIMULATOR_INTERVAL_S\"" unexpected
    printf '\n[group:workers]\nprograms=%s\n' "$(IFS=,; echo "${workers[*]}")"
  } >"$CONF"
}

PROBLEMS=()

# start_programs NAME...: supervisorctl start; a program that does not reach RUNNING is noted, not fatal.
start_programs() {
  local out
  out="$(ctl start "$@" 2>&1)" || true
  # shellcheck disable=SC2001  # indent every line
  sed 's/^/  /' <<<"$out"
  if grep -q -E 'ERROR|FATAL|BACKOFF' <<<"$out"; then
    PROBLEMS+=("$(grep -E 'ERROR|FATAL|BACKOFF' <<<"$out" | tr '\n' ' ')")
  fi
}

# Triton is ready when every model has loaded (--wait-ready: 0 ready, 2 some models failed to load).
wait_triton() {
  local deadline=$((SECONDS + TRITON_WAIT_S)) rc state
  log "waiting up to ${TRITON_WAIT_S}s for Triton on :$TRITON_HTTP_PORT (loading every model)"
  while ((SECONDS < deadline)); do
    rc=0
    "$VENV/bin/python" -m smap_shared.triton.launcher --http-port "$TRITON_HTTP_PORT" --wait-ready 5 >"$RUN_DIR/triton-wait.out" 2>&1 || rc=$?
    case "$rc" in
      0) log "Triton ready"; return 0 ;;
      2) log "$(cat "$RUN_DIR/triton-wait.out")"
         PROBLEMS+=("Triton: $(cat "$RUN_DIR/triton-wait.out") (see .run/logs/triton.log)"); return 0 ;;
    esac
    state="$(ctl status triton 2>/dev/null | awk '{print $2}')" || true
    if [[ "$state" == FATAL || "$state" == EXITED || "$state" == STOPPED ]]; then
      log "Triton is $state; last lines of $LOG_DIR/triton.log:"
      tail -n 20 "$LOG_DIR/triton.log" >&2 || true
      PROBLEMS+=("Triton $state (see .run/logs/triton.log)")
      return 1
    fi
  done
  PROBLEMS+=("Triton not ready after ${TRITON_WAIT_S}s (see .run/logs/triton.log)")
  return 1
}

native_start() {
  warn_exposed
  if supervisord_running; then
    log "already running (supervisord pid $(cat "$PIDFILE")): nothing changed"
    ctl status || true
    print_urls
    return 0
  fi
  ensure_venv
  ensure_web_deps  # the dashboard's chart library (npm ci from smap-operation-server/web/package-lock.json)
  bash "$ROOT/scripts/infra.sh" up

  if [[ "${SMAP_SKIP_MODELS:-0}" == 1 ]]; then
    log "SMAP_SKIP_MODELS=1: not running setup_models.sh"
  elif [[ -f triton-omnianomaly/setup_models.sh ]]; then
    log "model checkpoints + Triton repository (triton-omnianomaly/setup_models.sh)"
    bash triton-omnianomaly/setup_models.sh </dev/null || die "setup_models.sh failed"
  else
    log "triton-omnianomaly/setup_models.sh not found: skipping model setup (Triton needs a repository)"
  fi

  if [[ "${SMAP_AUTH:-on}" == off ]]; then
    log "SMAP_AUTH=off: no login (local development on loopback; the page header says so)"
  else  # a first admin with a random password, once (docs/security.md: users, roles, tokens)
    "$VENV/bin/python" -m smap_shared.auth bootstrap --password-file "$RUN_DIR/admin-password" \
      || PROBLEMS+=("could not create the first admin (python -m smap_shared.auth bootstrap)")
  fi
  write_config
  # VictoriaMetrics' scrape targets for this start's settings (INFERENCE_SHARDS may have changed); it
  # re-reads the file within seconds (scripts/infra.sh started it with -promscrape.config)
  "$VENV/bin/python" -m smap_shared.infra.scrape --out "$RUN_DIR/promscrape.yml" \
    || PROBLEMS+=("could not write VictoriaMetrics' scrape targets (python -m smap_shared.infra.scrape)")
  log "starting supervisord ($CONF)"
  "$SUPERVISOR_BIN/supervisord" -c "$CONF"
  local i
  for ((i = 0; i < 40; i++)); do ctl pid >/dev/null 2>&1 && break; sleep 0.25; done

  log "starting triton"
  start_programs triton
  wait_triton || true
  log "starting the analysis workers ($INFERENCE_SHARDS shards)"
  start_programs "workers:*"
  log "starting consumer, alert-manager, operation-server, trigger, flower"
  start_programs consumer alert-manager operation-server trigger flower
  log "starting the simulator (one frame per stream every ${SIMULATOR_INTERVAL_S}s)"
  start_programs simulator

  ctl status || true
  print_urls
  if ((${#PROBLEMS[@]})); then
    printf 'Started with problems:\n' >&2
    printf '  - %s\n' "${PROBLEMS[@]}" >&2
    printf 'Logs: %s/<service>.log (./start-smap.sh logs SERVICE)\n' "$LOG_DIR" >&2
    return 1
  fi
  log "all services running"
}

native_stop_services() {
  if supervisord_running; then
    log "stopping the services"
    ctl stop all || true
    ctl shutdown >/dev/null || true
    local i pid
    pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    for ((i = 0; i < 120; i++)); do supervisord_running || break; sleep 0.25; done
    if supervisord_running; then log "supervisord (pid $pid) did not exit"; return 1; fi
  else
    log "supervisord not running"
  fi
}

native() {
  local cmd="$1"; shift
  case "$cmd" in
    start) native_start ;;
    stop) native_stop_services; bash "$ROOT/scripts/infra.sh" down ;;
    restart) native_stop_services; native_start ;;
    status)
      local rc=0
      if supervisord_running; then ctl status || rc=$?; else echo "supervisord: not running"; rc=3; fi
      echo
      bash "$ROOT/scripts/infra.sh" status || rc=$?
      return "$rc"
      ;;
    logs)
      local svc="${1:-}"
      if [[ -z "$svc" || ! -f "$LOG_DIR/$svc.log" ]]; then
        echo "usage: $0 logs SERVICE; available:" >&2
        local f
        for f in "$LOG_DIR"/*.log; do [[ -e "$f" ]] && echo "  $(basename "$f" .log)" >&2; done
        return 2
      fi
      exec tail -n 200 -F "$LOG_DIR/$svc.log"
      ;;
  esac
}

# ---------------------------------------------------------------------------------------------- main
mode=auto
cmd=""
args=()
for a in "$@"; do
  case "$a" in
    --native) mode=native ;;
    --docker) mode=docker ;;
    -h|--help|help) usage; exit 0 ;;
    start|stop|status|restart|logs) if [[ -z "$cmd" ]]; then cmd="$a"; else args+=("$a"); fi ;;
    *) args+=("$a") ;;
  esac
done
cmd="${cmd:-start}"
if [[ "$cmd" != logs && ${#args[@]} -gt 0 ]]; then usage >&2; exit 2; fi
if [[ "$mode" == auto ]]; then
  if command -v docker >/dev/null && timeout 10 docker info >/dev/null 2>&1 && compose_cmd >/dev/null; then
    mode=docker
  else
    mode=native
  fi
fi
log "$cmd ($mode mode)"
if [[ "$mode" == docker ]]; then docker_mode "$cmd" "${args[@]}"; else native "$cmd" "${args[@]}"; fi
