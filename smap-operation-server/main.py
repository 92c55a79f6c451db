"""smap-operation-server: dashboard page, REST API and WebSocket live stream (settings in smap_shared)."""

from __future__ import annotations

from smap_shared.operations.app import SERVICE, run_operation_server
from smap_shared.settings import OperationServerSettings
from smap_shared.streaming.service import run_service


def main() -> None:
    settings = OperationServerSettings()
    run_service(SERVICE, lambda stop: run_operation_server(settings, stop),
                log_level=settings.log_level, metrics_port=settings.metrics_port,
                bind_address=settings.smap_bind_address)


if __name__ == "__main__":
    main()
