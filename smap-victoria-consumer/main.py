"""smap-victoria-consumer: inference results from Kafka -> VictoriaMetrics (settings in smap_shared)."""

from __future__ import annotations

from smap_shared.settings import ConsumerSettings
from smap_shared.streaming.consumer import run_consumer
from smap_shared.streaming.service import run_service


def main() -> None:
    settings = ConsumerSettings()
    run_service("smap-victoria-consumer", lambda stop: run_consumer(settings, stop),
                log_level=settings.log_level, metrics_port=settings.metrics_port,
                bind_address=settings.smap_bind_address)


if __name__ == "__main__":
    main()
