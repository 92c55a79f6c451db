#!/usr/bin/env bash
# Kafka container entrypoint (apache/kafka image): run the stock KRaft broker, create the chain's topics
# once it answers, then mark the container ready for its health check. Topic creation is idempotent, so a
# restart on an existing data volume changes nothing.
#   SMAP_TOPICS="name:partitions name:partitions ..."   (set in docker-compose.smap.yml)
set -euo pipefail

ready=/tmp/smap-topics-ready
bootstrap=localhost:9092
bin=/opt/kafka/bin
rm -f "$ready"

/etc/kafka/docker/run &
broker=$!
# docker stop sends SIGTERM to this script (PID 1): hand it to the broker for a clean shutdown
trap 'kill -TERM "$broker" 2>/dev/null || true' TERM INT

until "$bin/kafka-broker-api-versions.sh" --bootstrap-server "$bootstrap" >/dev/null 2>&1; do
  if ! kill -0 "$broker" 2>/dev/null; then
    wait "$broker"
    exit $?
  fi
  sleep 2
done

for spec in ${SMAP_TOPICS:?SMAP_TOPICS is empty}; do
  name="${spec%%:*}"
  partitions="${spec##*:}"
  "$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor 1
done
"$bin/kafka-topics.sh" --bootstrap-server "$bootstrap" --list
touch "$ready"

status=0
wait "$broker" || status=$?
# a trapped signal interrupts `wait` while the broker is still shutting down: wait for it to finish
while kill -0 "$broker" 2>/dev/null; do
  wait "$broker" || status=$?
done
exit "$status"
