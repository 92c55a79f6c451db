#!/usr/bin/env bash
# The README's two commands on a fresh machine: a minimal Debian bookworm (debootstrap: Python 3.11, git,
# curl, gcc, nothing else: no RabbitMQ, Redis, PostgreSQL, VictoriaMetrics, node) in a chroot with its own
# network namespace (so the host's services and ports are invisible to it), then
#   bash start-smap.sh       -> checks Triton, VictoriaMetrics, the dashboard, the alert API, RabbitMQ UI,
#                               Flower answer and results reach VictoriaMetrics; then stops it
#   bash scripts/test.sh     -> the whole suite (skip with --no-tests)
# Needs root, debootstrap and iptables (apt-get install debootstrap iptables) and outbound access to
# Debian, PyPI and npm. Not part of CI (about 15 minutes). Leaves the host as it found it: the chroot's
# processes are stopped, mounts, namespace and NAT rules removed; the tree stays in $FRESH_DIR for a look.
#   sudo bash scripts/fresh-machine-check.sh [--no-tests]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FRESH_DIR="${FRESH_DIR:-/tmp/smap-fresh}"
NS=smapfresh
SUBNET=10.77.0
RUN_TESTS=1
PASS_ENV=()  # this machine's TLS / pip settings handed to the chroot (filled in below)
[[ "${1:-}" == "--no-tests" ]] && RUN_TESTS=0
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "error: $*" >&2; exit 1; }
[[ $EUID == 0 ]] || die "run as root (chroot, mounts, network namespace)"
for c in debootstrap iptables ip; do command -v "$c" >/dev/null || die "$c missing: apt-get install debootstrap iptables iproute2"; done
OUT_IF="$(ip route show default | awk '{print $5; exit}')"

in_fresh() { ip netns exec "$NS" chroot "$FRESH_DIR" /usr/bin/env -i HOME=/root \
  PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
  "${PASS_ENV[@]}" bash -c "cd /root/smap && $1"; }

cleanup() {
  set +e
  if [[ -d "$FRESH_DIR/root/smap" ]] && ip netns list | grep -qw "$NS"; then
    in_fresh "bash start-smap.sh stop; bash scripts/infra.sh down" >/dev/null 2>&1
  fi
  # whatever still runs inside the chroot (a service started by a package's postinst, say)
  for p in /proc/[0-9]*; do
    [[ "$(readlink "$p/root" 2>/dev/null)" == "$FRESH_DIR" ]] && kill -9 "${p#/proc/}" 2>/dev/null
  done
  for m in opt/wheels run dev/shm dev/pts dev sys proc; do umount -l "$FRESH_DIR/$m" 2>/dev/null; done
  iptables -t nat -D POSTROUTING -s "$SUBNET.0/24" -o "$OUT_IF" -j MASQUERADE 2>/dev/null
  iptables -D FORWARD -i vh-smap -j ACCEPT 2>/dev/null
  iptables -D FORWARD -o vh-smap -j ACCEPT 2>/dev/null
  ip link del vh-smap 2>/dev/null
  ip netns del "$NS" 2>/dev/null
}
trap cleanup EXIT

if [[ ! -x "$FRESH_DIR/usr/bin/python3" ]]; then
  log "debootstrap bookworm into $FRESH_DIR"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,python3-dev,gcc,git,curl,ca-certificates,procps,iproute2 \
    bookworm "$FRESH_DIR" http://deb.debian.org/debian >/dev/null
fi

log "network namespace $NS ($SUBNET.2, NAT through $OUT_IF)"
ip netns add "$NS"
ip link add vh-smap type veth peer name vf-smap
ip link set vf-smap netns "$NS"
ip addr add "$SUBNET.1/24" dev vh-smap && ip link set vh-smap up
ip netns exec "$NS" ip addr add "$SUBNET.2/24" dev vf-smap
ip netns exec "$NS" ip link set vf-smap up && ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" ip route add default via "$SUBNET.1"
sysctl -qw net.ipv4.ip_forward=1
iptables -t nat -A POSTROUTING -s "$SUBNET.0/24" -o "$OUT_IF" -j MASQUERADE
iptables -A FORWARD -i vh-smap -j ACCEPT && iptables -A FORWARD -o vh-smap -j ACCEPT

mount -t proc proc "$FRESH_DIR/proc" && mount --rbind /sys "$FRESH_DIR/sys"
mount --bind /dev "$FRESH_DIR/dev" && mount --bind /dev/pts "$FRESH_DIR/dev/pts"
mkdir -p "$FRESH_DIR/dev/shm" "$FRESH_DIR/run" && mount -t tmpfs tmpfs "$FRESH_DIR/dev/shm" && mount -t tmpfs tmpfs "$FRESH_DIR/run"
cp /etc/resolv.conf /etc/hosts "$FRESH_DIR/etc/" && hostname >"$FRESH_DIR/etc/hostname"
# this machine's TLS and package settings (an intercepting CA, a local wheel folder), as a user's machine has
if compgen -G "/usr/local/share/ca-certificates/*" >/dev/null; then
  cp /usr/local/share/ca-certificates/* "$FRESH_DIR/usr/local/share/ca-certificates/"
  chroot "$FRESH_DIR" update-ca-certificates >/dev/null
fi
[[ -f /root/.npmrc ]] && cp /root/.npmrc "$FRESH_DIR/root/.npmrc"
for v in PIP_FIND_LINKS PIP_CERT PIP_DEFAULT_TIMEOUT NODE_EXTRA_CA_CERTS SSL_CERT_FILE REQUESTS_CA_BUNDLE CURL_CA_BUNDLE; do
  [[ -n "${!v:-}" ]] && PASS_ENV+=("$v=${!v}")
done
if [[ -n "${PIP_FIND_LINKS:-}" && -d "$PIP_FIND_LINKS" ]]; then
  mkdir -p "$FRESH_DIR$PIP_FIND_LINKS" && mount --bind "$PIP_FIND_LINKS" "$FRESH_DIR$PIP_FIND_LINKS"
fi

rm -rf "$FRESH_DIR/root/smap"
git clone -q "$ROOT" "$FRESH_DIR/root/smap"  # what is committed, as a user's clone
for c in psql redis-server rabbitmq-server victoria-metrics node supervisord; do
  in_fresh "command -v $c >/dev/null" && die "$c is already in the fresh tree: not a fresh machine"
done

log "bash start-smap.sh (fresh machine)"
in_fresh "bash start-smap.sh"
sleep 20
check() { ip netns exec "$NS" curl -fsS -m 10 -o /dev/null "$@" || die "no answer: $*"; }
check http://localhost:8100/v2/health/ready
check http://localhost:8000/
check http://localhost:8002/api/smap/alerts
check -u guest:guest http://localhost:15672/api/overview
check http://localhost:5555/
series="$(ip netns exec "$NS" curl -fsS -m 10 'http://localhost:8428/api/v1/query?query=count(smap_anomaly_score)')"
[[ "$series" == *'"result":[{'* ]] || die "no results in VictoriaMetrics: $series"
log "the whole system answers; results reach VictoriaMetrics: $series"
in_fresh "bash start-smap.sh stop" >/dev/null

if ((RUN_TESTS)); then
  log "bash scripts/test.sh (fresh machine)"
  in_fresh "bash scripts/test.sh -q"
fi
log "fresh-machine check passed"
