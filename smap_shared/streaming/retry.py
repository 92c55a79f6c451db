"""Retry in place, the one backoff policy of the services: a transient failure is retried until it succeeds
or the service is asked to stop, with capped exponential backoff; the work at hand is never dropped, so what
comes behind it keeps its order and nothing is committed or acked past it. A stop ends the wait at once and
leaves the work to be redelivered (nothing was committed for it)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_BACKOFF_S = 0.1
RETRY_BACKOFF_MAX_S = 5.0


@dataclass(frozen=True)
class Backoff:
    """Capped exponential delays: initial, 2 x initial, ... up to maximum, forever.

    >>> d = Backoff(0.5, 2.0).delays(); [next(d) for _ in range(5)]
    [0.5, 1.0, 2.0, 2.0, 2.0]
    """

    initial_s: float = RETRY_BACKOFF_S
    maximum_s: float = RETRY_BACKOFF_MAX_S

    def delays(self) -> Iterator[float]:
        delay = self.initial_s
        while True:
            yield delay
            delay = min(delay * 2, self.maximum_s)


class StoppedError(RuntimeError):
    """The service was asked to stop while the work at hand was still failing: it was not done (and not
    acknowledged), so it is redelivered."""


async def retry_until_done(
    action: Callable[[], Awaitable[None]], stop: asyncio.Event, what: str,
    on_retry: Callable[[], None] | None = None, *, backoff_s: float = RETRY_BACKOFF_S,
    backoff_max_s: float = RETRY_BACKOFF_MAX_S,
) -> bool:
    """Run `action` until it succeeds (True) or `stop` is set (False), with capped exponential backoff."""
    for delay in Backoff(backoff_s, backoff_max_s).delays():
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
            pass
    raise AssertionError("unreachable")


def retry_blocking(
    action: Callable[[], T], *, stop: threading.Event, what: str, transient: Callable[[BaseException], bool],
    backoff: Backoff, on_retry: Callable[[float], None] | None = None,
) -> T:
    """The synchronous form (the Celery worker's thread): run `action` until it succeeds; a failure that is
    not `transient` is raised at once; `stop` raises StoppedError. `on_retry(delay)` is called before each wait."""
    for delay in backoff.delays():
        try:
            return action()
        except Exception as exc:
            if not transient(exc):
                raise
            log.warning("%s failed (%r); retrying in %.2f s", what, exc, delay)
            if on_retry is not None:
                on_retry(delay)
        started = time.monotonic()
        if stop.wait(delay):
            raise StoppedError(f"stopped while {what} kept failing (after {time.monotonic() - started:.1f} s)")
    raise AssertionError("unreachable")
