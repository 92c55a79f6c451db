"""What every asyncio service's main does: logging, the metrics endpoint, SIGTERM/SIGINT -> stop event."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import start_http_server

log = logging.getLogger(__name__)


def configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, logging.getLogger().level))


async def _serve(main: Callable[[asyncio.Event], Awaitable[Any]]) -> Any:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # graceful: the service flushes and commits, then returns
    return await main(stop)


def run_service(
    name: str, main: Callable[[asyncio.Event], Awaitable[Any]], *, log_level: str, metrics_port: int,
    bind_address: str,
) -> Any:
    configure_logging(log_level)
    start_http_server(metrics_port, addr=bind_address)
    log.info("%s starting; metrics on %s:%d", name, bind_address, metrics_port)
    result = asyncio.run(_serve(main))
    log.info("%s stopped", name)
    return result
