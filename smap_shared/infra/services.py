"""Where the infrastructure the services use is expected (from the same settings the services read),
and which of it is unreachable. `python -m smap_shared.infra.services` prints one line per endpoint and
exits 1 if any is down: a quick check before integration tests (`scripts/infra.sh up` starts them)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from urllib.parse import urlsplit

from smap_shared.infra.ports import port_open
from smap_shared.settings import ConsumerSettings, TritonSettings, WorkerSettings


@dataclass(frozen=True)
class Endpoint:
    name: str
    host: str
    port: int

    def reachable(self) -> bool:
        return port_open(self.port, self.host)


DEFAULT_PORTS = {"amqp": 5672, "redis": 6379, "http": 80, "https": 443}


def parse_endpoint(name: str, address: str) -> Endpoint:
    """`host:port` or a URL (amqp://u:p@host:5672//, redis://host:6379/1, http://host:8428)."""
    if "://" not in address:
        host, _, port_text = address.rpartition(":")
        return Endpoint(name, host or "localhost", int(port_text))
    parts = urlsplit(address)
    port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    if port is None:
        raise ValueError(f"{name}: no port in {address!r}")
    return Endpoint(name, parts.hostname or "localhost", port)


def infra_endpoints(include_triton: bool = False) -> list[Endpoint]:
    worker, consumer = WorkerSettings(), ConsumerSettings()
    kafka = worker.kafka_bootstrap_servers.split(",")[0].strip()
    endpoints = [
        parse_endpoint("kafka", kafka),
        parse_endpoint("rabbitmq", worker.celery_broker_url),
        parse_endpoint("redis", worker.celery_result_backend),
        parse_endpoint("victoria-metrics", consumer.victoria_url),
    ]
    if include_triton:
        endpoints.append(Endpoint("triton", "localhost", TritonSettings().triton_http_port))
    return endpoints


def unreachable(endpoints: list[Endpoint] | None = None) -> list[Endpoint]:
    return [e for e in (infra_endpoints() if endpoints is None else endpoints) if not e.reachable()]


def main() -> int:
    down = 0
    for e in infra_endpoints(include_triton="--triton" in sys.argv[1:]):
        ok = e.reachable()
        down += not ok
        print(f"{e.name:<17} {e.host}:{e.port:<6} {'up' if ok else 'DOWN'}")
    if down:
        print("start the infrastructure with: scripts/infra.sh up", file=sys.stderr)
    return 1 if down else 0


if __name__ == "__main__":
    sys.exit(main())
