"""Retry-in-place for the asyncio services: the message at hand is retried until done or stopped, so the
records behind it keep their order and nothing is committed past it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

RETRY_BACKOFF_S = 0.1
RETRY_BACKOFF_MAX_S = 5.0


async def retry_until_done(
    action: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str,
    on_retry: Callable[[], None] | None = None, *, backoff_s: float = RETRY_BACKOFF_S,
    backoff_max_s: float = RETRY_BACKOFF_MAX_S,
) -> bool:
    """Run `action` until it succeeds (True) or `stop` is set (False), with capped exponential backoff."""
    delay = backoff_s
    while True:
        try:
            await action()
            return True
        except Exception as exc:
            log.warning("%s failed (%r); retrying in %.1f s", what, exc, delay)
            if on_retry is not None:
                on_retry()
        try:
            await asyncio.wait_for(stop.wait(), delay)
            return False
        except TimeoutError:
            delay = min(delay * 2, backoff_max_s)
