"""smap-simulator: replays the fleet's SMAP test splits to Kafka (settings: smap_shared.settings)."""

from __future__ import annotations

from smap_shared.settings import SimulatorSettings
from smap_shared.streaming.service import run_service
from smap_shared.streaming.simulator import run_simulator


def main() -> None:
    settings = SimulatorSettings()
    run_service("smap-simulator", lambda stop: run_simulator(settings, stop),
                log_level=settings.log_level, metrics_port=settings.metrics_port,
                bind_address=settings.smap_bind_address)


if __name__ == "__main__":
    main()
