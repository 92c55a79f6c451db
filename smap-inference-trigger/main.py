"""smap-inference-trigger: telemetry from Kafka -> Celery tasks on the shard queues (settings:
smap_shared.settings)."""

from __future__ import annotations

from smap_shared.settings import TriggerSettings
from smap_shared.streaming.service import run_service
from smap_shared.streaming.trigger import run_trigger


def main() -> None:
    settings = TriggerSettings()
    run_service("smap-inference-trigger", lambda stop: run_trigger(settings, stop),
                log_level=settings.log_level, metrics_port=settings.metrics_port,
                bind_address=settings.smap_bind_address)


if __name__ == "__main__":
    main()
